"""Reading user files with bounded cost: every failure is one `InputError`, never a traceback.

Every file a user hands e2llm (cluster/workload YAML, plan JSON, trace CSV) is untrusted input,
possibly from someone else. The guards here keep a hostile or broken file from costing more than
its size in time and memory, and from escaping as an exception other than `InputError`:
- size: at most `max_bytes` (`MAX_CONFIG_BYTES` for YAML/JSON, callers pass more for traces);
- text: strict UTF-8 (a wrong encoding names the byte offset);
- YAML: `yaml.SafeLoader` only (no Python objects), no duplicate keys (YAML forbids them and a
  silently dropped `devices:` block is worse than an error), aliases may expand the document to
  at most `MAX_YAML_NODES` nodes (a "billion laughs" file is rejected before anything walks it),
  no alias cycles, and at most `MAX_NESTING` levels of nesting;
- JSON: no duplicate keys, nesting deeper than Python's recursion limit and integers longer than
  its int-from-string limit rejected.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from e2llm.errors import InputError

MAX_CONFIG_BYTES = 16 * 2**20  # cluster/workload YAML and plan JSON: 16 MiB
MAX_YAML_NODES = 1_000_000  # nodes of the document with every alias expanded
MAX_NESTING = 64  # collections inside collections (our files need fewer than 10)


def read_input_text(path: str | Path, what: str, max_bytes: int = MAX_CONFIG_BYTES) -> str:
    """The UTF-8 text of the file `path` (`what` names its kind in errors: "cluster file ...")."""
    p = Path(path)
    try:
        st = p.stat()
        if not p.is_file():
            raise InputError(str(p), f"{what} path is not a regular file")
        if st.st_size > max_bytes:
            raise InputError(str(p), f"{what} file is larger than {max_bytes // 2**20} MiB", st.st_size)
        with p.open("rb") as f:
            data = f.read(max_bytes + 1)  # the file may grow between stat and read
    except FileNotFoundError:
        raise InputError(str(p), f"{what} file not found") from None
    except OSError as e:
        raise InputError(str(p), f"cannot read {what} file: {e.strerror or e}") from None
    if len(data) > max_bytes:
        raise InputError(str(p), f"{what} file is larger than {max_bytes // 2**20} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(str(p), f"{what} file is not UTF-8 text (bad byte at offset {e.start})") from None


class _Loader(yaml.SafeLoader):
    """`SafeLoader` that rejects duplicate mapping keys (merge keys `<<` may be overridden) and
    nesting deeper than `MAX_NESTING`, checked while composing, so the scanner (quadratic in the
    depth of flow collections) stops early."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_NESTING:
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_NESTING} levels", mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_expansion(root: yaml.Node, where: str) -> None:
    """Count the nodes of `root` with aliases expanded (each distinct node's count memoised, so
    this costs the number of distinct nodes); reject cycles and documents over `MAX_YAML_NODES`."""
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            on_path.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in _children(node))
            if size[key] > MAX_YAML_NODES:
                raise InputError(where, f"YAML aliases expand to more than {MAX_YAML_NODES} nodes")
            continue
        if key in size:
            continue
        if key in on_path:
            raise InputError(f"{where}:{node.start_mark.line + 1}", "recursive YAML alias")
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in size)


def parse_yaml(text: str, where: str) -> Any:
    """Parse one YAML document safely (see the module docstring); `where` names the file."""
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _check_expansion(node, where)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        parts = [getattr(e, "context", None), getattr(e, "problem", None)]
        problem = ", ".join(p for p in parts if p) or str(e)
        raise InputError(f"{where}{line}", f"malformed YAML: {problem}") from None
    except InputError:
        raise  # from `_check_expansion`, already one line
    except RecursionError:
        raise InputError(where, "malformed YAML: nested too deeply") from None
    except (ValueError, OverflowError) as e:  # a scalar that matched a pattern but is no value
        raise InputError(where, f"malformed YAML: {e}") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for key, value in pairs:
        if key in d:
            raise ValueError(f"duplicate key {key!r}")
        d[key] = value
    return d


def parse_json(text: str, where: str) -> Any:
    """Parse JSON safely (see the module docstring); `where` names the file."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as e:
        raise InputError(f"{where}:{e.lineno}", f"malformed JSON: {e.msg}") from None
    except RecursionError:
        raise InputError(where, "malformed JSON: nested too deeply") from None
    except ValueError as e:  # duplicate key, or an integer too long to convert
        raise InputError(where, f"malformed JSON: {e}") from None
