"""Weights that stay quantized in memory, and the linear layers that multiply with them.

Three in-memory forms, each with torch's own weight-only kernel (as gpt-fast's quantize.py):
- `Int4Weight`: 4-bit codes with one scale and one zero per group of 32 inputs,
  w = (q - 8) * scale + zero — `torch.ops.aten._weight_int4pack_mm_for_cpu` on CPU,
  `_weight_int4pack_mm` on CUDA. GGUF Q4_0, Q4_1 and Q4_K are exactly this form (Q4_K's
  super-blocks are 8 groups of 32 with 6-bit scales and mins), so they load without loss but
  for rounding the group scales and zeros to the activation dtype.
- `Int8Weight`: int8 codes with one scale per output row — `_weight_int8pack_mm`. GGUF Q8_0 has
  one scale per 32 inputs, so it is requantized to one scale per row at load (error measured in
  tests/runtime/test_quant.py); 5/6-bit k-quants take the same route.
- `Mxfp4Weight`: GPT-OSS's MXFP4 (e2m1 codes, one power-of-two scale per 32) kept as bytes and
  dequantized on the fly, only for the experts a token selected.
A plain tensor is a dense weight (fp32 / bf16 / fp16).

Rows of one kind concatenate (`cat_rows`), so q/k/v and gate/up fuse into one matmul whatever the
format. `GROUP` is the block size of every GGUF format handled here.

~340 lines: each weight form's layout is defined once, beside its GGUF decoder and the linear
layer whose kernel reads it; split, a layout would be described in two files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

GROUP = 32
_ROWS = 1024  # rows requantized at a time
# e2m1 code -> value (the OCP MX spec's FP4), in the doubled form ggml uses (exponent bias 128)
_MXFP4_DOUBLED = (0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12)


@dataclass(frozen=True, slots=True)
class Int4Weight:
    """[N, K] weight: codes uint8 [N, K] in 0..15; scale and zero fp32 [N, K / GROUP]."""

    codes: Tensor
    scale: Tensor
    zero: Tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.codes.shape)

    def dequantize(self) -> Tensor:
        q = self.codes.float().unflatten(-1, (-1, GROUP)) - 8
        return (q * self.scale[..., None] + self.zero[..., None]).flatten(-2)


@dataclass(frozen=True, slots=True)
class Int8Weight:
    """[N, K] weight: codes int8 [N, K]; scale fp32 [N] (per row, the kernel's form) or
    [N, K / GROUP] (per block: GGUF Q8_0 as stored, requantized per row by `Int8Linear`)."""

    codes: Tensor
    scale: Tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.codes.shape)

    @property
    def per_row(self) -> bool:
        return self.scale.dim() < self.codes.dim()

    def dequantize(self) -> Tensor:
        if self.per_row:
            return self.codes.float() * self.scale[..., None]
        q = self.codes.float().unflatten(-1, (-1, GROUP))
        return (q * self.scale[..., None]).flatten(-2)


@dataclass(frozen=True, slots=True)
class Mxfp4Weight:
    """[..., N, K] weight in GGUF's MXFP4 block layout: `blocks` uint8 [..., N, K/32, 16] (byte j
    of a block holds element j in its low nibble, element j + 16 in its high one) and `exponents`
    uint8 [..., N, K/32] (value = doubled e2m1 * 2^(e - 128))."""

    blocks: Tensor
    exponents: Tensor

    @property
    def shape(self) -> tuple[int, ...]:
        *lead, nb, _ = self.blocks.shape
        return (*lead, nb * GROUP)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        lut = torch.tensor(_MXFP4_DOUBLED, dtype=dtype, device=self.blocks.device)
        codes = torch.cat((self.blocks & 15, self.blocks >> 4), -1).long()  # [..., nb, 32]
        scale = torch.exp2(self.exponents.to(torch.float32) - 128).to(dtype)
        return (lut[codes] * scale[..., None]).flatten(-2)

    def select(self, index: int | Tensor) -> Mxfp4Weight:
        """One expert (or several) along the leading axis."""
        return Mxfp4Weight(self.blocks[index], self.exponents[index])


QuantWeight = Int4Weight | Int8Weight | Mxfp4Weight
Weight = Tensor | QuantWeight


def dequantize(w: Weight) -> Tensor:
    return w.float() if isinstance(w, Tensor) else w.dequantize()


def cat_rows(parts: list[Weight]) -> Weight:
    """Concatenate [..., N_i, K] weights along the output rows (fusing q/k/v, gate/up, or expert
    gate/up banks). Parts of different forms (a k-quant file may mix Q4_K and Q6_K) meet in the
    widest of them."""
    kinds = {type(p) for p in parts}
    if len(kinds) > 1:
        widest = Int8Weight if Int8Weight in kinds and Mxfp4Weight not in kinds else Tensor
        parts = [to_int8(dequantize(p)) if widest is Int8Weight else dequantize(p) for p in parts]
    first = parts[0]
    if isinstance(first, Tensor):
        return torch.cat(parts, -2)  # type: ignore[arg-type]
    rows = {p.per_row for p in parts if isinstance(p, Int8Weight)}
    if len(rows) > 1:  # Q8_0 (block scales) beside Q6_K (row scales)
        parts = [to_int8(dequantize(p)) for p in parts]
        first, rows = parts[0], {True}
    per_row = rows == {True}
    axes = {"codes": -2, "scale": -1 if per_row else -2, "zero": -2}
    axes |= {"blocks": -3, "exponents": -2}
    fields = first.__slots__  # type: ignore[union-attr]
    return type(first)(*(torch.cat([getattr(p, f) for p in parts], axes[f]) for f in fields))


# -- quantizers (from float weights: HF checkpoints served at q4/int8, and requantization) ------
def to_int8(w: Tensor) -> Int8Weight:
    """Symmetric per-row int8 (the form `_weight_int8pack_mm` takes)."""
    if w.dim() == 2 and w.shape[0] > _ROWS:  # row blocks: fp32 temporaries of a vocab-sized table add up
        return _by_row_blocks(w.shape, lambda rows: to_int8(w[rows]))
    w = w.float()
    scale = w.abs().amax(dim=-1).clamp(min=1e-12) / 127
    codes = torch.round(w / scale[..., None]).clamp(-127, 127).to(torch.int8)
    return Int8Weight(codes, scale)


def _requantize_rows(w: Int8Weight) -> Int8Weight:
    """Block-scaled int8 (GGUF Q8_0) -> one scale per row, a block of rows at a time."""
    return _by_row_blocks(
        w.shape, lambda rows: to_int8(Int8Weight(w.codes[rows], w.scale[rows]).dequantize())
    )


def _by_row_blocks(shape: tuple[int, ...], convert: Callable[[slice], Int8Weight]) -> Int8Weight:
    """Per-row int8 of an [N, K] weight built `_ROWS` rows at a time into preallocated codes and
    scales (no list of parts and no concatenated copy: a vocab-sized table exists once)."""
    codes, scale = torch.empty(shape, dtype=torch.int8), torch.empty(shape[0])
    for i in range(0, shape[0], _ROWS):
        part = convert(slice(i, i + _ROWS))
        codes[i : i + _ROWS], scale[i : i + _ROWS] = part.codes, part.scale
    return Int8Weight(codes, scale)


def to_int4(w: Tensor) -> Int4Weight:
    """Asymmetric 4-bit per group of 32 (gpt-fast's `group_quantize_tensor`, group 32)."""
    g = w.float().unflatten(-1, (-1, GROUP))
    lo, hi = g.amin(-1), g.amax(-1)
    scale = ((hi - lo) / 15).clamp(min=1e-12)
    codes = torch.round((g - lo[..., None]) / scale[..., None]).clamp(0, 15).to(torch.uint8).flatten(-2)
    return Int4Weight(codes, scale, lo + 8 * scale)


# -- GGUF blocks -> these forms (numpy in, torch out; `raw` is uint8 [N, bytes per row]) --------
def _f16(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.float16).astype(np.float32)[..., 0]


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """[.., 16] bytes -> [.., 32] codes: low nibbles are elements 0..15, high ones 16..31."""
    return np.concatenate((qs & 15, qs >> 4), axis=-1)


def _int4(codes: np.ndarray, scale: np.ndarray, zero: np.ndarray, n: int) -> Int4Weight:
    return Int4Weight(
        torch.from_numpy(np.ascontiguousarray(codes.reshape(n, -1))),
        torch.from_numpy(np.ascontiguousarray(scale.reshape(n, -1), dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(zero.reshape(n, -1), dtype=np.float32)),
    )


def from_q4_0(raw: np.ndarray) -> Int4Weight:
    """Q4_0: per 32, d (f16) and 16 bytes of codes; w = d * (q - 8)."""
    n = raw.shape[0]
    b = raw.reshape(n, -1, 18)
    d = _f16(b[..., 0:2])
    return _int4(_nibbles(b[..., 2:]), d, np.zeros_like(d), n)


def from_q4_1(raw: np.ndarray) -> Int4Weight:
    """Q4_1: per 32, d and m (f16) and 16 bytes of codes; w = d * q + m = (q - 8) d + (m + 8 d)."""
    n = raw.shape[0]
    b = raw.reshape(n, -1, 20)
    d, m = _f16(b[..., 0:2]), _f16(b[..., 2:4])
    return _int4(_nibbles(b[..., 4:]), d, m + 8 * d, n)


def from_q4_k(raw: np.ndarray) -> Int4Weight:
    """Q4_K: super-blocks of 256 = 8 groups of 32 with 6-bit scale sc and min m each;
    w = d sc q - dmin m, i.e. scale d sc and zero 8 d sc - dmin m per group."""
    from gguf.quants import Q4_K

    n = raw.shape[0]
    b = raw.reshape(-1, 144)
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    sc, mn = Q4_K.get_scale_min(np.ascontiguousarray(b[:, 4:16]))
    scale = d[:, None] * sc.astype(np.float32)
    zero = 8 * scale - dmin[:, None] * mn.astype(np.float32)
    qs = b[:, 16:].reshape(-1, 4, 32)  # 4 chunks of 64: low nibbles group 2c, high group 2c+1
    codes = np.stack((qs & 15, qs >> 4), axis=2).reshape(-1, 256)
    return _int4(codes, scale, zero, n)


def from_mxfp4(raw: np.ndarray, shape: tuple[int, ...]) -> Mxfp4Weight:
    """GGUF MXFP4: per 32, one E8M0 exponent byte and 16 bytes of codes. `shape` [..., N, K]."""
    b = raw.reshape(*shape[:-1], shape[-1] // GROUP, 17)
    return Mxfp4Weight(
        torch.from_numpy(np.ascontiguousarray(b[..., 1:])), torch.from_numpy(np.ascontiguousarray(b[..., 0]))
    )


def mxfp4_from_hf(blocks: Tensor, scales: Tensor) -> Mxfp4Weight:
    """HF GPT-OSS `*_blocks` [..., N, K/32, 16] (byte j: element 2j low, 2j + 1 high) and `*_scales`
    [..., N, K/32] (value = e2m1 * 2^(s - 127), the same exponent byte) -> the GGUF layout."""
    codes = torch.stack((blocks & 15, blocks >> 4), -1).flatten(-2)  # element order
    return Mxfp4Weight((codes[..., :16] | (codes[..., 16:] << 4)).contiguous(), scales.contiguous())


# -- linear layers over these forms ------------------------------------------------------------
def _inner_k_tiles(k: int) -> int:
    return next(t for t in (8, 4, 2, 1) if k % (t * 16) == 0)


class Int4Linear(nn.Module):
    """y = x W^T (+ b) with W in torch's packed int4 layout; runs in `dtype` (bf16 on CPU: the
    int4 CPU kernel is fastest there)."""

    packed: Tensor
    scales_zeros: Tensor
    bias: Tensor | None

    def __init__(self, w: Int4Weight, bias: Tensor | None, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.out_features, self.in_features = w.shape
        self.dtype, on_cuda = dtype, device.type == "cuda"
        self._mm = torch._weight_int4pack_mm if on_cuda else torch._weight_int4pack_mm_for_cpu
        codes = w.codes.to(device=device, dtype=torch.int32)
        if on_cuda:
            packed = torch.ops.aten._convert_weight_to_int4pack(
                (codes[:, ::2] << 4 | codes[:, 1::2]).to(torch.uint8), _inner_k_tiles(self.in_features)
            )
        else:
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
        self.register_buffer("packed", packed)
        sz = torch.stack((w.scale.t(), w.zero.t()), -1).contiguous()  # [K/32, N, 2]
        self.register_buffer("scales_zeros", sz.to(device=device, dtype=dtype))
        self.register_buffer("bias", None if bias is None else bias.to(device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        """x [N, in]; a cast only where the stage's activations are not the kernel's dtype."""
        y = self._mm(x if x.dtype == self.dtype else x.to(self.dtype), self.packed, GROUP, self.scales_zeros)
        if self.bias is not None:
            y = y + self.bias
        return y if y.dtype == x.dtype else y.to(x.dtype)


class Int8Linear(nn.Module):
    """y = x W^T (+ b) with per-row int8 W (`_weight_int8pack_mm`)."""

    codes: Tensor
    scale: Tensor
    bias: Tensor | None

    def __init__(self, w: Int8Weight, bias: Tensor | None, dtype: torch.dtype, device: torch.device):
        super().__init__()
        if not w.per_row:
            w = _requantize_rows(w)
        self.out_features, self.in_features = w.shape
        self.dtype = dtype
        self.register_buffer("codes", w.codes.to(device).contiguous())
        self.register_buffer("scale", w.scale.to(device=device, dtype=dtype))
        self.register_buffer("bias", None if bias is None else bias.to(device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        """x [N, in]."""
        y = torch._weight_int8pack_mm(
            x if x.dtype == self.dtype else x.to(self.dtype), self.codes, self.scale
        )
        if self.bias is not None:
            y = y + self.bias
        return y

    def embed(self, ids: Tensor) -> Tensor:
        """Rows of W as an embedding table (tied embeddings share one int8 copy)."""
        return self.codes[ids].to(self.dtype) * self.scale[ids, None]


class DenseLinear(nn.Linear):
    """nn.Linear over an assigned weight, casting its input to the weight dtype."""

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(
            x if x.dtype == self.weight.dtype else x.to(self.weight.dtype), self.weight, self.bias
        )

    def embed(self, ids: Tensor) -> Tensor:
        return F.embedding(ids, self.weight)


def make_linear(w: Weight, bias: Tensor | None, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """The module for a [N, K] weight in its form; `dtype` is the activation dtype of the stage
    (dense weights are held in it too)."""
    if isinstance(w, Int4Weight):
        if w.shape[1] % GROUP:
            return make_linear(w.dequantize(), bias, dtype, device)
        return Int4Linear(w, bias, torch.bfloat16 if dtype == torch.float32 else dtype, device)
    if isinstance(w, Int8Weight):
        return Int8Linear(w, bias, dtype, device)
    if isinstance(w, Mxfp4Weight):
        raise TypeError("MXFP4 weights belong to expert banks")
    n, k = w.shape
    with torch.device("meta"):
        lin = DenseLinear(k, n, bias=bias is not None)
    lin.weight = nn.Parameter(w.to(device=device, dtype=dtype), requires_grad=False)
    if bias is not None:
        lin.bias = nn.Parameter(bias.to(device=device, dtype=dtype), requires_grad=False)
    return lin


def module_bytes(module: nn.Module) -> int:
    """Bytes of every parameter and buffer a module holds (shared tensors once)."""
    seen: dict[int, int] = {}
    for t in list(module.parameters()) + list(module.buffers()):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())
