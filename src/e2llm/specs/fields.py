"""Reading user-written YAML/JSON mappings with one-line `InputError`s.

Every checker takes the mapping, the key and a `where` prefix (`"cluster.yaml: devices[2]"`) and
raises an `InputError` naming `where.key` and the offending value, so messages look like
`cluster.yaml: devices[2].memory_gb: must be > 0 (got -1)`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from e2llm.errors import InputError
from e2llm.specs.input_file import parse_yaml, read_input_text

REQUIRED: Any = object()  # `default=REQUIRED`: the field must be present
INT64_MAX = 2**63 - 1  # integers go into numpy arrays


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """Parse a YAML file whose top level must be a mapping (`what` names it in errors); size,
    encoding, aliases and nesting are bounded by `input_file`."""
    p = Path(path)
    data = parse_yaml(read_input_text(p, what), str(p))
    if not isinstance(data, dict):
        raise InputError(str(p), f"{what} file must be a YAML mapping", type(data).__name__)
    return data


def field_where(where: str, key: str | int) -> str:
    """`where` extended by a key or list index: `f.yaml` -> `f.yaml: devices` -> `f.yaml: devices[2]`
    -> `f.yaml: devices[2].memory_gb` (the file part ends at the first `": "`)."""
    if isinstance(key, int):
        return f"{where}[{key}]"
    if not where:
        return key
    return f"{where}.{key}" if ": " in where else f"{where}: {key}"


def check_keys(d: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    """Reject keys not in `allowed` (typos would otherwise be silently ignored)."""
    allowed = list(allowed)
    for key in d:
        if key not in allowed:
            raise InputError(
                field_where(where, str(key)), f"unknown key; expected one of {', '.join(allowed)}"
            )


def as_mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InputError(where, "must be a mapping", value)
    return value


def as_list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise InputError(where, "must be a list", value)
    return value


def get_number(
    d: Mapping[str, Any],
    key: str,
    where: str,
    *,
    default: Any = REQUIRED,
    minimum: float = 0.0,
    strict: bool = True,
    maximum: float = math.inf,
) -> float:
    """A finite number `> minimum` (`strict`) or `>= minimum`, and `<= maximum`; missing ->
    `default` or error. Integers too large for a float are rejected, not overflowed."""
    w = field_where(where, key)
    if key not in d or d[key] is None:
        if default is REQUIRED:
            raise InputError(w, "missing required field")
        return float(default)
    value = d[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not _finite(value):
        raise InputError(w, "must be a finite number", value)
    if value < minimum or (strict and value == minimum):
        raise InputError(w, f"must be {'>' if strict else '>='} {minimum:g}", value)
    if value > maximum:
        raise InputError(w, f"must be <= {maximum:g}", value)
    return float(value)


def _finite(value: int | float) -> bool:
    if isinstance(value, int):
        return abs(value) <= sys.float_info.max  # exact int/float comparison, no overflow
    return math.isfinite(value)


def get_int(
    d: Mapping[str, Any],
    key: str,
    where: str,
    *,
    default: Any = REQUIRED,
    minimum: int = 1,
    maximum: int = INT64_MAX,
) -> int:
    """An integer in `[minimum, maximum]` (by default it must fit numpy's int64); a float with
    an integral value counts; missing -> `default` or error."""
    w = field_where(where, key)
    if key not in d or d[key] is None:
        if default is REQUIRED:
            raise InputError(w, "missing required field")
        return int(default)
    value = d[key]
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise InputError(w, "must be an integer", value)
    if value < minimum:
        raise InputError(w, f"must be >= {minimum}", value)
    if value > maximum:
        raise InputError(w, f"must be <= {maximum}", value)
    return value


def get_str(d: Mapping[str, Any], key: str, where: str, *, default: Any = REQUIRED) -> str:
    w = field_where(where, key)
    if key not in d or d[key] is None:
        if default is REQUIRED:
            raise InputError(w, "missing required field")
        return str(default)
    value = d[key]
    if not isinstance(value, str) or not value.strip():
        raise InputError(w, "must be a non-empty string", value)
    return value
