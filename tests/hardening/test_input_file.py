"""`specs.input_file`: each guard rejects what it is for, quickly, and lets valid files through."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from e2llm.errors import InputError
from e2llm.specs.input_file import MAX_NESTING, parse_json, parse_yaml, read_input_text

LAUGHS = "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10)
)


def test_alias_bomb_is_rejected_before_anything_walks_it() -> None:
    start = time.perf_counter()
    with pytest.raises(InputError, match=r"^bomb\.yaml: YAML aliases expand to more than"):
        parse_yaml(LAUGHS, "bomb.yaml")
    assert time.perf_counter() - start < 2.0


def test_a_few_aliases_and_merge_keys_still_work() -> None:
    text = "base: &gpu {tflops: 30, mem_bandwidth_gbs: 600}\ndevices:\n  - {<<: *gpu, name: a, tflops: 10}\n"
    doc = parse_yaml(text, "ok.yaml")
    assert doc["devices"][0] == {"tflops": 10, "mem_bandwidth_gbs": 600, "name": "a"}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("x: &r [1, *r]\n", "^ok.yaml:1: recursive YAML alias"),
        ("a: 1\nb: 2\na: 3\n", "ok.yaml:3: malformed YAML: duplicate key 'a'"),
        ("x: " + "[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1), f"nested deeper than {MAX_NESTING}"),
        ("when: 2023-13-45\n", "ok.yaml: malformed YAML: month must be in 1..12"),
        ("n: " + "9" * 5000 + "\n", "ok.yaml: malformed YAML: Exceeds the limit"),
        ("x: !!python/object/apply:os.system ['true']\n", "could not determine a constructor"),
        ("a: 1\n---\nb: 2\n", "expected a single document in the stream, but found another"),
    ],
)
def test_bad_yaml(text: str, fragment: str) -> None:
    with pytest.raises(InputError, match=fragment.replace("[", r"\[").replace(".", r"\.")):
        parse_yaml(text, "ok.yaml")


def test_nesting_within_the_limit_loads() -> None:
    depth = MAX_NESTING - 2
    assert parse_yaml("x: " + "[" * depth + "]" * depth, "ok.yaml") is not None


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('{"a": 1, "a": 2}', "duplicate key 'a'"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("9" * 5000, "Exceeds the limit"),
        ('{"a": 1', "p.json:1: malformed JSON"),
    ],
)
def test_bad_json(text: str, fragment: str) -> None:
    with pytest.raises(InputError, match=fragment):
        parse_json(text, "p.json")


def test_read_rejects_special_files_and_wrong_encodings(tmp_path: Path) -> None:
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(InputError, match=r"not UTF-8 text \(bad byte at offset 9\)"):
        read_input_text(latin, "cluster")
    with pytest.raises(InputError, match="not a regular file"):
        read_input_text("/dev/zero", "cluster")
    small = tmp_path / "small.yaml"
    small.write_text("a: 1\n" * 10)
    with pytest.raises(InputError, match="larger than 0 MiB"):
        read_input_text(small, "cluster", max_bytes=10)
