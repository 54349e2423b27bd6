"""An upper bound on the request rate any plan can sustain: a fluid relaxation, solved as an LP.

For a cluster, a model and a workload shape, no plan the planner can express (any grouping, any
layer split, PREFILL / DECODER / MIXED roles, any decode concurrency up to 16) predicts a higher
sustainable rate than `rate_bound`. Dividing a plan's predicted rate by it says how good the plan
is, whatever the workload: near 100% the plan is as good as the hardware allows, far below it
the planner (not the cluster) is to blame, or the relaxation's slack (docs/planner.md).

The relaxation lets work be divided among devices like a fluid. Variables are per request, in
device seconds (t: the busiest device's seconds per request; the bound is 1 / t at its least),
layer-passes (one layer over one prompt, or over one sequence's token), LM-head rows and layers
held. Each constraint holds for every plan, because (the sentence after each says why):
- work: a request needs L prefill layer-passes (its mean prompt), L x (mean output) decode
  layer-passes and one LM-head row per generated token (the prompt's at 1 row, each decode
  row at the batch of its step) — every replica runs all L layers and one head per token.
- time: device k spends `layer_prefill_s(prompt)` per prefill pass, `layer_decode_s(b) / b` per
  decode pass at a micro-batch of b sequences, `head_s(b) / b` per head row, and for each decode
  step the cheapest hop into it, and at most t per request — a stage's time per step is its
  layers, its head and its incoming hop, and a replica's steps come at most one per stage time;
  a step at b carries b x (its layers) passes, so steps >= passes / (b x the most layers it holds).
- memory: h_kb, the layers k holds with KV for b sequences (at the model's smallest per-layer KV),
  plus shares of the LM head and embedding fit in k's memory less the runtime overhead; at most
  one batch per device, h_kb <= N_kb, the most whole layers of any contiguous range that fit with
  b sequences' KV (sum_b h_kb / N_kb <= 1) — a device is in one replica, whose stages hold whole
  contiguous ranges with KV for at least their micro-batch; summed over all devices, the layers
  held at b with the model's *mean* per-layer KV fit in all the memory — every replica holds all
  L layers, so its KV is the whole model's, sliding-window layers and all.
- passes where held: prefill on k covers at most the layers it holds, decode at b at most those
  held for b; a head row on k goes with a layer-pass of the same step on k — a request's passes
  on a device are its layers there, and a replica's head sits on its last stage, which holds a layer.
- the speed floor, per request and per device: a replica decoding at b meets the floor only if
  its token time, all L layers' steps plus the cheapest head and embedding and (if it needs more
  than one device) its hops, is <= 1 / floor; with the other layers on the fastest device at b,
  that caps the layers device k may decode at b (N_kb above takes the smaller cap; 0: never), and
  the token time summed over requests is <= out / floor on average (each request meets it).
- links: a request served disaggregated (PREFILL then DECODER, a share of the requests the LP
  chooses; the rest MIXED, both phases where the layers are) ships its prompt's KV: each layer's
  KV leaves the device that prefilled it and enters the one that decodes it, over their network
  ports (best link, as `evaluate` models them); each port also works at most t per request.
  With MIXED roles excluded every request is disaggregated.
- batch: a device that cannot hold the whole model alone is in a replica of at least S stages,
  the fewest devices with it whose memory holds one copy, so its micro-batch is <= ceil(16 / S).

What it ignores, and why the bound is not reached: whole devices per replica (the fluid uses a
device's memory for one replica's layers and its time for another's, and balances every stage
perfectly), the prefill hops and the embedding's compute, that a request's layers run on the devices of one
replica (the fluid may run every head on the device fastest at it), the load needed to fill a
batch, the pair-level limit of a hand-off over the actual link between two devices (ports only),
and queueing (a plan that sustains the bound's rate has no headroom).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import coo_matrix

from e2llm.cost.model import RUNTIME_OVERHEAD_BYTES, CostModel
from e2llm.plan.evaluate import MAX_CONCURRENCY, TOKEN_ID_BYTES, planned_context, port_link
from e2llm.plan.workload_shape import WorkloadShape

Row = tuple[dict[int, float], float]  # coefficients by column, right-hand side
_PRECISION = 0.005  # the search for the least t stops within 0.5%, at the t proven too small
_TOLERANCE = 1e-7  # what the bound gives up for the solver's feasibility tolerance


@dataclass(frozen=True)
class _Classes:
    """The devices, identical ones merged into one class (the LP is symmetric in them, so its
    optimum has a symmetric solution: a class of c devices is one device with c times the
    capacity). Arrays are per class; `(n, n_b)` ones per class and micro-batch 1..16."""

    count: np.ndarray
    prefill_s: np.ndarray  # one prefill layer-pass of the mean prompt
    step_s: np.ndarray  # (n, n_b): one decode step of one layer at micro-batch b
    head_s: np.ndarray  # (n, n_b): the LM head over b rows
    hop_s: np.ndarray  # (n, n_b): the cheapest hop into a decode step (0: it may run alone)
    port: np.ndarray  # bytes/s of its network port
    free: np.ndarray  # bytes after the runtime overhead
    n_pre: np.ndarray  # the most layers it holds as PREFILL
    n_dec: np.ndarray  # (n, n_b): ... as a decoding stage at micro-batch b (0: never)


@dataclass(frozen=True)
class _Model:
    """What the LP needs of the model and workload."""

    n_layers: int
    out: float  # mean output tokens
    floor_tok_s: float
    handoff_layer: float  # KV one prompt hands off, per layer
    layer_bytes: float
    kv_min: float  # the smallest per-layer KV of one sequence at the planned context
    kv_mean: float  # ... the mean
    head_bytes: float
    emb_bytes: float


def rate_bound(cost: CostModel, shape: WorkloadShape, *, mixed: bool = True) -> float:
    """Requests per second no plan exceeds (see the module docstring); 0 when the devices
    cannot hold one copy of the model. Pure; well under a CPU-second for 256 devices."""
    dev, mod = _classes(cost, shape), _model(cost, shape)
    t_relaxed = _solve(dev, mod, mixed, None)  # time shared freely between a device's roles
    if t_relaxed is None or t_relaxed <= 0:
        return 0.0  # infeasible: the devices cannot hold one copy of the model
    # the least t of the tighter relaxation, from below: lo is always proven too small
    lo, grow = t_relaxed, _PRECISION
    hi = lo * (1.0 + grow)
    while _solve(dev, mod, mixed, hi) is None:
        lo, grow = hi, 4.0 * grow
        hi = lo * (1.0 + grow)
    while hi > lo * (1.0 + _PRECISION):
        mid = math.sqrt(lo * hi)
        if _solve(dev, mod, mixed, mid) is None:
            lo = mid
        else:
            hi = mid
    return 1.0 / (lo * (1.0 - _TOLERANCE))


def _model(cost: CostModel, shape: WorkloadShape) -> _Model:
    m = cost.model
    ctx = planned_context(cost, shape)
    return _Model(
        n_layers=m.n_layers,
        out=shape.mean_output_tokens,
        floor_tok_s=shape.min_decode_tok_s,
        handoff_layer=cost.kv_bytes(0, m.n_layers, max(1, round(shape.mean_input_tokens))) / m.n_layers,
        layer_bytes=m.layer_weight_bytes,
        kv_min=min(m.kv_bytes_per_token(i) * m.kv_tokens(i, ctx) for i in range(m.n_layers)),
        kv_mean=cost.kv_bytes(0, m.n_layers, ctx) / m.n_layers,
        head_bytes=cost.weight_bytes(0, 0, lm_head=True),
        emb_bytes=cost.weight_bytes(0, 0, embedding=True),
    )


def _classes(cost: CostModel, shape: WorkloadShape) -> _Classes:
    cl, n_l, n_b = cost.cluster, cost.model.n_layers, MAX_CONCURRENCY
    names = cl.names
    prompt = max(1, round(shape.mean_input_tokens))
    ctx = planned_context(cost, shape)
    decode_ctx = max(1, round(shape.mean_input_tokens + shape.mean_output_tokens / 2))
    batches = np.arange(1, n_b + 1)
    times = [cost.times[k] for k in names]
    step = np.array([[t.layer_decode_s(int(b), decode_ctx) for b in batches] for t in times])
    head = np.array([[t.head_s(int(b)) for b in batches] for t in times])
    embed = np.array([[t.embed_s(int(b)) for b in batches] for t in times])
    port = np.array([port_link(cost, k).bandwidth_mbps * 1e6 / 8 for k in names])
    free = np.array([max(0.0, d.memory_bytes - RUNTIME_OVERHEAD_BYTES) for d in cl.devices])
    kv_min = _model(cost, shape).kv_min
    stages = _min_stages(free, cost.weight_bytes(0, n_l, embedding=True, lm_head=True) + n_l * kv_min)
    runs = batches[None, :] <= np.ceil(n_b / stages)[:, None]  # (n, n_b): batches it may decode at
    # the cheapest hop into a decode step (a token's ids: less than a hidden state), over the
    # fastest link into the device, if it is in a pipeline at all; and into any device
    lat_in, bw_in = [], []
    for name in names:
        links = [cl.link(o, name) for o in names if o != name] or [cl.default_link]
        lat_in.append(min(link.latency_ms for link in links) / 1e3)
        bw_in.append(max(link.bandwidth_mbps for link in links) * 1e6 / 8)
    ids = TOKEN_ID_BYTES * batches
    hop = np.array([lat + ids / bw for lat, bw in zip(lat_in, bw_in, strict=True)]) * (stages > 1)[:, None]
    hop_any = min(lat_in) + ids / max(bw_in)
    # every other stage of a replica holds a layer: at most L - (S - 1) on this one
    n_mem = np.minimum(_layers_that_fit(cost, ctx, free, batches), n_l + 1 - stages[:, None])
    floor_cap = _layers_at_floor(shape.min_decode_tok_s, step, head + embed, stages, hop_any, runs, n_l)
    n_dec = np.where(runs, np.minimum(n_mem, floor_cap), 0)
    tp = np.array([t.layer_prefill_s(prompt) for t in times])

    # identical devices (same numbers everywhere the LP looks) form one class
    keys: dict[tuple[object, ...], list[int]] = {}
    for k in range(len(names)):
        key = (tp[k], *step[k], *head[k], *hop[k], port[k], free[k], n_mem[k, 0], *n_dec[k])
        keys.setdefault(key, []).append(k)
    first = [ks[0] for ks in keys.values()]
    return _Classes(
        count=np.array([len(ks) for ks in keys.values()], dtype=float),
        prefill_s=tp[first],
        step_s=step[first],
        head_s=head[first],
        hop_s=hop[first],
        port=port[first],
        free=free[first],
        n_pre=n_mem[first, 0],
        n_dec=n_dec[first],
    )


def _solve(dev: _Classes, mod: _Model, mixed: bool, t_fixed: float | None) -> float | None:
    """The least t (busiest device's seconds per request) of the relaxation, or None if
    infeasible. With `t_fixed`, whether the tighter relaxation is feasible at that t (returned):
    each device's time in a role at most its share of the role times t_fixed."""
    n, n_b = len(dev.count), MAX_CONCURRENCY
    out, n_l = mod.out, mod.n_layers
    # roles of a device: 0 PREFILL, then DECODER at micro-batch b, then MIXED at b
    n_r = 1 + n_b * (2 if mixed else 1)
    decoder = list(range(1, 1 + n_b))
    mixer = list(range(1 + n_b, n_r))
    prefills = [0, *mixer]
    decodes = [*decoder, *mixer]
    batch = np.concatenate([[1], np.arange(1, n_b + 1), np.arange(1, n_b + 1) if mixed else []]).astype(int)

    v = _Vars()
    t = int(v.block(1)[0])
    share = v.block(n, n_r)  # devices of the class in the role
    hold = v.block(n, n_r)  # layers they hold in it
    up, ud = v.block(n, n_r), v.block(n, n_r)  # prefill / decode layer-passes per request
    hp, hd = v.block(n, n_r), v.block(n, n_r)  # LM-head rows: the prompt's, the tokens'
    g, e = v.block(n), v.block(n)  # LM heads / embeddings held

    def col(x: np.ndarray, idx: Sequence[int], coef: float | np.ndarray = 1.0) -> dict[int, float]:
        cs = np.broadcast_to(coef, (len(idx),))
        return {int(x.ravel()[i]): float(c) for i, c in zip(idx, cs, strict=True)}

    def cells(x: np.ndarray, roles: Sequence[int]) -> list[int]:
        return [k * n_r + r for k in range(n) for r in roles]

    eqs: list[Row] = [
        (col(up, cells(up, prefills)), float(n_l)),  # L prefill passes per request
        ({**col(ud, cells(ud, decoder)), **col(up, cells(up, [0]), -out)}, 0.0),  # out x as many
        (col(hp, cells(hp, prefills)), 1.0),  # the prompt's head row
        (col(hd, cells(hd, decodes)), out),  # a head row per decoded token
    ]
    if mixed:
        eqs.append(({**col(ud, cells(ud, mixer)), **col(up, cells(up, mixer), -out)}, 0.0))
    rows: list[Row] = [({int(c): -1.0 for c in e}, -1.0)]  # someone holds the embedding
    if mod.floor_tok_s > 0:  # the speed floor on average: a token's steps take <= 1 / floor
        floor: dict[int, float] = {}
        for k in range(n):
            for r in decodes:
                floor[int(ud[k, r])] = dev.step_s[k, batch[r] - 1]
                floor[int(hd[k, r])] = dev.head_s[k, batch[r] - 1]
        rows.append((floor, out / mod.floor_tok_s))
    mem_all: dict[int, float] = {}
    for k in range(n):
        c = dev.count[k]
        n_role = np.concatenate([[dev.n_pre[k]], dev.n_dec[k], dev.n_dec[k] if mixed else []])
        busy_all: dict[int, float] = {t: -c}
        for r in range(n_r):
            b = batch[r] - 1
            busy = {int(up[k, r]): dev.prefill_s[k], int(hp[k, r]): dev.head_s[k, 0]}
            if r > 0 and n_role[r] > 0:
                busy[int(ud[k, r])] = (dev.step_s[k, b] + dev.hop_s[k, b] / n_role[r]) / batch[r]
                busy[int(hd[k, r])] = dev.head_s[k, b] / batch[r]
            if t_fixed is None:
                busy_all |= busy
            else:
                rows.append(({**busy, int(share[k, r]): -t_fixed}, 0.0))  # its share of the time
            rows.append(({int(hold[k, r]): 1.0, int(share[k, r]): -n_role[r]}, 0.0))  # whole layers that fit
            rows.append(({int(up[k, r]): 1.0, int(hold[k, r]): -1.0}, 0.0))  # passes where held
            rows.append(({int(ud[k, r]): 1.0, int(hold[k, r]): -out}, 0.0))
            rows.append(({int(hp[k, r]): 1.0, int(up[k, r]): -1.0}, 0.0))  # a head row beside a pass
            rows.append(({int(hd[k, r]): 1.0, int(ud[k, r]): -1.0}, 0.0))
            if r in mixer:  # a MIXED stage decodes every token of the prompts it prefills
                eqs.append(({int(ud[k, r]): 1.0, int(up[k, r]): -out}, 0.0))
                eqs.append(({int(hd[k, r]): 1.0, int(hp[k, r]): -out}, 0.0))
        if t_fixed is None:
            rows.append((busy_all, 0.0))  # device time
        rows.append((col(share, cells(share, range(n_r))[k * n_r : (k + 1) * n_r]), c))  # one role each
        # KV out of the PREFILL ports, into the DECODER ports
        port_s = mod.handoff_layer / dev.port[k]
        budget_out = {int(share[k, 0]): -t_fixed} if t_fixed is not None else {t: -c}
        rows.append(({int(up[k, 0]): port_s, **budget_out}, 0.0))
        into = {int(ud[k, r]): port_s / out for r in decoder}
        budget_in = col(share, [k * n_r + r for r in decoder], -t_fixed) if t_fixed is not None else {t: -c}
        rows.append(({**into, **budget_in}, 0.0))
        extras = {int(g[k]): mod.head_bytes, int(e[k]): mod.emb_bytes}
        mem = {int(hold[k, r]): mod.layer_bytes + batch[r] * mod.kv_min for r in range(n_r)}
        rows.append(({**mem, **extras}, float(c * dev.free[k])))
        mem_all |= {int(hold[k, r]): mod.layer_bytes + batch[r] * mod.kv_mean for r in range(n_r)} | extras
        heads = {**col(hp, [k * n_r + r for r in range(n_r)]), **col(hd, [k * n_r + r for r in range(n_r)])}
        rows.append(({**heads, int(g[k]): -(1.0 + out)}, 0.0))  # head rows where a head is held
    rows.append((mem_all, float((dev.count * dev.free).sum())))

    bounds: list[tuple[float, float | None]] = [(0.0, None)] * v.n
    for k in range(n):
        for x in (g, e):
            bounds[int(x[k])] = (0.0, float(dev.count[k]))
        for r in range(n_r):
            n_role = dev.n_pre[k] if r == 0 else dev.n_dec[k, batch[r] - 1]
            zero = [share, hold, up, ud, hp, hd] if n_role == 0 else []
            zero += [ud, hd] if r == 0 else [up, hp] if r in decoder else []
            for x in zero:
                bounds[int(x[k, r])] = (0.0, 0.0)
    cost_vec = np.zeros(v.n)
    if t_fixed is None:
        cost_vec[t] = 1.0
    else:
        bounds[t] = (t_fixed, t_fixed)
    a_ub, b_ub = _sparse(rows, v.n)
    a_eq, b_eq = _sparse(eqs, v.n)
    res = linprog(cost_vec, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=b_eq, bounds=bounds, method="highs")
    return float(res.x[t]) if res.status == 0 else None


class _Vars:
    """Column indices of the LP's variables."""

    def __init__(self) -> None:
        self.n = 0

    def block(self, *shape: int) -> np.ndarray:
        size = math.prod(shape)
        out = np.arange(self.n, self.n + size).reshape(shape)
        self.n += size
        return out


def _min_stages(free: np.ndarray, one_copy: float) -> np.ndarray:
    """Per device, the fewest devices (it and the largest others) whose memory holds one copy."""
    stages = []
    for k in range(len(free)):
        held, s = free[k], 1
        for other in sorted(np.delete(free, k), reverse=True):
            if held >= one_copy:
                break
            held, s = held + other, s + 1
        stages.append(s)
    return np.array(stages)


def _layers_that_fit(cost: CostModel, ctx: int, free: np.ndarray, batches: np.ndarray) -> np.ndarray:
    """(n, n_b): the most layers of any contiguous range a device holds with KV for b sequences."""
    n_l = cost.model.n_layers
    w = cost.model.layer_weight_bytes
    # the least KV of one sequence over ranges of each length (sliding-window layers hold less)
    kv = np.array(
        [0.0] + [min(cost.kv_bytes(s, s + c, ctx) for s in range(n_l - c + 1)) for c in range(1, n_l + 1)]
    )
    counts = np.arange(n_l + 1)
    need = counts[None, :] * w + batches[:, None] * kv[None, :]  # (n_b, L + 1)
    fits = need[None, :, :] <= free[:, None, None]  # need grows with the count
    return fits.sum(axis=2) - 1


def _layers_at_floor(
    floor_tok_s: float,
    step: np.ndarray,
    fixed: np.ndarray,
    stages: np.ndarray,
    hop: np.ndarray,
    runs: np.ndarray,
    n_l: int,
) -> np.ndarray:
    """(n, n_b): the most layers device k may decode at batch b in a replica meeting the floor:
    its token time is at least k's layers, the other layers on the fastest device at b, the
    cheapest head and embedding (`fixed`) and, in a pipeline of S stages, S hops of `hop` each.
    n_l without a floor."""
    if floor_tok_s <= 0:
        return np.full(step.shape, n_l)
    fastest = np.where(runs, step, np.inf).min(axis=0)  # (n_b,)
    cheapest = np.where(runs, fixed, np.inf).min(axis=0)
    pipeline = np.array([s if s > 1 else 0 for s in stages])[:, None] * hop[None, :]
    spare = 1.0 / floor_tok_s - cheapest[None, :] - pipeline - n_l * fastest[None, :]  # (n, n_b)
    extra = step - fastest[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        most = np.where(extra > 0, np.floor(spare / extra), n_l)
    return np.where(spare >= 0, np.clip(most, 0, n_l), 0).astype(int)


def _sparse(rows: list[Row], n_vars: int) -> tuple[coo_matrix, np.ndarray]:
    r, c, data = [], [], []
    for i, (coefs, _) in enumerate(rows):
        for j, x in coefs.items():
            r.append(i)
            c.append(j)
            data.append(x)
    return coo_matrix((data, (r, c)), shape=(len(rows), n_vars)), np.array([rhs for _, rhs in rows])
