"""The broken-input corpus: mutants of valid cluster/workload YAML, plan JSON and trace CSV files.

Three generators, all deterministic:
- `field_mutants`: for every field of a valid document, each value its rule lists as invalid
  (wrong type, negative, zero, NaN, inf, too large, unknown name ...), each required key
  deleted, and an unknown key inserted into every strict mapping. Known broken.
- `yaml_text_mutants` / `json_text_mutants` / trace mutants in the tests: whole-file breakage
  (empty, truncated, binary garbage, wrong encodings, deep nesting, alias bombs, oversized ...).
- `random_edit`: stacked random edits with no expectation; the file may still be valid.

A `Mutant` says what must happen: `expect="load"`: the loader raises `InputError`;
`expect="use"`: the loader may accept it, but the command using it exits 2 (a plan whose embedded
cluster is broken); `expect=None`: anything but a crash (valid mutants may load fine).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import random
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from e2llm.cli import main

Path_ = tuple[str | int, ...]
Values = list[tuple[str, Any]]

HUGE_INT = 10**400  # an integer no float holds


@dataclass(frozen=True)
class Mutant:
    name: str
    content: bytes
    expect: str | None  # "load" | "use" | None (see the module docstring)


# --- invalid values per field kind ------------------------------------------------------------

_NOT_NUMBERS: Values = [
    ("str", "abc"),
    ("numeric-str", "12"),
    ("bool", True),
    ("list", [1]),
    ("map", {"x": 1}),
    ("nan", math.nan),
    ("inf", math.inf),
    ("-inf", -math.inf),
    ("huge-int", HUGE_INT),
]
POSITIVE: Values = [*_NOT_NUMBERS, ("zero", 0), ("negative", -1), ("tiny-negative", -1e-300)]
NON_NEGATIVE: Values = [*_NOT_NUMBERS, ("negative", -0.5)]
POSITIVE_INT: Values = [
    ("str", "3"),
    ("bool", True),
    ("fraction", 1.5),
    ("zero", 0),
    ("negative", -3),
    ("nan", math.nan),
    ("huge-int", HUGE_INT),
    ("list", [2]),
]
NAME: Values = [
    ("int", 5),
    ("empty", ""),
    ("blank", "   "),
    ("list", ["a"]),
    ("map", {"a": 1}),
    ("bool", False),
]
BOOL: Values = [("str", "false"), ("int", 1), ("list", [True]), ("map", {})]


def one_of_names(*extra: tuple[str, Any]) -> Values:
    """A field naming a choice (preset, process, dist): bad types plus an unknown choice."""
    return [*NAME, ("unknown-choice", "no-such-thing"), *extra]


# --- tree helpers -------------------------------------------------------------------------------


def pattern(path: Path_) -> str:
    """`("devices", 2, "name")` -> `"devices.*.name"`: the rule key of a path."""
    return ".".join("*" if isinstance(k, int) else k for k in path)


def walk(doc: Any, path: Path_ = ()) -> Iterator[tuple[Path_, Any]]:
    yield path, doc
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from walk(v, (*path, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from walk(v, (*path, i))


def _node(doc: Any, path: Path_) -> Any:
    for k in path:
        doc = doc[k]
    return doc


def _parent(doc: Any, path: Path_) -> Any:
    return _node(doc, path[:-1])


def with_value(doc: Any, path: Path_, value: Any) -> Any:
    out = copy.deepcopy(doc)
    _parent(out, path)[path[-1]] = value
    return out


def without(doc: Any, path: Path_) -> Any:
    out = copy.deepcopy(doc)
    del _parent(out, path)[path[-1]]
    return out


# --- generators ---------------------------------------------------------------------------------


def field_mutants(
    doc: Any,
    rules: Mapping[str, Values],
    required: set[str],
    strict_maps: set[str],
    dump: Callable[[Any], bytes],
    level: Callable[[str], str] = lambda _pattern: "load",
    ruled: set[str] | None = None,
) -> list[Mutant]:
    """Known-invalid mutants of `doc`: each rule value at the first path matching each rule
    pattern, each `required` key (pattern) deleted, an unknown key in each `strict_maps` mapping
    (pattern; "" is the top level). Patterns in `ruled` get no rule values (they were applied to
    an earlier document); this call adds its own."""
    out: list[Mutant] = []
    done: set[str] = set()
    ruled = set() if ruled is None else ruled
    for path, node in walk(doc):
        pat = pattern(path)
        if pat in done:
            continue
        done.add(pat)
        if pat not in ruled:
            for label, value in rules.get(pat, []):
                out.append(Mutant(f"{pat}={label}", dump(with_value(doc, path, value)), level(pat)))
            ruled.add(pat)
        if pat in required:
            out.append(Mutant(f"{pat}:deleted", dump(without(doc, path)), level(pat)))
        if pat in strict_maps and isinstance(node, dict):
            bad = copy.deepcopy(doc)
            _node(bad, path)["no_such_key"] = 1
            out.append(Mutant(f"{pat or 'top'}:unknown-key", dump(bad), level(pat)))
    return out


def dump_yaml(doc: Any) -> bytes:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True).encode()


def dump_json(doc: Any) -> bytes:
    return json.dumps(doc, indent=1).encode()


def _garbage(seed: int, n: int = 600) -> bytes:
    return random.Random(seed).randbytes(n)


def _common_text_mutants(text: str, latin1: bytes) -> list[Mutant]:
    """Breakage shared by YAML and JSON files: bytes and encodings, truncation, big numbers
    (`latin1`: the file with one non-ASCII character in Latin-1, not UTF-8)."""
    first_number = re.compile(r"(?<=[:\[ ])(\d+(\.\d+)?)(?=[,\s\]}])")
    return [
        Mutant("empty", b"", "load"),
        Mutant("whitespace", b"  \n\n \t\n", "load"),
        *(Mutant(f"garbage-{seed}", _garbage(seed), "load") for seed in range(3)),
        Mutant("utf16", text.encode("utf-16"), "load"),
        Mutant("latin1", latin1, "load"),
        Mutant("nul-byte", text[:20].encode() + b"\x00" + text[20:].encode(), "load"),
        Mutant("lone-surrogate-bytes", text.encode() + b"\xed\xa0\x80", "load"),
        Mutant("half", text[: len(text) // 2].encode(), None),
        Mutant("third", text[: len(text) // 3].encode(), None),
        Mutant("long-int", first_number.sub("9" * 5000, text, count=1).encode(), "load"),
    ]


def yaml_text_mutants(text: str) -> list[Mutant]:
    """Whole-file breakage of a YAML mapping file (`text` is valid)."""
    first_key = next(line.split(":")[0] for line in text.splitlines() if re.match(r"^\w+:", line))
    laughs = "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10)
    )
    number = re.compile(r"(?<=: )(\d+(\.\d+)?)(?=\s)")
    return [
        *_common_text_mutants(text, b"# caf\xe9\n" + text.encode()),
        Mutant("comment-only", b"# nothing here\n", "load"),
        Mutant("top-level-list", b"- a\n- b\n", "load"),
        Mutant("top-level-scalar", b"just a string\n", "load"),
        Mutant("unclosed-flow", (text + "\nextra: {a: [1, 2\n").encode(), "load"),
        Mutant("bad-indent", (text + "\n   bad:\n  - x\n").encode(), "load"),
        Mutant("two-documents", (text + "\n---\n" + text).encode(), "load"),
        Mutant("duplicate-key", (text + f"\n{first_key}: null\n").encode(), "load"),
        Mutant("deep-flow-nesting", (text + "\nx: " + "[" * 50_000 + "]" * 50_000 + "\n").encode(), "load"),
        Mutant(
            "deep-map-nesting",
            (text + "\nx: " + "{a: " * 20_000 + "1" + "}" * 20_000 + "\n").encode(),
            "load",
        ),
        Mutant("billion-laughs", (text + "\n" + laughs).encode(), "load"),
        Mutant(
            "billion-laughs-as-field",
            (laughs + text.replace(f"{first_key}:", f"{first_key}: *a9\nold_{first_key}:", 1)).encode(),
            "load",
        ),
        Mutant("recursive-alias", (text + "\nx: &r [1, *r]\n").encode(), "load"),
        Mutant("python-tag", (text + "\nx: !!python/object/apply:os.system ['true']\n").encode(), "load"),
        Mutant("unhashable-key", (text + "\n? [a, b]\n: 1\n").encode(), "load"),
        Mutant("bad-merge", (text + "\nx: {<<: 5}\n").encode(), "load"),
        Mutant("bad-date-as-number", number.sub("2023-13-45", text, count=1).encode(), "load"),
        Mutant("tabs", text.replace("  ", "\t").encode(), None),
        Mutant("utf8-bom", b"\xef\xbb\xbf" + text.encode(), None),
        Mutant("crlf", text.replace("\n", "\r\n").encode(), None),
    ]


def json_text_mutants(text: str) -> list[Mutant]:
    """Whole-file breakage of a JSON object file (`text` is valid)."""
    first_key = re.search(r'"(\w+)":', text).group(1)  # type: ignore[union-attr]
    return [
        *_common_text_mutants(text, text.encode().replace(b'"', b'"\xe9', 1)),
        Mutant("top-level-array", b"[]", "load"),
        Mutant("top-level-null", b"null", "load"),
        Mutant("top-level-number", b"42", "load"),
        Mutant("top-level-nan", b"NaN", "load"),
        Mutant("truncated-end", text.rstrip()[:-1].encode(), "load"),
        Mutant("trailing-garbage", (text + " xx").encode(), "load"),
        Mutant("deep-nesting", ("[" * 100_000 + "]" * 100_000).encode(), "load"),
        Mutant(
            "deep-nesting-in-field",
            text.replace("{", '{"deep": ' + "[" * 100_000 + "]" * 100_000 + ",", 1).encode(),
            "load",
        ),
        Mutant("duplicate-key", text.replace("{", f'{{"{first_key}": "x",', 1).encode(), "load"),
        Mutant("single-quotes", text.replace('"', "'").encode(), "load"),
    ]


# --- random stacked edits ---------------------------------------------------------------------

NASTY: list[Any] = [
    None,
    True,
    0,
    -1,
    1.5,
    -1e308,
    1e308,
    math.nan,
    math.inf,
    HUGE_INT,
    2**63,
    "",
    "x",
    "-5",
    "\x00",
    "é" * 3,
    [],
    [1, 2, 3],
    {},
    {"a": None},
    [[[[[]]]]],
    "2023-11-16 18:15:46.68",
]


def random_edit(doc: Any, rnd: random.Random, edits: int) -> Any:
    """`doc` with `edits` random changes: delete a key or item, set a node to a nasty value,
    add an unknown key, or duplicate a list item. The result may be valid."""
    doc = copy.deepcopy(doc)
    for _ in range(edits):
        nodes = [(p, n) for p, n in walk(doc) if p]
        if not nodes:
            return doc
        path, node = rnd.choice(nodes)
        parent = _parent(doc, path)
        op = rnd.randrange(4)
        if op == 0:
            del parent[path[-1]]
        elif op == 1:
            parent[path[-1]] = copy.deepcopy(rnd.choice(NASTY))
        elif op == 2 and isinstance(node, dict):
            node[rnd.choice(["name", "zzz", "layers", "devices", "a"])] = copy.deepcopy(rnd.choice(NASTY))
        elif isinstance(parent, list):
            parent.insert(rnd.randrange(len(parent) + 1), copy.deepcopy(node))
    return doc


def random_bytes_edit(data: bytes, rnd: random.Random) -> bytes:
    """Truncate, or flip/insert/delete a few bytes."""
    if not data or rnd.random() < 0.3:
        return data[: rnd.randrange(len(data) + 1)]
    out = bytearray(data)
    for _ in range(rnd.randrange(1, 4)):
        i = rnd.randrange(len(out))
        op = rnd.randrange(3)
        if op == 0:
            out[i] = rnd.randrange(256)
        elif op == 1:
            out.insert(i, rnd.choice(b",:[]{}-\n\"' #&*!|>%@`\x00\xff"))
        elif len(out) > 1:
            del out[i]
    return bytes(out)


# --- running the command line ------------------------------------------------------------------


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """`e2llm.cli.main(argv)` with stdout and stderr captured: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def cli_worthy(m: Mutant) -> bool:
    """Known broken, and not one whose parse alone costs ~1 s (PyYAML's scanner is quadratic in
    flow nesting up to its 1024-character look-ahead; the loader test already bounds it)."""
    return m.expect is not None and not m.name.endswith("deep-flow-nesting")


def check_cli(argv: list[str], expect: str | None, name: str) -> None:
    """Broken (`expect` set): exit 2 with exactly one stderr line and no traceback. Otherwise
    exit 0, or exit 2 the same way (a mutant may be valid or not)."""
    code, _, err = run_cli(argv)
    lines = err.strip().splitlines()
    assert "Traceback" not in err, f"{name}: {err[-800:]}"
    if expect:
        assert code == 2, f"{name}: exit {code}, want 2; stderr: {err[-500:]}"
        assert len(lines) == 1, f"{name}: stderr not one line: {err[-500:]}"
    assert code in (0, 2), f"{name}: exit {code}; stderr: {err[-500:]}"
    if code == 2:  # progress lines may come before the error of a mutant that loaded
        assert lines and lines[-1].startswith("e2llm "), f"{name}: {err[-300:]}"
