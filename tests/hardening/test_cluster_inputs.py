"""Broken cluster YAML: every known-broken mutant is one `InputError` from `load_cluster` and exit 2
with one line from `e2llm compare`; random edits never raise anything else."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from fuzzkit import (
    NAME,
    NON_NEGATIVE,
    POSITIVE,
    Mutant,
    Values,
    check_cli,
    cli_worthy,
    dump_yaml,
    field_mutants,
    one_of_names,
    random_bytes_edit,
    random_edit,
    with_value,
    yaml_text_mutants,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from validkit import EXAMPLES, MODEL, example_yaml, write_unique

from e2llm.errors import InputError
from e2llm.specs.cluster_file import load_cluster
from e2llm.specs.input_file import MAX_CONFIG_BYTES

TOO_LARGE: Values = [("too-large", 1e300)]
TOO_SMALL: Values = [("too-small", 1e-300)]
RULES: dict[str, Values] = {
    "devices": [("empty", []), ("map", {"a": 1}), ("str", "dev1"), ("null", None)],
    "devices.*": [("str", "dev1"), ("list", [1]), ("null", None)],
    "devices.*.name": NAME,
    "devices.*.preset": one_of_names(),
    "devices.*.memory_gb": [*POSITIVE, *TOO_LARGE],
    "devices.*.host_memory_gb": [*NON_NEGATIVE, *TOO_LARGE],
    "devices.*.tflops": [*POSITIVE, *TOO_LARGE, *TOO_SMALL],
    "devices.*.mem_bandwidth_gbs": [*POSITIVE, *TOO_LARGE, *TOO_SMALL],
    "network": [("list", []), ("str", "lan"), ("null", None)],
    "network.bandwidth_mbps": [*POSITIVE, *TOO_LARGE, *TOO_SMALL],
    "network.latency_ms": [*NON_NEGATIVE, *TOO_LARGE],
    "network.links": [("map", {"a": 1}), ("str", "x")],
    "network.links.*": [("str", "fog-pi"), ("list", ["fog", "pi"])],
    "network.links.*.a": [*NAME, ("unknown-device", "nope")],
    "network.links.*.b": [*NAME, ("unknown-device", "nope"), ("same-as-a", "fog")],
    "network.links.*.bandwidth_mbps": POSITIVE,
    "network.links.*.latency_ms": NON_NEGATIVE,
}
STRICT = {"", "devices.*", "network", "network.links.*"}
NETWORK_REQUIRED = {"devices", "network", "devices.*.name", "network.bandwidth_mbps", "network.latency_ms"}
REQUIRED = {
    "local-cpu.yaml": NETWORK_REQUIRED
    | {"devices.*.memory_gb", "devices.*.tflops", "devices.*.mem_bandwidth_gbs"},
    "paper-testbed.yaml": NETWORK_REQUIRED,  # presets fill the numbers
    "wifi-edge-fog.yaml": NETWORK_REQUIRED | {"network.links.*.a", "network.links.*.b"},
}


def _structural(name: str, doc: Any) -> list[Mutant]:
    """Broken relations between fields: duplicate names and links."""
    out = [
        Mutant(
            f"{name}:duplicate-device-name",
            dump_yaml(with_value(doc, ("devices", 1, "name"), doc["devices"][0]["name"])),
            "load",
        ),
        Mutant(f"{name}:no-devices-key", dump_yaml({"network": doc["network"]}), "load"),
    ]
    links = doc["network"].get("links")
    if links:
        dup = with_value(doc, ("network", "links"), [*links, dict(links[0])])
        out.append(Mutant(f"{name}:duplicate-link", dump_yaml(dup), "load"))
        flipped = {**links[0], "a": links[0]["b"], "b": links[0]["a"]}
        out.append(
            Mutant(
                f"{name}:duplicate-link-reversed",
                dump_yaml(with_value(doc, ("network", "links"), [*links, flipped])),
                "load",
            )
        )
    return out


def corpus() -> list[Mutant]:
    out: list[Mutant] = []
    ruled: set[str] = set()  # each field's bad values once, in the first example that has it
    for name, required in REQUIRED.items():
        doc = example_yaml("clusters", name)
        for m in [
            *field_mutants(doc, RULES, required, STRICT, dump_yaml, ruled=ruled),
            *_structural(name, doc),
        ]:
            out.append(Mutant(f"{name}:{m.name}", m.content, m.expect))
    text = dump_yaml(example_yaml("clusters", "local-cpu.yaml")).decode()
    out += [Mutant(f"local-cpu.yaml:{m.name}", m.content, m.expect) for m in yaml_text_mutants(text)]
    return out


CORPUS = corpus()


def _load_outcome(m: Mutant, path: Path) -> None:
    try:
        load_cluster(path)
    except InputError as e:
        assert "\n" not in str(e) and str(path) in str(e), f"{m.name}: {e}"
        return
    assert m.expect is None, f"{m.name}: loaded fine but is broken"


def test_corpus_is_large_and_mostly_known_broken() -> None:
    assert len(CORPUS) >= 150
    assert sum(m.expect == "load" for m in CORPUS) >= 140


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clusters")


@pytest.mark.parametrize("m", CORPUS, ids=lambda m: m.name)
def test_broken_cluster(m: Mutant, folder: Path) -> None:
    path = write_unique(folder, m.content, ".yaml")
    _load_outcome(m, path)
    if cli_worthy(m):
        workload = str(EXAMPLES / "workloads" / "smoke.yaml")
        argv = ["compare", str(path), "--model", MODEL, "--workload", workload, "--systems", "e2llm"]
        check_cli([*argv, "--requests", "4"], m.expect, m.name)


def test_missing_directory_and_oversized_files(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with big.open("wb") as f:
        f.truncate(MAX_CONFIG_BYTES + 1)  # sparse: costs no disk
    for path, fragment in (
        (tmp_path / "none.yaml", "not found"),
        (tmp_path, "not a regular file"),
        (big, "larger than"),
    ):
        with pytest.raises(InputError, match=fragment):
            load_cluster(path)
        argv = [
            "compare",
            str(path),
            "--model",
            MODEL,
            "--workload",
            str(EXAMPLES / "workloads" / "smoke.yaml"),
        ]
        check_cli(argv, "load", fragment)


@settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(rnd=st.randoms(use_true_random=False), edits=st.integers(1, 4), bytes_too=st.booleans())
def test_random_edits_never_crash(tmp_path: Path, rnd: random.Random, edits: int, bytes_too: bool) -> None:
    doc = example_yaml("clusters", rnd.choice(sorted(REQUIRED)))
    content = dump_yaml(random_edit(doc, rnd, edits))
    if bytes_too:
        content = random_bytes_edit(content, rnd)
    _load_outcome(Mutant("random", content, None), write_unique(tmp_path, content, ".yaml"))


@pytest.mark.parametrize("body", ["[" * 100_000 + "]" * 100_000, "9" * 5000], ids=["deep", "long-int"])
def test_broken_profile_named_by_a_cluster(folder: Path, body: str) -> None:
    profile = write_unique(folder, body.encode(), ".json")
    doc = example_yaml("clusters", "local-cpu.yaml")
    doc["devices"][0]["profile"] = str(profile)
    cluster = write_unique(folder, dump_yaml(doc), ".yaml")
    argv = [
        "compare",
        str(cluster),
        "--model",
        MODEL,
        "--workload",
        str(EXAMPLES / "workloads" / "smoke.yaml"),
    ]
    check_cli(argv, "load", "broken profile")
