"""Quantized weights: block decoders against gguf's own dequantizers, GGUF files written with
gguf's writer and numpy quantizers (Llama and GPT-OSS names, llama.cpp's q/k row order), and
quantized stages against the dequantized reference.

Stated tolerances (tiny random models, logits of a 12-token prompt):
- a GGUF read at fp32 equals transformers running the gguf-dequantized weights (1e-4);
- the same GGUF held quantized (int4 groups, int8 tables, bf16 activations) stays within 5% of
  the logit range of that reference, and its greedy next tokens agree on >= 90% of positions;
- MXFP4 experts are dequantized exactly on the fly: fp32 activations match at 1e-4.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize, quantize
from tiny_models import mxfp4_experts, save_mxfp4_checkpoint, tiny_gpt_oss
from transformers import GptOssForCausalLM, LlamaConfig, LlamaForCausalLM

from e2llm.errors import InputError
from e2llm.runtime import quant
from e2llm.runtime.engine import LocalPipeline
from e2llm.runtime.weights import ModelSource, load_stage_weights, prepare_model

RNG = np.random.default_rng(0)
PROMPT = [3, 17, 5, 42, 8, 99, 1, 64, 23, 7, 81, 12]


@pytest.mark.parametrize(
    ("qtype", "decode"),
    [(Q.Q4_0, quant.from_q4_0), (Q.Q4_1, quant.from_q4_1), (Q.MXFP4, None)],
)
def test_block_decoders_equal_gguf_dequantize(qtype: Q, decode: Any) -> None:
    w = RNG.standard_normal((48, 256)).astype(np.float32)
    raw = quantize(w, qtype)
    got = quant.from_mxfp4(raw, w.shape) if decode is None else decode(raw)
    np.testing.assert_array_equal(got.dequantize().numpy(), dequantize(raw, qtype))


def test_q4_k_decoder_equals_gguf_dequantize() -> None:
    """gguf has no Q4_K quantizer: random super-blocks with sane f16 scales are valid data."""
    raw = RNG.integers(0, 256, (16, 2 * 144), dtype=np.uint8)
    scales = np.array([0.01, 0.002], dtype=np.float16).view(np.uint8)
    raw.reshape(16, 2, 144)[:, :, :4] = scales
    np.testing.assert_array_equal(quant.from_q4_k(raw).dequantize().numpy(), dequantize(raw, Q.Q4_K))


def test_hf_mxfp4_layout_is_converted_to_gguf_layout() -> None:
    w = RNG.standard_normal((8, 64)).astype(np.float32)
    ref = quant.from_mxfp4(quantize(w, Q.MXFP4), w.shape)
    codes = torch.cat((ref.blocks & 15, ref.blocks >> 4), -1)  # element order
    hf_blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)  # HF: element 2j low, 2j+1 high
    got = quant.mxfp4_from_hf(hf_blocks, ref.exponents)
    assert torch.equal(got.dequantize(), ref.dequantize())


def test_int4_and_int8_kernels_equal_their_dequantized_matmul() -> None:
    w = torch.randn(96, 128)
    x = torch.randn(5, 128)
    for wq in (quant.to_int4(w), quant.from_q4_1(quantize(w.numpy(), Q.Q4_1))):
        lin = quant.make_linear(wq, None, torch.bfloat16, torch.device("cpu"))
        ref = x @ wq.dequantize().T
        assert (lin(x.bfloat16()).float() - ref).abs().max() < 0.02 * ref.abs().max()
    w8 = quant.to_int8(w)
    lin8 = quant.make_linear(w8, None, torch.float32, torch.device("cpu"))
    torch.testing.assert_close(lin8(x), x @ w8.dequantize().T, atol=1e-4, rtol=1e-4)
    # Q8_0 keeps its block scales in memory until the kernel wants rows: error stays ~1/254 of a row max
    q8 = quant.Int8Weight(*_q8_0(w))
    assert (quant.to_int8(q8.dequantize()).dequantize() - w).abs().max() < w.abs().max() / 100


def _q8_0(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    b = quantize(w.numpy(), Q.Q8_0).reshape(w.shape[0], -1, 34)
    codes = np.ascontiguousarray(b[..., 2:]).view(np.int8).reshape(w.shape)
    return torch.from_numpy(codes), torch.from_numpy(
        b[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)
    )


# -- GGUF files ---------------------------------------------------------------------------------
def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert: Llama q/k rows interleaved per head (what the loader must undo)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _add(writer: gguf.GGUFWriter, name: str, w: np.ndarray, qtype: Q) -> np.ndarray:
    """Write `w` as `qtype`; return what the file holds, dequantized (the reference's weights)."""
    if qtype == Q.F32:
        writer.add_tensor(name, w.astype(np.float32))
        return w.astype(np.float32)
    raw = quantize(w.astype(np.float32), qtype)
    writer.add_tensor(name, raw, raw_dtype=qtype)
    return dequantize(raw, qtype).reshape(w.shape)


def _header(writer: gguf.GGUFWriter, cfg: Any) -> None:
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_key_length(cfg.head_dim)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)


def _finish(writer: gguf.GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_llama_gguf(path: Path, qtype: Q) -> LlamaForCausalLM:
    """A tiny Llama as llama.cpp writes it (`qtype` linears, Q8_0 embedding, tied head); returns
    the transformers model holding exactly the file's dequantized weights."""
    cfg = LlamaConfig(
        num_hidden_layers=3,
        hidden_size=64,
        intermediate_size=256,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=128,
        tie_word_embeddings=True,
        initializer_range=0.1,
    )
    torch.manual_seed(0)
    hf = LlamaForCausalLM(cfg).eval()
    sd = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    writer = gguf.GGUFWriter(str(path), arch="llama")
    _header(writer, cfg)
    held: dict[str, np.ndarray] = {
        "model.embed_tokens.weight": _add(
            writer, "token_embd.weight", sd["model.embed_tokens.weight"], Q.Q8_0
        )
    }
    held["model.norm.weight"] = _add(writer, "output_norm.weight", sd["model.norm.weight"], Q.F32)
    names = {"q": "q", "k": "k", "v": "v", "o": "output"}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        for n, g in names.items():
            w = sd[p + f"self_attn.{n}_proj.weight"]
            heads = {"q": cfg.num_attention_heads, "k": cfg.num_key_value_heads}.get(n)
            stored = _add(writer, f"blk.{i}.attn_{g}.weight", _permute(w, heads) if heads else w, qtype)
            # undo the permutation on the reference side (block rows move whole)
            held[p + f"self_attn.{n}_proj.weight"] = _unpermute(stored, heads) if heads else stored
        for n in ("gate", "up", "down"):
            held[p + f"mlp.{n}_proj.weight"] = _add(
                writer, f"blk.{i}.ffn_{n}.weight", sd[p + f"mlp.{n}_proj.weight"], qtype
            )
        held[p + "input_layernorm.weight"] = _add(
            writer, f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"], Q.F32
        )
        held[p + "post_attention_layernorm.weight"] = _add(
            writer, f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"], Q.F32
        )
    _finish(writer)
    hf.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in held.items()}, strict=False)
    hf.tie_weights()
    return hf


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _logits(hf: Any) -> torch.Tensor:
    with torch.no_grad():
        return hf(torch.tensor([PROMPT])).logits[0].float()


def _stage_logits(pipe: LocalPipeline) -> torch.Tensor:
    """Logits at every prompt position: prefill one token at a time (decode path) after the first."""
    out = [pipe.prefill("s", PROMPT[:1])]
    out += [pipe.decode(["s"], [t])[0] for t in PROMPT[1:]]
    pipe.free("s")
    return torch.stack(out).float()


@pytest.fixture(scope="module", params=[Q.Q4_0, Q.Q4_1], ids=["Q4_0", "Q4_1"])
def llama_gguf(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    hf = write_llama_gguf(path, request.param)
    return hf, prepare_model(ModelSource.from_path(path), cache_dir=path.parent / "cache", tokenizer=False)


def test_gguf_read_at_fp32_equals_transformers_on_the_same_weights(llama_gguf: Any) -> None:
    hf, prepared = llama_gguf
    assert prepared.config.tied_embeddings and prepared.config.n_layers == 3
    pipe = LocalPipeline.build(prepared, [(0, 1), (1, 3)], precision="fp32")
    torch.testing.assert_close(_stage_logits(pipe), _logits(hf), atol=1e-4, rtol=1e-4)


def test_gguf_held_quantized_stays_close_to_the_dequantized_reference(llama_gguf: Any) -> None:
    hf, prepared = llama_gguf
    stage = LocalPipeline.build(prepared, [(0, 3)], dtype=torch.bfloat16, precision="q4")
    linears = [m for m in stage.stages[0].modules() if isinstance(m, quant.Int4Linear)]
    assert len(linears) == 3 * 4  # wqkv, wo, w13, w2 per layer stay 4-bit
    assert isinstance(stage.stages[0].lm_head, quant.Int8Linear)  # tied table: one int8 copy
    ref, got = _logits(hf), _stage_logits(stage)
    assert (got - ref).abs().max() < 0.05 * (ref.max() - ref.min())
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.9
    # memory: 4-bit codes + bf16 scale and zero per 32 (0.625 B/param) and an int8 table
    fp32 = LocalPipeline.build(prepared, [(0, 3)], precision="fp32").stages[0].weight_bytes()
    assert stage.stages[0].weight_bytes() < 0.3 * fp32


# -- GPT-OSS with MXFP4 experts -------------------------------------------------------------------
def test_gpt_oss_hf_checkpoint_with_mxfp4_experts(tmp_path: Path) -> None:
    """The openai/gpt-oss layout: `*_blocks` / `*_scales` in the safetensors, experts kept MXFP4."""
    hf = tiny_gpt_oss()
    save_mxfp4_checkpoint(hf, tmp_path)
    prepared = prepare_model(ModelSource.from_path(tmp_path))
    weights = load_stage_weights(prepared, 0, 1, True, False)
    assert isinstance(weights["layers.0.mlp.experts.gate_proj"], quant.Mxfp4Weight)
    pipe = LocalPipeline.build(prepared, [(0, 2), (2, 3)], precision="fp32", expert_precision="mxfp4")
    bank = pipe.stages[0].layers["0"].feed_forward
    assert bank.packed and bank.w13_blocks.dtype == torch.uint8  # experts stay 4-bit in memory
    torch.testing.assert_close(_stage_logits(pipe), _logits(hf), atol=1e-4, rtol=1e-4)


def write_gpt_oss_gguf(path: Path, hf: GptOssForCausalLM) -> None:
    """llama.cpp's gpt-oss tensor names: separate gate/up expert banks (MXFP4) with biases,
    attention sinks, post_attention_norm, a YaRN rope header."""
    cfg = hf.config
    packed = mxfp4_experts(hf)
    sd = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    writer = gguf.GGUFWriter(str(path), arch="gpt-oss")
    _header(writer, cfg)
    writer.add_expert_count(cfg.num_local_experts)
    writer.add_expert_used_count(cfg.num_experts_per_tok)
    writer.add_expert_feed_forward_length(cfg.intermediate_size)
    writer.add_sliding_window(cfg.sliding_window)
    writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    writer.add_rope_scaling_factor(4.0)
    writer.add_rope_scaling_orig_ctx_len(64)
    writer.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", sd["model.norm.weight"])
    writer.add_tensor("output.weight", sd["lm_head.weight"])
    for i in range(cfg.num_hidden_layers):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        for n, g in (("q", "q"), ("k", "k"), ("v", "v"), ("o", "output")):
            writer.add_tensor(b + f"attn_{g}.weight", sd[p + f"self_attn.{n}_proj.weight"])
            writer.add_tensor(b + f"attn_{g}.bias", sd[p + f"self_attn.{n}_proj.bias"])
        writer.add_tensor(b + "attn_sinks.weight", sd[p + "self_attn.sinks"])
        writer.add_tensor(b + "attn_norm.weight", sd[p + "input_layernorm.weight"])
        writer.add_tensor(b + "post_attention_norm.weight", sd[p + "post_attention_layernorm.weight"])
        writer.add_tensor(b + "ffn_gate_inp.weight", sd[p + "mlp.router.weight"])
        writer.add_tensor(b + "ffn_gate_inp.bias", sd[p + "mlp.router.bias"])
        raw, _ = packed[f"{i}.gate_up_proj"]
        for j, n in enumerate(("gate", "up")):  # HF interleaves gate and up rows
            rows = raw[:, j::2]
            writer.add_tensor(
                b + f"ffn_{n}_exps.weight",
                np.ascontiguousarray(rows).reshape(*rows.shape[:2], -1),
                raw_dtype=Q.MXFP4,
            )
            writer.add_tensor(
                b + f"ffn_{n}_exps.bias", sd[p + "mlp.experts.gate_up_proj_bias"][:, j::2].copy()
            )
        raw, _deq = packed[f"{i}.down_proj"]
        writer.add_tensor(b + "ffn_down_exps.weight", raw.reshape(*raw.shape[:2], -1), raw_dtype=Q.MXFP4)
        writer.add_tensor(b + "ffn_down_exps.bias", sd[p + "mlp.experts.down_proj_bias"])
    _finish(writer)


def test_gpt_oss_gguf_with_mxfp4_experts(tmp_path: Path) -> None:
    hf = tiny_gpt_oss()
    path = tmp_path / "tiny-gpt-oss.gguf"
    write_gpt_oss_gguf(path, hf)
    prepared = prepare_model(ModelSource.from_path(path), cache_dir=tmp_path / "cache", tokenizer=False)
    cfg = prepared.config
    assert (cfg.model_type, cfg.n_experts, cfg.sliding_layers, cfg.rope_type) == (
        "gpt_oss",
        4,
        (0, 2),
        "yarn",
    )
    pipe = LocalPipeline.build(prepared, [(0, 1), (1, 2), (2, 3)], precision="fp32", expert_precision="mxfp4")
    torch.testing.assert_close(_stage_logits(pipe), _logits(hf), atol=1e-4, rtol=1e-4)


def test_decode_touches_only_the_selected_experts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hf = tiny_gpt_oss()
    path = tmp_path / "tiny-gpt-oss.gguf"
    write_gpt_oss_gguf(path, hf)
    pipe = LocalPipeline.build(
        prepare_model(ModelSource.from_path(path), cache_dir=tmp_path / "c", tokenizer=False), [(0, 3)]
    )
    pipe.prefill("s", PROMPT)
    touched: list[int] = []
    for layer in pipe.stages[0].layers.values():
        bank = layer.feed_forward
        original = bank._expert
        monkeypatch.setattr(bank, "_expert", lambda e, x, f=original: touched.append(e) or f(e, x))
    pipe.decode(["s"], [5])
    assert len(touched) == 3 * 2  # k = 2 of 4 experts in each of 3 layers


def test_unsupported_block_format_is_refused_naming_the_tensor(tmp_path: Path) -> None:
    path = tmp_path / "q2k.gguf"
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 84), dtype=np.uint8), raw_dtype=Q.Q2_K)
    _finish(writer)
    with pytest.raises(InputError, match=r"tensor token_embd.weight: quantization type .* \(got 'Q2_K'\)"):
        prepare_model(ModelSource.from_path(path), cache_dir=tmp_path / "cache", tokenizer=False)
    assert not (tmp_path / "cache").exists()
