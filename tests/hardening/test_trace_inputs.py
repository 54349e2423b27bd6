"""Broken Azure-format trace CSVs: every known-broken mutant is one `InputError` naming the file from
`load_trace` and exit 2 with one line from `e2llm simulate --workload trace.csv`; random byte
edits never raise anything else. The base is the first rows of the real conversation trace."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from fuzzkit import Mutant, check_cli, dump_json, random_bytes_edit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from validkit import TRACE, plan_doc, trace_head, write_unique

from e2llm.errors import InputError
from e2llm.specs.trace import MAX_TRACE_BYTES, load_trace
from e2llm.specs.workload_file import load_workload

pytestmark = pytest.mark.skipif(not TRACE.is_file(), reason="shared/traces not beside the checkout")

HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens"
ROW = 5  # the data row (1-based, after the header) that row mutants break

BAD_TOKENS = {
    "letters": "abc",
    "float": "3.5",
    "negative": "-5",
    "empty": "",
    "plus-sign": "+5",
    "hex": "0x10",
    "exponent": "1e3",
    "inner-space": "1 2",
    "superscript": "\u00b2",
    "arabic-indic-digits": "\u0661\u0662",
    "too-many-tokens": "9" * 30,
    "thousands-of-digits": "9" * 5000,
    "nul": "\x00",
}
BAD_STAMPS = {
    "month-13": "2023-13-16 18:15:46.68",
    "day-32": "2023-11-32 18:15:46.68",
    "hour-25": "2023-11-16 25:15:46.68",
    "minute-61": "2023-11-16 18:61:46.68",
    "second-61": "2023-11-16 18:15:61.68",
    "year-zero": "0000-11-16 18:15:46.68",
    "letters": "yesterday",
    "empty": "",
    "date-only": "2023-11-16",
    "no-seconds": "2023-11-16 18:15",
    "time-only": "18:15:46",
    "bad-fraction": "2023-11-16 18:15:46.6x",
    "huge-fraction": "2023-11-16 18:15:46." + "9" * 5000,
    "one-digit-hour": "2023-11-16 8:15:46.68",
    "unix-seconds": "1700158546",
}


def _with_row(text: str, change: str, column: int) -> str:
    lines = text.splitlines()
    parts = lines[ROW].split(",")
    parts[column] = change
    lines[ROW] = ",".join(parts)
    return "\n".join(lines) + "\n"


def corpus() -> list[Mutant]:
    text = trace_head()
    lines = text.splitlines()
    rows = "\n".join(lines[1:]) + "\n"
    out = [Mutant(f"context-{k}", _with_row(text, v, 1).encode(), "load") for k, v in BAD_TOKENS.items()]
    out += [
        Mutant(f"generated-{k}", _with_row(text, v, 2).encode(), "load")
        for k, v in list(BAD_TOKENS.items())[:6]
    ]
    out += [Mutant(f"timestamp-{k}", _with_row(text, v, 0).encode(), "load") for k, v in BAD_STAMPS.items()]
    broken_rows = {
        "missing-column": lambda ln: ln.rsplit(",", 1)[0],
        "extra-column": lambda ln: ln + ",7",
        "only-commas": lambda ln: ",,",
        "semicolons": lambda ln: ln.replace(",", ";"),
        "tabs": lambda ln: ln.replace(",", "\t"),
    }
    for name, change in broken_rows.items():
        changed = [*lines[:ROW], change(lines[ROW]), *lines[ROW + 1 :]]
        out.append(Mutant(f"row-{name}", ("\n".join(changed) + "\n").encode(), "load"))
    out += [
        Mutant("empty-file", b"", "load"),
        Mutant("blank-lines", b"\n\n\n", "load"),
        Mutant("header-only", (HEADER + "\n").encode(), "load"),
        Mutant("header-and-blank-lines", (HEADER + "\n\n \n").encode(), "load"),
        Mutant("no-header", rows.encode(), "load"),
        Mutant("header-missing-column", text.replace(",GeneratedTokens", "", 1).encode(), "load"),
        Mutant("header-renamed-column", text.replace("ContextTokens", "PromptTokens", 1).encode(), "load"),
        Mutant("header-lowercase", text.replace(HEADER, HEADER.lower(), 1).encode(), "load"),
        Mutant("utf16", text.encode("utf-16"), "load"),
        Mutant("latin1", text.replace("TIMESTAMP", "TIMESTAMP\xe9", 1).encode("latin-1"), "load"),
        Mutant("nul-bytes", text.replace(",", "\x00,", 3).encode(), "load"),
        *(Mutant(f"garbage-{seed}", random.Random(seed).randbytes(2000), "load") for seed in range(3)),
        Mutant("a-json-file", dump_json(plan_doc()), "load"),
        Mutant("truncated-in-last-row", text.rstrip("\n")[:-25].encode(), None),
        Mutant("half", text[: len(text) // 2].encode(), None),
        Mutant("crlf", text.replace("\n", "\r\n").encode(), None),
        Mutant("utf8-bom", b"\xef\xbb\xbf" + text.encode(), None),
        Mutant("unsorted", (lines[0] + "\n" + "\n".join(reversed(lines[1:])) + "\n").encode(), None),
        Mutant("one-row", (lines[0] + "\n" + lines[1] + "\n").encode(), None),
        Mutant("all-at-once", (lines[0] + "\n" + "\n".join([lines[1]] * 5) + "\n").encode(), None),
        Mutant("zero-tokens", _with_row(text, "0", 1).encode(), None),
        Mutant(
            "columns-reordered", "\n".join(",".join(reversed(ln.split(","))) for ln in lines).encode(), None
        ),
    ]
    return out


CORPUS = corpus() if TRACE.is_file() else []


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("traces")
    (d / "plan.json").write_bytes(dump_json(plan_doc()))
    return d


def _load_outcome(m: Mutant, path: Path) -> None:
    try:
        load_trace(path)
    except InputError as e:
        assert "\n" not in str(e) and str(path) in str(e), f"{m.name}: {e}"
        assert len(str(e)) < 400, f"{m.name}: message too long ({len(str(e))} chars)"
        return
    assert m.expect is None, f"{m.name}: loaded fine but is broken"


def test_corpus_is_large_and_mostly_known_broken() -> None:
    assert len(CORPUS) >= 60
    assert sum(m.expect == "load" for m in CORPUS) >= 50


@pytest.mark.parametrize("m", CORPUS, ids=lambda m: m.name)
def test_broken_trace(m: Mutant, folder: Path) -> None:
    path = write_unique(folder, m.content, ".csv")
    _load_outcome(m, path)
    argv = ["simulate", str(folder / "plan.json"), "--workload", str(path), "--requests", "4"]
    check_cli(argv, m.expect, m.name)


def test_broken_trace_named_by_a_workload(folder: Path) -> None:
    trace = write_unique(folder, _with_row(trace_head(), "-5", 1).encode(), ".csv")
    workload = write_unique(folder, f"trace: {trace.name}\nrequests: 4\n".encode(), ".yaml")
    with pytest.raises(InputError, match=rf"{trace.name}:{ROW + 1}: ContextTokens"):
        load_workload(workload)
    check_cli(["simulate", str(folder / "plan.json"), "--workload", str(workload)], "load", "via yaml")


def test_missing_directory_and_oversized_traces(folder: Path) -> None:
    big = folder / "big.csv"
    with big.open("wb") as f:
        f.truncate(MAX_TRACE_BYTES + 1)  # sparse: costs no disk
    for path, fragment in ((folder / "none.csv", "not found"), (big, "larger than")):
        with pytest.raises(InputError, match=fragment):
            load_trace(path)
        check_cli(["simulate", str(folder / "plan.json"), "--workload", str(path)], "load", fragment)


@settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(rnd=st.randoms(use_true_random=False))
def test_random_byte_edits_never_crash(folder: Path, rnd: random.Random) -> None:
    content = random_bytes_edit(trace_head(12).encode(), rnd)
    _load_outcome(Mutant("random", content, None), write_unique(folder, content, ".csv"))
