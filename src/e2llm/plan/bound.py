"""An upper bound on the request rate any plan can sustain: a fluid relaxation, solved as an LP.

For a cluster, a model and a workload shape, no plan the planner can express (any grouping, any
layer split, PREFILL / DECODER / MIXED roles, any decode concurrency up to 16) predicts a higher
sustainable rate than `rate_bound`. Dividing a plan's predicted rate by it says how good the plan
is, whatever the workload: near 100% the plan is as good as the hardware allows, far below it
the planner (not the cluster) is to blame.

The relaxation lets work be divided among devices like a fluid. Per request, in seconds of a
device's time (t: the busiest device's seconds per request; the bound is 1 / t at its least):
- work: every request needs L layer-passes of prefill (its mean prompt) and L x (mean output)
  layer-passes of decode, and one LM-head row per generated token; device k spends
  `layer_prefill_s(prompt)` per prefill layer-pass, `layer_decode_s(b, ctx) / b` per decode
  layer-pass at a batch of b sequences, and `head_s(b) / b` per head row, and at most t in all.
- memory: device k can work only on layers it holds: h_kb layers held with KV for b sequences
  (per layer: the weights plus b sequences' KV at the planned context, at the smallest per-layer
  KV of the model), the LM head and the embedding held by a share g_k, e_k; together within its
  memory less the runtime overhead. Each request's prefill on k covers at most the layers k
  holds, and its decode at batch b at most the layers held for b sequences.
- links: a request served disaggregated (PREFILL then DECODER, a share of the requests the LP
  chooses; the rest MIXED, both phases where the layers are) ships its prompt's KV: each layer's
  KV leaves the device that prefilled it and enters the one that decodes it, over their network
  ports (best link, as `evaluate` models them); each port also works at most t per request.
  With MIXED roles excluded every request is disaggregated.

Every plan's prediction satisfies these constraints (a replica's stages hold whole layers, a
batch of b sequences holds b sequences' KV, a stage's time is at least its compute), so the LP's
optimum is an upper bound. What it ignores, and why the bound is not reached: whole layers and
whole devices per replica (the fluid splits a layer across devices and balances every stage
perfectly), the pipeline hops between stages, the embedding's compute, the per-request speed
floor per request (it holds on average only), the load needed to fill a batch of b sequences, the
pair-level limit of a hand-off over the actual link between two devices (ports only), and
queueing (a plan that sustains the bound's rate has no headroom).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import coo_matrix

from e2llm.cost.model import RUNTIME_OVERHEAD_BYTES, CostModel
from e2llm.plan.evaluate import MAX_CONCURRENCY, planned_context, port_link
from e2llm.plan.workload_shape import WorkloadShape


class _Vars:
    """Column indices of the LP's variables."""

    def __init__(self) -> None:
        self.n = 0

    def block(self, *shape: int) -> np.ndarray:
        size = math.prod(shape)
        out = np.arange(self.n, self.n + size).reshape(shape)
        self.n += size
        return out


def rate_bound(cost: CostModel, shape: WorkloadShape, *, mixed: bool = True) -> float:
    """Requests per second no plan exceeds (see the module docstring); 0 when the devices
    cannot hold one copy of the model. Pure; ~0.1 CPU-s for 64 devices, ~2 for 256."""
    m = cost.model
    names = cost.cluster.names
    n, n_b, n_l = len(names), MAX_CONCURRENCY, m.n_layers
    prompt = max(1, round(shape.mean_input_tokens))
    ctx = planned_context(cost, shape)
    decode_ctx = max(1, round(shape.mean_input_tokens + shape.mean_output_tokens / 2))
    out = shape.mean_output_tokens
    batches = np.arange(1, n_b + 1)
    kv_min = min(m.kv_bytes_per_token(i) * m.kv_tokens(i, ctx) for i in range(n_l))
    handoff_layer = cost.kv_bytes(0, n_l, prompt) / n_l  # KV one prompt hands off, per layer
    head_bytes = cost.weight_bytes(0, 0, lm_head=True)
    emb_bytes = cost.weight_bytes(0, 0, embedding=True)

    tp = np.array([cost.times[k].layer_prefill_s(prompt) for k in names])
    td = np.array([[cost.times[k].layer_decode_s(int(b), decode_ctx) / b for b in batches] for k in names])
    port = np.array([port_link(cost, k).bandwidth_mbps * 1e6 / 8 for k in names])
    free = np.array([max(0.0, d.memory_bytes - RUNTIME_OVERHEAD_BYTES) for d in cost.cluster.devices])

    # A decode step of a replica of S stages batches at most ceil(16 / S) sequences per stage
    # (`evaluate`): a device that cannot hold the whole model alone is in a replica of at least
    # S_min(k) stages, the fewest devices with it whose memory holds one copy.
    one_copy = cost.weight_bytes(0, n_l, embedding=True, lm_head=True) + n_l * kv_min
    max_batch = []
    for k in range(n):
        held, stages = free[k], 1
        for other in sorted(np.delete(free, k), reverse=True):
            if held >= one_copy:
                break
            held, stages = held + other, stages + 1
        max_batch.append(math.ceil(n_b / stages))
    th = np.array(  # LM head per row, at the best batch the device runs
        [
            min(cost.times[k].head_s(b) / b for b in range(1, mb + 1))
            for k, mb in zip(names, max_batch, strict=True)
        ]
    )

    v = _Vars()
    t = v.block(1)[0]
    h = v.block(n, n_b)  # layers held with KV for b sequences
    up_d, ud_d = v.block(n), v.block(n, n_b)  # disaggregated prefill / decode layer-passes
    up_m, ud_m = (v.block(n), v.block(n, n_b)) if mixed else (None, None)
    head, g, e = v.block(n), v.block(n), v.block(n)

    rows: list[tuple[dict[int, float], float]] = []  # A_ub x <= b_ub
    eqs: list[tuple[dict[int, float], float]] = []

    def up(k: int) -> dict[int, float]:
        return {int(up_d[k]): 1.0} | ({int(up_m[k]): 1.0} if up_m is not None else {})

    def ud_of(k: int) -> list[int]:
        return [int(c) for c in ud_d[k]] + ([int(c) for c in ud_m[k]] if ud_m is not None else [])

    # per request: L prefill layer-passes, and out x as many decode ones for each way of serving
    eqs.append(({c: 1.0 for k in range(n) for c in up(k)}, float(n_l)))
    eqs.append(({**{int(c): 1.0 for c in ud_d.ravel()}, **{int(c): -out for c in up_d}}, 0.0))
    if up_m is not None and ud_m is not None:
        eqs.append(({**{int(c): 1.0 for c in ud_m.ravel()}, **{int(c): -out for c in up_m}}, 0.0))
    eqs.append(({int(c): 1.0 for c in head}, 1.0 + out))  # a head row per generated token
    if shape.min_decode_tok_s > 0:
        # the speed floor, on average over requests: a token's layer steps take <= 1 / floor
        step = {int(c): td[k, b] * (b + 1) for k in range(n) for b in range(n_b) for c in (ud_d[k, b],)}
        if ud_m is not None:
            step |= {int(ud_m[k, b]): td[k, b] * (b + 1) for k in range(n) for b in range(n_b)}
        rows.append((step, out / shape.min_decode_tok_s))
    rows.append(({int(c): -1.0 for c in e}, -1.0))  # someone holds the embedding
    for k in range(n):
        rows.append(({**up(k), **{int(c): -1.0 for c in h[k]}}, 0.0))  # prefill only where held
        for b in range(n_b):
            ud = {int(ud_d[k, b]): 1.0} | ({int(ud_m[k, b]): 1.0} if ud_m is not None else {})
            rows.append(({**ud, int(h[k, b]): -out}, 0.0))  # decode only where held for b
        busy = {c: tp[k] for c in up(k)}
        for b in range(n_b):
            busy[int(ud_d[k, b])] = td[k, b]
            if ud_m is not None:
                busy[int(ud_m[k, b])] = td[k, b]
        rows.append(({**busy, int(head[k]): th[k], t: -1.0}, 0.0))  # device time
        rows.append(({int(up_d[k]): handoff_layer / port[k], t: -1.0}, 0.0))  # KV out of its port
        rows.append(({**{int(c): handoff_layer / (out * port[k]) for c in ud_d[k]}, t: -1.0}, 0.0))  # ... in
        mem = {int(h[k, b]): m.layer_weight_bytes + (b + 1) * kv_min for b in range(n_b)}
        rows.append(({**mem, int(g[k]): head_bytes, int(e[k]): emb_bytes}, float(free[k])))
        rows.append(({int(c): 1.0 for c in h[k]}, float(n_l)))  # at most the whole model
        rows.append(({int(head[k]): 1.0, int(g[k]): -(1.0 + out)}, 0.0))  # head rows where held ...
        # ... beside a layer of the same token (the head sits on a replica's last stage)
        rows.append(({int(head[k]): 1.0, **{c: -1.0 for c in up(k)}, **{c: -1.0 for c in ud_of(k)}}, 0.0))

    bounds: list[tuple[float, float | None]] = [(0.0, None)] * v.n
    for c in (*g, *e):
        bounds[int(c)] = (0.0, 1.0)
    for k in range(n):
        for c in h[k, max_batch[k] :]:
            bounds[int(c)] = (0.0, 0.0)  # batches it never runs
    cost_vec = np.zeros(v.n)
    cost_vec[t] = 1.0
    a_ub, b_ub = _sparse(rows, v.n)
    a_eq, b_eq = _sparse(eqs, v.n)
    res = linprog(cost_vec, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=b_eq, bounds=bounds, method="highs")
    if res.status != 0 or res.x[t] <= 0:
        return 0.0  # infeasible: the devices cannot hold one copy of the model
    return 1.0 / float(res.x[t])


def _sparse(rows: list[tuple[dict[int, float], float]], n_vars: int) -> tuple[coo_matrix, np.ndarray]:
    r, c, data = [], [], []
    for i, (coefs, _) in enumerate(rows):
        for j, x in coefs.items():
            r.append(i)
            c.append(j)
            data.append(x)
    return coo_matrix((data, (r, c)), shape=(len(rows), n_vars)), np.array([rhs for _, rhs in rows])
