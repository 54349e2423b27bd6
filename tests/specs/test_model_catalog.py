"""Model catalog, HF config / GGUF readers, precision overrides, dict round trip, errors."""

import json

import pytest

from e2llm.errors import InputError
from e2llm.specs.model_catalog import CATALOG, load_model, smollm2_gguf_path
from e2llm.specs.model_spec import BYTES_PER_PARAM, model_from_dict, model_to_dict
from e2llm.specs.units import GIB


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_catalog_entry_round_trips(name):
    spec = load_model(name)
    assert model_from_dict(model_to_dict(spec), "plan.json") == spec
    assert json.loads(json.dumps(model_to_dict(spec))) == model_to_dict(spec)


@pytest.mark.parametrize(
    ("name", "billions"),
    [
        ("llama-3.1-8b", 8.03),
        ("llama-3.1-70b", 70.55),
        ("qwen2.5-7b", 7.62),
        ("qwen2.5-1.5b", 1.54),
        ("smollm2-135m", 0.1345),
        ("gpt-oss-20b", 20.9),
    ],
)
def test_parameter_counts_match_the_published_sizes(name, billions):
    assert load_model(name).total_params / 1e9 == pytest.approx(billions, rel=0.01)


def test_gpt_oss_is_moe_with_mxfp4_experts_and_fits_in_about_13_gb():
    m = load_model("gpt-oss-20b")
    assert (m.n_experts, m.experts_per_token, m.weight_precision, m.expert_precision) == (
        32,
        4,
        "bf16",
        "mxfp4",
    )
    assert 12.0 <= m.total_weight_bytes / GIB <= 13.5
    assert m.sliding_layers == tuple(range(0, 24, 2)) and m.sliding_window == 128
    assert m.kv_tokens(0, 4096) == 128 and m.kv_tokens(1, 4096) == 4096


def test_llama_8b_kv_is_gqa_128_kib_per_token():
    m = load_model("llama-3.1-8b")
    assert sum(m.kv_bytes_per_token(i) for i in range(m.n_layers)) == 128 * 1024


@pytest.mark.parametrize("precision", sorted(BYTES_PER_PARAM))
def test_precision_override_sets_dense_and_expert_weights(precision):
    m = load_model("gpt-oss-20b", precision)
    assert m.weight_precision == m.expert_precision == precision
    assert m.kv_bytes_per_value == (4.0 if precision == "fp32" else 2.0)


def test_lower_precision_is_smaller():
    sizes = [load_model("llama-3.1-8b", p).total_weight_bytes for p in ("fp32", "bf16", "int8", "q4")]
    assert sizes == sorted(sizes, reverse=True)


def test_gguf_header_of_the_shipped_smollm2():
    path = smollm2_gguf_path()
    assert path.is_file() and path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    m = load_model(path)
    ref = CATALOG["smollm2-135m"]
    shape = (
        "n_layers",
        "hidden",
        "n_heads",
        "n_kv_heads",
        "head_dim",
        "intermediate",
        "vocab",
        "max_context",
    )
    assert [getattr(m, f) for f in shape] == [getattr(ref, f) for f in shape]
    assert m.tied_embeddings and m.weight_precision == "q4"
    assert load_model(path, "bf16").total_weight_bytes == pytest.approx(ref.total_weight_bytes)


def hf_config(**overrides):
    cfg = {
        "model_type": "llama",
        "num_hidden_layers": 4,
        "hidden_size": 256,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "intermediate_size": 512,
        "vocab_size": 1000,
        "max_position_embeddings": 2048,
        "torch_dtype": "float16",
    }
    cfg.update(overrides)
    return {k: v for k, v in cfg.items() if v is not None}


def test_hf_config_file_and_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(hf_config()))
    for arg in (tmp_path, tmp_path / "config.json", str(tmp_path)):
        m = load_model(arg)
        assert (m.n_layers, m.hidden, m.n_kv_heads, m.head_dim, m.weight_precision) == (4, 256, 2, 32, "fp16")


def test_hf_gpt_oss_style_config(tmp_path):
    cfg = hf_config(
        num_local_experts=8,
        num_experts_per_tok=2,
        sliding_window=64,
        layer_types=["sliding_attention", "full_attention"] * 2,
        quantization_config={"quant_method": "mxfp4"},
        torch_dtype="bfloat16",
    )
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    m = load_model(tmp_path / "config.json")
    assert (m.n_experts, m.experts_per_token, m.sliding_layers, m.sliding_window) == (8, 2, (0, 2), 64)
    assert (m.weight_precision, m.expert_precision) == ("bf16", "mxfp4")


def test_qwen_style_disabled_sliding_window(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps(hf_config(sliding_window=4096, use_sliding_window=False))
    )
    assert load_model(tmp_path).sliding_window == 0


@pytest.mark.parametrize(
    ("make", "fragments"),
    [
        (lambda d: "gpt-oss-20", ["not a catalog model", "gpt-oss-20b", "'gpt-oss-20'"]),
        (lambda d: "someorg/llama-3.1-9b", ["not a catalog model", "llama-3.1-8b"]),
        (lambda d: str(d / "missing.gguf"), ["missing.gguf", "not found"]),
        (lambda d: str(d / "empty_dir"), ["no config.json"]),
        (lambda d: str(d / "broken.json"), ["broken.json:1", "malformed JSON"]),
        (lambda d: str(d / "nolayers.json"), ["nolayers.json", "num_hidden_layers", "missing"]),
        (lambda d: str(d / "negative.json"), ["negative.json", "hidden_size", "-5"]),
        (lambda d: str(d / "fake.gguf"), ["fake.gguf", "not a GGUF"]),
    ],
)
def test_bad_model_inputs(tmp_path, make, fragments):
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "nolayers.json").write_text(json.dumps(hf_config(num_hidden_layers=None)))
    (tmp_path / "negative.json").write_text(json.dumps(hf_config(hidden_size=-5)))
    (tmp_path / "fake.gguf").write_bytes(b"NOPE" + bytes(64))
    with pytest.raises(InputError) as err:
        load_model(make(tmp_path))
    for fragment in fragments:
        assert fragment in str(err.value)


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("meta-llama/Llama-3.1-8B-Instruct", "llama-3.1-8b"),
        ("Qwen/Qwen2.5-7B-Instruct", "qwen2.5-7b"),
        ("openai/gpt-oss-20b", "gpt-oss-20b"),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2-135m"),
        ("LLAMA-3.1-70B", "llama-3.1-70b"),
    ],
)
def test_hub_ids_and_case_map_to_the_catalog(alias, name):
    assert load_model(alias) == CATALOG[name]


def test_unsupported_precision():
    with pytest.raises(InputError, match=r"unsupported precision.*'int3'"):
        load_model("llama-3.1-8b", "int3")


def test_model_from_dict_rejects_bad_fields():
    d = model_to_dict(load_model("qwen2.5-7b"))
    with pytest.raises(InputError, match=r"plan\.json: n_layers.*got 0"):
        model_from_dict({**d, "n_layers": 0}, "plan.json")
    with pytest.raises(InputError, match=r"plan\.json: colour.*unknown key"):
        model_from_dict({**d, "colour": 1}, "plan.json")
