"""`DeviceTimes` from a measured profile, scaled to the model being planned.

A profile is measured on one layer shape (`Profile.model`); the planned model may differ (the
method profiles a cut-down model; e2llm's profiler may only build dense Llama-family layers).
The fitted curves are rescaled term by term, each by the quantity that drives it:

- linear terms (prefill b·T, decode b·B): GEMM work per token, scaled by the ratio of *active*
  parameters per layer (planned / profiled);
- prefill c·T² (attention): by the ratio of n_heads·head_dim, with T² replaced by T·(2·ctx - 1)
  where ctx is the planned model's mean keys per query (sliding-window layers attend to fewer);
- decode c·B·C (KV read): by the ratio of KV bytes per token (GQA-aware), with C replaced by the
  planned model's mean KV tokens per layer;
- LM head b·T: by the ratio of vocab·hidden; embedding b·T: by the ratio of hidden·bytes;
- weight reads: a call reads its layer's weights (dense part + the experts its tokens are routed
  to). The difference between the planned and profiled weight bytes of the call is added at the
  profile's measured memory bandwidth. This is how a dense profile times an MoE layer (expert
  bytes grow with the batch) and how a bf16 profile times a 4-bit model. A smaller planned model
  never gets below its own weight read at that bandwidth (nor above the measured time), and the
  profiled shape itself gets exactly the fitted curve.
The fixed per-call cost stays as measured: it belongs to the engine and device, not the shape.

Scaling is refused (InputError naming the profile file and both models) when the planned layer's
active parameters, attention width, KV bytes per token or vocab·hidden differ from the profiled
ones by more than `MAX_SCALE` in either direction: far outside the measured range the fitted
terms no longer describe the device (a tiny layer's time is all call overhead, so its fit holds no
information about GEMM throughput). Profile with the planned model (or a closer one) instead.
"""

from __future__ import annotations

from e2llm.cost.profile_data import Profile
from e2llm.cost.shape import LayerShape
from e2llm.errors import InputError
from e2llm.specs.model_spec import BYTES_PER_PARAM, ModelSpec
from e2llm.specs.units import GB

MAX_SCALE = 32.0


def _head_bytes(m: ModelSpec) -> float:
    return m.vocab * m.hidden * BYTES_PER_PARAM[m.weight_precision]


# What each scaling ratio measures, for the error message.
_RATIO_NAMES = {
    "active": "active params per layer",
    "attn": "attention width (n_heads*head_dim)",
    "kv": "KV bytes per token",
    "head": "LM head size (vocab*hidden)",
    "embed": "embedding row bytes",
}


def _ratios(profiled: ModelSpec, planned: ModelSpec) -> dict[str, float]:
    """planned / profiled for each quantity that scales a fitted term (keys of _RATIO_NAMES)."""

    def row(m: ModelSpec) -> float:
        return m.hidden * BYTES_PER_PARAM[m.weight_precision]

    return {
        "active": planned.layer_active_params / profiled.layer_active_params,
        "attn": (planned.n_heads * planned.head_dim) / (profiled.n_heads * profiled.head_dim),
        "kv": LayerShape.of(planned).kv_bytes_per_token / LayerShape.of(profiled).kv_bytes_per_token,
        "head": (planned.vocab * planned.hidden) / (profiled.vocab * profiled.hidden),
        "embed": row(planned) / row(profiled),
    }


class ProfileTimes:
    """`DeviceTimes` of the device that measured `profile`, running `model` (see module doc)."""

    def __init__(self, profile: Profile, model: ModelSpec):
        self.profile = profile
        self.model = model
        p = profile.model
        r = _ratios(p, model)
        for what, ratio in r.items():
            if not (1 / MAX_SCALE <= ratio <= MAX_SCALE):
                raise InputError(
                    profile.source,
                    f"profile measured on model {p.name!r} cannot time model {model.name!r}: their "
                    f"{_RATIO_NAMES[what]} differ {max(ratio, 1 / ratio):.1f}x (limit {MAX_SCALE:g}x); "
                    f"profile the device with --model {model.name}"
                    + (" or a dense model of similar layer size" if model.is_moe else ""),
                )
        self._r = r
        self._planned, self._profiled = LayerShape.of(model), LayerShape.of(p)
        self._bw = profile.memory_bandwidth_gbs * GB
        self._head_bytes = (_head_bytes(model), _head_bytes(p))

    def _weights(self, tokens: int) -> tuple[float, float]:
        """(planned, profiled) weight bytes read by one layer call over `tokens` tokens."""
        return self._planned.read_bytes(tokens), self._profiled.read_bytes(tokens)

    def _with_weights(self, t: float, planned_bytes: float, profiled_bytes: float) -> float:
        """`t` plus the weight-read difference at the measured bandwidth; a shrinking model never
        goes below its own weight read (or the measured time, if that was already lower)."""
        return max(t + (planned_bytes - profiled_bytes) / self._bw, min(t, planned_bytes / self._bw))

    def layer_prefill_s(self, tokens: int) -> float:
        if tokens <= 0:
            return 0.0
        a, b, c = self.profile.fit.prefill
        ctx = self._planned.prefill_context(tokens)
        t = a + b * tokens * self._r["active"] + c * tokens * (2 * ctx - 1) * self._r["attn"]
        return self._with_weights(t, *self._weights(tokens))

    def layer_decode_s(self, batch: int, context: int) -> float:
        if batch <= 0:
            return 0.0
        a, b, c = self.profile.fit.decode
        kv = self._planned.kv_tokens(max(context, 1))
        t = a + b * batch * self._r["active"] + c * batch * kv * self._r["kv"]
        return self._with_weights(t, *self._weights(batch))

    def head_s(self, tokens: int) -> float:
        if tokens <= 0:
            return 0.0
        a, b = self.profile.fit.head
        t = a + b * tokens * self._r["head"]
        return self._with_weights(t, *self._head_bytes)

    def embed_s(self, tokens: int) -> float:
        """Fitted embedding curve if the profile has one, else a gather of `tokens` rows (read
        and write) at the measured memory bandwidth."""
        if tokens <= 0:
            return 0.0
        if self.profile.fit.embed is not None:
            a, b = self.profile.fit.embed
            return a + b * tokens * self._r["embed"]
        row = self.model.hidden * BYTES_PER_PARAM[self.model.weight_precision]
        return 2.0 * tokens * row / self._bw
