"""Broken plan JSON: every mutant broken in its own fields is one `InputError` from `load_plan`; every
known-broken mutant (also one whose embedded cluster or model is broken, or that does not fit
them) exits 2 with one line from `e2llm simulate`; random edits never crash either."""

from __future__ import annotations

import copy
import math
import random
from pathlib import Path
from typing import Any

import pytest
from fuzzkit import (
    BOOL,
    NAME,
    NON_NEGATIVE,
    POSITIVE,
    POSITIVE_INT,
    Mutant,
    Values,
    check_cli,
    dump_json,
    field_mutants,
    json_text_mutants,
    one_of_names,
    random_bytes_edit,
    random_edit,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from validkit import SMALL_WORKLOAD, plan_doc, write_unique

from e2llm.errors import InputError
from e2llm.plan.plan_json import load_plan

SPEED: Values = [
    ("str", "fast"),
    ("bool", True),
    ("list", []),
    ("negative", -1),
    ("nan", math.nan),
    ("inf", math.inf),
    ("huge-int", 10**400),
]
NOT_STR: Values = [("int", 5), ("list", []), ("map", {})]
RULES: dict[str, Values] = {
    "system": [*NOT_STR, ("empty", "")],
    "model": [*NOT_STR, ("empty", "")],
    "objective": [("str", "x"), ("bool", True), ("list", [])],
    "objective_kind": NOT_STR,
    "scheduler": [*NOT_STR, ("unknown", "nope")],
    "replicas": [("empty", []), ("map", {}), ("str", "x"), ("null", None)],
    "replicas.*": [("str", "x"), ("list", []), ("null", None)],
    "replicas.*.id": [("str", "0"), ("bool", True), ("fraction", 0.5), ("negative", -1), ("duplicate", 1)],
    "replicas.*.role": one_of_names(
        ("lowercase", "prefill"), ("all-decoders", "DECODER"), ("mixed", "COLOCATED")
    ),
    "replicas.*.concurrency": [*POSITIVE_INT, ("too-many", 10**9)],
    "replicas.*.devices": [("empty", []), ("map", {}), ("str", "a")],
    "replicas.*.devices.*": [("str", "a"), ("list", []), ("null", None)],
    "replicas.*.devices.*.name": [*NAME, ("not-in-cluster", "zz"), ("used-twice", "c")],
    "replicas.*.devices.*.layers": [
        ("short", [0]),
        ("three", [0, 1, 2]),
        ("negative", [-1, 5]),
        ("reversed", [5, 1]),
        ("float", [0.5, 3]),
        ("str", "0-15"),
        ("bool", [True, 3]),
        ("nulls", [None, None]),
        ("gap", [1, 15]),
        ("past-the-model", [0, 31]),
        ("huge", [0, 10**400]),
    ],
    "replicas.*.devices.*.embedding": [*BOOL, ("second-embedding", None)],
    "replicas.*.devices.*.lm_head": [*BOOL, ("two-lm-heads", True)],
    "replicas.*.devices.*.memory_gb": NON_NEGATIVE,
    "replicas.*.prefill_tok_s": SPEED,
    "replicas.*.decode_tok_s_per_request": SPEED,
    "replicas.*.prefill_capacity_tok_s": SPEED,
    "replicas.*.bottleneck_device": NOT_STR,
    "unused_devices": [("str", "a"), ("map", {}), ("int", 5), ("list-of-int", [5])],
    "planner": [("str", "x"), ("list", [1])],
    "planner.evaluations": [("str", "x"), ("negative", -1), ("fraction", 1.5)],
    "planner.seconds": [("str", "x"), ("negative", -1), ("nan", math.nan)],
    "planner.seed": [("str", "x"), ("fraction", 1.5)],
    "planner.generations": [("str", "x"), ("negative", -1)],
    "cluster": [("str", "x"), ("list", [1]), ("empty", {})],
    "cluster.devices": [("empty", []), ("str", "a")],
    "cluster.devices.*": [("str", "a"), ("null", None)],
    "cluster.devices.*.name": [*NAME, ("renamed", "zz")],
    "cluster.devices.*.memory_gb": [*POSITIVE, ("too-small", 0.01), ("too-large", 1e300)],
    "cluster.devices.*.tflops": [*POSITIVE, ("too-small", 1e-300)],
    "cluster.network": [("str", "x"), ("null", None)],
    "cluster.network.bandwidth_mbps": POSITIVE,
    "cluster.network.latency_ms": NON_NEGATIVE,
    "cluster.network.links.*.a": [*NAME, ("unknown-device", "zz")],
    "model_spec": [("str", "x"), ("list", [1]), ("empty", {})],
    "model_spec.name": NAME,
    "model_spec.n_layers": [*POSITIVE_INT, ("fewer", 3)],
    "model_spec.hidden": POSITIVE_INT,
    "model_spec.vocab": POSITIVE_INT,
    "model_spec.weight_precision": one_of_names(),
    "model_spec.kv_bytes_per_value": POSITIVE,
    "model_spec.sliding_layers": [("str", "x"), ("list-of-str", ["a"])],
}
REQUIRED = {
    "system",
    "model",
    "replicas",
    "replicas.*.role",
    "replicas.*.devices",
    "replicas.*.devices.*.layers",
    "replicas.*.devices.*.name",
    "cluster",
    "model_spec",
    "cluster.devices",
    "cluster.network",
    "cluster.devices.*.memory_gb",
    "model_spec.n_layers",
    "model_spec.hidden",
}
STRICT = {"cluster", "cluster.devices.*", "cluster.network", "model_spec"}  # the plan itself may grow fields


def level(pattern: str) -> str:
    """Which check catches a broken field: the plan loader types the plan's own fields and the
    embedded cluster and model spec; whether they fit together is checked on use."""
    return "use" if pattern.endswith(("role", "name", "embedding", "lm_head")) else "load"


# Mutants whose break shows only on use although their field is otherwise loader-checked.
USE_LEVEL = {
    "cluster.devices.*.memory_gb=too-small",
    "model_spec.n_layers=fewer",
    "replicas.*.devices.*.layers=gap",
    "replicas.*.devices.*.layers=past-the-model",
    "cluster:deleted",
    "model_spec:deleted",
    "cluster=empty",
    "model_spec=empty",
}
LOAD_LEVEL = (
    {"replicas.*.devices.*.name=" + label for label, _ in NAME}
    | {"replicas.*.role=" + label for label, _ in NAME}
    | {"model_spec.name=" + label for label, _ in NAME}
    | {"cluster.devices.*.name=" + label for label, _ in [*NAME, ("renamed", "")]}  # its link names it
    | {
        "replicas.*.role=unknown-choice",
        "replicas.*.role=lowercase",
        "replicas.*.role:deleted",
        "replicas.*.devices.*.name:deleted",
    }
    | {f"replicas.*.devices.*.{flag}={label}" for flag in ("embedding", "lm_head") for label, _ in BOOL}
)


def _expect(m: Mutant) -> Mutant:
    if m.name in USE_LEVEL:
        return Mutant(m.name, m.content, "use")
    if m.name in LOAD_LEVEL:
        return Mutant(m.name, m.content, "load")
    return m


def _structural(doc: dict[str, Any]) -> list[Mutant]:
    """Plans whose fields are each fine but that do not fit together (caught on use)."""
    out = []

    def edit(name: str, change: Any) -> None:
        d = copy.deepcopy(doc)
        change(d)
        out.append(Mutant(f"structural:{name}", dump_json(d), "use"))

    edit("drop-a-stage", lambda d: d["replicas"][0]["devices"].pop())
    edit("duplicate-stage", lambda d: d["replicas"][0]["devices"].append(d["replicas"][0]["devices"][-1]))
    edit("drop-decoder", lambda d: d["replicas"].pop())
    edit("replica-on-a-device-twice", lambda d: d["replicas"].append({**d["replicas"][1], "id": 7}))
    edit("embedding-moved", lambda d: d["replicas"][0]["devices"][0].update(embedding=False))
    edit(
        "device-removed-from-cluster",
        lambda d: d["cluster"]["devices"].pop() and d["cluster"]["network"].pop("links"),
    )
    edit(
        "splitwise-with-colocated",
        lambda d: [r.update(role="COLOCATED") for r in d["replicas"]] and d.update(scheduler="splitwise"),
    )
    # Fields typed fine (the loader checks the embedded cluster and model too) that do not fit.
    n = doc["model_spec"]["n_layers"]
    for roles in (
        ("PREFILL", "PREFILL"),
        ("DECODER", "DECODER"),
        ("COLOCATED", "DECODER"),
        ("MIXED", "COLOCATED"),
    ):
        edit(
            f"roles-{'-'.join(roles)}",
            lambda d, roles=roles: [r.update(role=x) for r, x in zip(d["replicas"], roles, strict=True)],
        )
    for layers in (n - 1, n + 1, 2 * n, 1):
        edit(f"model-has-{layers}-layers", lambda d, layers=layers: d["model_spec"].update(n_layers=layers))
    for i, name in enumerate(("a", "b", "c")):
        edit(
            f"{name}-too-small-for-its-weights",
            lambda d, i=i: d["cluster"]["devices"][i].update(memory_gb=0.05),
        )
    for label, first, second in (
        ("gap", n // 2 - 1, n // 2),
        ("overlap", n // 2 + 1, n // 2),
        ("short", n // 2, n // 2 + 1),
    ):

        def split(d: dict[str, Any], first: int = first, second: int = second) -> None:
            stages = d["replicas"][0]["devices"]
            stages[0]["layers"], stages[1]["layers"] = [0, first], [second, n]

        edit(f"prefill-split-{label}", split)
    edit("decoder-short", lambda d: d["replicas"][1]["devices"][0].update(layers=[0, n - 1]))
    edit("decoder-starts-late", lambda d: d["replicas"][1]["devices"][0].update(layers=[1, n]))
    edit("lm-head-moved", lambda d: d["replicas"][0]["devices"][1].update(lm_head=False))
    edit("two-lm-heads", lambda d: d["replicas"][0]["devices"][0].update(lm_head=True))
    edit("stage-on-the-decoder", lambda d: d["replicas"][0]["devices"][1].update(name="c"))
    return out


def corpus() -> list[Mutant]:
    doc = plan_doc()
    out = [_expect(m) for m in field_mutants(doc, RULES, REQUIRED, STRICT, dump_json, level=level)]
    out += _structural(doc)
    out += json_text_mutants(dump_json(doc).decode())
    return out


CORPUS = corpus()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("plans")
    (d / "w.yaml").write_text(SMALL_WORKLOAD)
    return d


def _load_outcome(m: Mutant, path: Path) -> None:
    try:
        load_plan(path)
    except InputError as e:
        assert "\n" not in str(e) and m.expect != "use", f"{m.name}: {e}"
        return
    assert m.expect != "load", f"{m.name}: loaded fine but is broken"


def test_corpus_is_large_and_mostly_known_broken() -> None:
    assert len(CORPUS) >= 150
    assert sum(m.expect == "load" for m in CORPUS) >= 80
    assert sum(m.expect == "use" for m in CORPUS) >= 40


def test_the_valid_plan_loads_and_simulates(folder: Path) -> None:
    path = write_unique(folder, dump_json(plan_doc()), ".json")
    assert len(load_plan(path).replicas) == 2
    check_cli(["simulate", str(path), "--workload", str(folder / "w.yaml")], None, "valid plan")


@pytest.mark.parametrize("m", CORPUS, ids=lambda m: m.name)
def test_broken_plan(m: Mutant, folder: Path) -> None:
    path = write_unique(folder, m.content, ".json")
    _load_outcome(m, path)
    check_cli(["simulate", str(path), "--workload", str(folder / "w.yaml")], m.expect, m.name)


@settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(rnd=st.randoms(use_true_random=False), edits=st.integers(1, 4), bytes_too=st.booleans())
def test_random_edits_never_crash(folder: Path, rnd: random.Random, edits: int, bytes_too: bool) -> None:
    content = dump_json(random_edit(plan_doc(), rnd, edits))
    if bytes_too:
        content = random_bytes_edit(content, rnd)
    path = write_unique(folder, content, ".json")
    _load_outcome(Mutant("random", content, None), path)
    check_cli(["simulate", str(path), "--workload", str(folder / "w.yaml")], None, "random")
