"""Broken workload YAML: every known-broken mutant is one `InputError` from `load_workload` and exit 2
with one line from `e2llm simulate`; random edits never raise anything else, and what loads also
generates its requests."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from fuzzkit import (
    NAME,
    NON_NEGATIVE,
    POSITIVE,
    POSITIVE_INT,
    Mutant,
    Values,
    check_cli,
    cli_worthy,
    dump_json,
    dump_yaml,
    field_mutants,
    one_of_names,
    random_bytes_edit,
    random_edit,
    yaml_text_mutants,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from validkit import SMALL_WORKLOAD, TRACE, example_yaml, plan_doc, write_unique

from e2llm.errors import InputError
from e2llm.specs.workload import generate_requests, with_load
from e2llm.specs.workload_file import load_workload

needs_traces = pytest.mark.skipif(not TRACE.is_file(), reason="shared/traces not beside the checkout")

TOKENS: Values = [("too-many-tokens", 1e12)]
LENGTH_RULES: dict[str, Values] = {
    "": [("str", "x"), ("list", []), ("null", None)],
    ".dist": one_of_names(),
    ".min": [*POSITIVE_INT, ("above-max", 10**6)],
    ".max": [*POSITIVE_INT, ("below-min", 1), ("too-many-tokens", 10**12)],
    ".value": [*POSITIVE, *TOKENS],
    ".mean": [*POSITIVE, *TOKENS],
    ".cv": [*NON_NEGATIVE, ("too-large", 1e200)],
    ".path": [*NAME, ("missing-file", "/nonexistent/trace.csv"), ("directory", "/")],
}
RULES: dict[str, Values] = {
    "requests": [*POSITIVE_INT, ("too-many", 10**12)],
    "seed": [("str", "x"), ("bool", True), ("fraction", 1.5), ("negative", -1), ("list", [])],
    "arrival": [("str", "poisson"), ("list", []), ("null", None)],
    "arrival.process": one_of_names(("replay", "replay")),
    "arrival.rate_per_s": [*POSITIVE, ("denormal", 5e-324)],
    "arrival.interval_s": POSITIVE,
    "arrival.cv": [*POSITIVE, ("too-large", 1e200), ("too-small", 1e-200)],
    "min_decode_tok_s": POSITIVE,
    "trace": [
        *NAME,
        ("missing-file", "/nonexistent/trace.csv"),
        ("directory", "/"),
        ("not-csv", "/etc/hostname"),
    ],
    "time_scale": POSITIVE,
    "rate_per_s": [*POSITIVE, ("denormal", 5e-324)],
    **{f"input_tokens{k}": v for k, v in LENGTH_RULES.items()},
    # the same parser reads both sides: output_tokens gets a sample of each field's bad values
    **{f"output_tokens{k}": v[::3] for k, v in LENGTH_RULES.items()},
}
STRICT = {"", "arrival", "input_tokens", "output_tokens"}
LENGTHS = {"input_tokens", "output_tokens", "input_tokens.dist", "output_tokens.dist"}
SYNTHETIC = {"requests", "arrival", "arrival.process", *LENGTHS}


def bases() -> dict[str, tuple[Any, set[str]]]:
    """Valid workloads (name -> (document, patterns whose deletion breaks it))."""
    smoke = example_yaml("workloads", "smoke.yaml")
    longreason = example_yaml("workloads", "longreason-custom.yaml")
    gamma = {**smoke, "arrival": {"process": "gamma", "interval_s": 0.5, "cv": 2.0}}
    out: dict[str, tuple[Any, set[str]]] = {
        "smoke": (smoke, SYNTHETIC | {"arrival.rate_per_s", "input_tokens.max", "output_tokens.value"}),
        "longreason": (
            longreason,
            SYNTHETIC | {"arrival.interval_s", "input_tokens.mean", "input_tokens.cv"},
        ),
        "gamma": (gamma, SYNTHETIC | {"arrival.cv", "arrival.interval_s"}),
    }
    if TRACE.is_file():
        trace = str(TRACE)
        sampled = {**example_yaml("workloads", "azure-conv-poisson.yaml"), "trace": trace, "requests": 50}
        out["trace-sampled"] = (sampled, {"trace", "arrival.process", "arrival.rate_per_s"})
        out["trace-scaled"] = ({"trace": trace, "requests": 50, "time_scale": 2.0, "seed": 1}, {"trace"})
        out["trace-rate"] = ({"trace": trace, "requests": 50, "rate_per_s": 3.0}, {"trace"})
        lengths = {**smoke, "input_tokens": {"dist": "trace", "path": trace, "min": 2, "max": 4000}}
        out["trace-lengths"] = (lengths, SYNTHETIC | {"input_tokens.path"})
    return out


def _structural(bases: dict[str, tuple[Any, set[str]]]) -> list[Mutant]:
    """Fields that are fine alone but not together."""
    smoke = bases["smoke"][0]
    pairs: list[tuple[str, Any]] = [
        ("time-scale-without-trace", {**smoke, "time_scale": 2}),
        ("rate-without-trace", {**smoke, "rate_per_s": 2}),
        ("interval-and-rate", {**smoke, "arrival": {"process": "fixed", "interval_s": 1, "rate_per_s": 1}}),
        ("cv-on-poisson", {**smoke, "arrival": {"process": "poisson", "rate_per_s": 1, "cv": 1}}),
        ("value-and-mean", {**smoke, "output_tokens": {"dist": "fixed", "value": 8, "mean": 8}}),
        ("uniform-without-max", {**smoke, "input_tokens": {"dist": "uniform", "min": 4}}),
        (
            "min-above-default-max",
            {**smoke, "input_tokens": {"dist": "lognormal", "mean": 10, "cv": 0.5, "min": 500}},
        ),
        (
            "lognormal-keys-on-uniform",
            {**smoke, "input_tokens": {"dist": "uniform", "min": 1, "max": 9, "cv": 1}},
        ),
    ]
    if "trace-sampled" in bases:
        sampled = bases["trace-sampled"][0]
        pairs += [
            ("trace-with-lengths", {**sampled, "input_tokens": smoke["input_tokens"]}),
            ("trace-arrival-and-time-scale", {**sampled, "time_scale": 2}),
            ("trace-time-scale-and-rate", {**bases["trace-scaled"][0], "rate_per_s": 2}),
            ("trace-is-yaml-not-csv", {**sampled, "trace": "workload.yaml"}),
        ]
    return [Mutant(f"structural:{name}", dump_yaml(doc), "load") for name, doc in pairs]


def corpus() -> list[Mutant]:
    all_bases = bases()
    out: list[Mutant] = []
    ruled: set[str] = set()  # each field's bad values once, in the first example that has it
    for name, (doc, required) in all_bases.items():
        out += [
            Mutant(f"{name}:{m.name}", m.content, m.expect)
            for m in field_mutants(doc, RULES, required, STRICT, dump_yaml, ruled=ruled)
        ]
    out += _structural(all_bases)
    out += [Mutant(f"smoke:{m.name}", m.content, m.expect) for m in yaml_text_mutants(SMALL_WORKLOAD)]
    return out


CORPUS = corpus()


def _load_outcome(m: Mutant, path: Path) -> None:
    try:
        w = load_workload(path)
    except InputError as e:
        assert "\n" not in str(e), f"{m.name}: {e}"
        return
    assert m.expect is None, f"{m.name}: loaded fine but is broken"
    generate_requests(with_load(w, requests=min(w.requests, 20)))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("workloads")
    (d / "plan.json").write_bytes(dump_json(plan_doc()))
    (d / "workload.yaml").write_text(SMALL_WORKLOAD)  # for `trace-is-yaml-not-csv`
    return d


def test_corpus_is_large_and_mostly_known_broken() -> None:
    assert len(CORPUS) >= 150
    assert sum(m.expect == "load" for m in CORPUS) >= 140


@pytest.mark.parametrize("m", CORPUS, ids=lambda m: m.name)
def test_broken_workload(m: Mutant, folder: Path) -> None:
    path = write_unique(folder, m.content, ".yaml")
    _load_outcome(m, path)
    if cli_worthy(m):
        argv = ["simulate", str(folder / "plan.json"), "--workload", str(path), "--requests", "4"]
        check_cli(argv, m.expect, m.name)


def test_the_valid_bases_load_and_simulate(folder: Path) -> None:
    for name, (doc, _) in bases().items():
        path = write_unique(folder, dump_yaml(doc), ".yaml")
        assert load_workload(path).requests >= 1, name
        check_cli(
            ["simulate", str(folder / "plan.json"), "--workload", str(path), "--requests", "4"], None, name
        )


@needs_traces
@settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(rnd=st.randoms(use_true_random=False), edits=st.integers(1, 4), bytes_too=st.booleans())
def test_random_edits_never_crash(folder: Path, rnd: random.Random, edits: int, bytes_too: bool) -> None:
    all_bases = bases()
    doc, _ = all_bases[rnd.choice(sorted(all_bases))]
    content = dump_yaml(random_edit(doc, rnd, edits))
    if bytes_too:
        content = random_bytes_edit(content, rnd)
    _load_outcome(Mutant("random", content, None), write_unique(folder, content, ".yaml"))
