"""Tiny random-weight models of real architectures for runtime tests (no downloads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize, quantize
from safetensors.torch import save_file
from transformers import GptOssConfig, GptOssForCausalLM


def tiny_gpt_oss(vocab: int = 128) -> GptOssForCausalLM:
    """3 layers, top-2 of 4 experts, sliding window 4 on layers 0 and 2, sinks, YaRN rope."""
    cfg = GptOssConfig(
        num_hidden_layers=3,
        hidden_size=64,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_local_experts=4,
        num_experts_per_tok=2,
        sliding_window=4,
        vocab_size=vocab,
        max_position_embeddings=256,
        initializer_range=0.1,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 4.0,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "truncate": False,
            "original_max_position_embeddings": 64,
        },
    )
    torch.manual_seed(0)
    return GptOssForCausalLM(cfg).eval()


def mxfp4_experts(hf: GptOssForCausalLM) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each layer's experts MXFP4-quantized with gguf's quantizer: name -> (raw blocks [E, N,
    K/32, 17], dequantized [E, N, K]), N x K as rows are outputs; the model is given the
    dequantized values, so it is the exact reference."""
    out = {}
    for i, layer in enumerate(hf.model.layers):
        ex = layer.mlp.experts
        for name, w in (("gate_up_proj", ex.gate_up_proj), ("down_proj", ex.down_proj)):
            rows = w.detach().transpose(1, 2).numpy()  # [E, out, in]
            raw = quantize(np.ascontiguousarray(rows), Q.MXFP4)
            deq = dequantize(raw, Q.MXFP4).reshape(rows.shape)
            with torch.no_grad():
                w.copy_(torch.from_numpy(deq).transpose(1, 2))
            out[f"{i}.{name}"] = (raw.reshape(*rows.shape[:2], -1, 17), deq)
    return out


def save_mxfp4_checkpoint(hf: GptOssForCausalLM, path: Path) -> None:
    """Save `hf` as openai/gpt-oss checkpoints are: experts as MXFP4 `*_blocks` / `*_scales`
    (the model is first given the MXFP4-dequantized expert values, so it stays the reference)."""
    packed = mxfp4_experts(hf)
    hf.save_pretrained(path)
    state = {
        k: v.contiguous()
        for k, v in hf.state_dict().items()
        if not k.endswith((".experts.gate_up_proj", ".experts.down_proj"))
    }
    for key, (raw, _) in packed.items():
        i, name = key.split(".")
        blocks = torch.from_numpy(np.ascontiguousarray(raw[..., 1:]))
        codes = torch.cat((blocks & 15, blocks >> 4), -1)  # GGUF: element j low, j + 16 high
        p = f"model.layers.{i}.mlp.experts.{name}"
        state[p + "_blocks"] = (codes[..., 0::2] | (codes[..., 1::2] << 4)).contiguous()  # HF: 2j, 2j+1
        state[p + "_scales"] = torch.from_numpy(np.ascontiguousarray(raw[..., 0]))
    for f in path.glob("*.safetensors"):
        f.unlink()
    save_file(state, str(path / "model.safetensors"))
