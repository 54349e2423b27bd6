"""An upper bound on the request rate any plan can sustain: a fluid relaxation, solved as LPs.

For a cluster, a model and a workload shape, no plan the planner can express (any grouping, any
layer split, PREFILL / DECODER / MIXED roles, any decode concurrency up to 16; with
`mixed=False` PREFILL / DECODER only) predicts a higher sustainable rate than `rate_bound`.
Dividing a plan's predicted rate by it says how good the plan is, whatever the workload: near
100% the plan is as good as the hardware allows; far below it the planner is to blame, or the
relaxation's slack (docs/planner.md, "What the bound ignores").

The relaxation lets work be divided among devices like a fluid. Its variables are per request
(t: the busiest device's seconds per request; the bound is 1 / t at its least): for every device
and role (PREFILL; DECODER or MIXED at micro-batch b = 1..16) the share of the device in that
role, the layers it holds there, how many of those devices hold an embedding / an LM head, its
prefill layer-passes per request, decode layer-passes per token and LM-head rows. Each
constraint holds for every plan, for the reason given after the dash:
- work: L prefill passes per request and L decode passes per token, one head row per prompt
  and per token — every replica runs all L layers and one head per token.
- one role: a device's shares sum to <= 1 — a device is in at most one replica, with one role,
  and a replica's stages run one micro-batch b.
- replicas: in each role, as many embeddings as LM heads, L x as many layers held as embeddings,
  at most S_max(b) devices per embedding (the S with ceil(16 / S) >= b), each device holding a
  layer — a replica has one embedding (first stage), one head (last), all L layers, S stages
  with b = ceil(c / min(c, S)) <= ceil(16 / S), and every stage holds a layer.
- memory: in each role, layers held x (layer weights + b sequences' KV at the model's smallest
  per-layer KV) + embeddings and heads held <= the role's share of the memory after the runtime
  overhead; and at most N whole layers per device, N the most of any contiguous range that fit
  beside nothing / the embedding / the head / both (a linear cut exact at those four cases),
  capped at L - (S_min - 1) — stages hold whole contiguous ranges with KV for at least b
  sequences, and a device that cannot hold one copy alone has S_min - 1 partners holding a layer
  each; summed over a role's devices, with the model's mean per-layer KV — every replica holds
  the whole model's KV, sliding-window layers and all.
- passes where held: prefill and decode passes on a device at most the layers it holds there, a
  head row beside a pass and on a device holding a head; a MIXED device decodes every token of
  the prompts it prefills — a request's passes on a device are its layers there.
- time: `layer_prefill_s(prompt)` per prefill pass, `(layer_decode_s(b) + hop / N) / b` per decode
  pass (hop: the cheapest hop into a stage, if the device needs a pipeline), `head_s(b) / b` per
  head row, `head_s(1)` per prompt's row, and each port's KV hand-off time (a disaggregated
  prompt's KV leaves the PREFILL device's port and enters the DECODER's, best link): at most t
  per request per device — a stage's time per step is its layers, its head and its incoming hop,
  a replica's steps come at most one per stage time (decode: c tokens per round trip of at least
  m stage times, c <= m b), and a step at b carries b x (its layers) passes.
- speed floor: the token time, all L layers' steps, the cheapest head and embedding and S_min hops,
  is <= 1 / floor; with the other layers on the fastest device at b this caps the layers a
  device may decode at b (into N above); on average over requests too — every replica meets the
  floor, a MIXED one after the share of its time its prompts take (`evaluate`).
- roles in time (the tighter LP): a device's time in a role is at most its share of that role
  times t — a device in one role spends all its time there. This makes t a parameter, so the
  least t is searched from below: the first LP (time shared freely) gives t_0; then LPs at fixed
  t, each either proven infeasible (no plan is that fast: the search moves up) or not; the bound
  is 1 / the largest t proven infeasible, within 1%, in a budget of simplex iterations.

Identical devices form one class (the LPs are symmetric in them, so their optimum has a
symmetric solution): a class of c devices is one device with c times the capacities, which
keeps 256-device clusters of a few device types small. ~1 CPU-s for 64 devices, a few for 256.

~450 lines: one relaxation, its two LPs and the per-device numbers they share.
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
from e2llm.specs.units import GIB

Row = tuple[dict[int, float], float]  # coefficients by column, right-hand side
_PRECISION = 0.01  # the search for the least t stops within 1%, at the t proven too small
_TOLERANCE = 1e-7  # what the bound gives up for the solver's feasibility tolerance
_ITERATIONS = 15_000  # simplex iterations for the tighter LPs; not proven by then counts as feasible


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
    # the most layers it holds beside (nothing, the embedding, the LM head, both), -1: none
    n_pre: np.ndarray  # (n, 4): as PREFILL
    n_dec: np.ndarray  # (n, 4, n_b): as a decoding stage at micro-batch b
    slack: np.ndarray  # (n, n_b): the speed floor's budget (`_floor_budget`) ...
    per_layer: np.ndarray  # (n, n_b): ... and what each layer held takes of it


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
    cannot hold one copy of the model. Pure; ~1 CPU-s for 64 devices, a few for 256."""
    dev, mod = _classes(cost, shape), _model(cost, shape)
    t_relaxed, _ = _solve(dev, mod, mixed, None, 0)  # time shared freely between a device's roles
    if t_relaxed is None or t_relaxed <= 0:
        return 0.0  # infeasible: the devices cannot hold one copy of the model
    # the least t of the tighter relaxation, searched from below (lo is always proven too
    # small) within a budget of solver iterations: where it runs out, lo is still a bound
    lo, step, shown, budget = t_relaxed, _PRECISION, math.inf, _ITERATIONS
    while budget > 0 and shown > lo * (1.0 + _PRECISION):
        t = lo * (1.0 + step) if math.isinf(shown) else math.sqrt(lo * shown)
        result, used = _solve(dev, mod, mixed, t, budget)
        budget -= used
        if result is None:  # no plan is this fast
            lo, step = t, 4.0 * step
        else:  # feasible, or not proven infeasible: the least t is below
            shown = t
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
    # whole layers that fit beside nothing, the embedding, the LM head, both; and every other
    # stage of a replica holds a layer, so at most L - (S - 1) on this one
    emb, lm_head = cost.weight_bytes(0, 0, embedding=True), cost.weight_bytes(0, 0, lm_head=True)
    extras = np.array([0.0, emb, lm_head, emb + lm_head])
    fit = _layers_that_fit(cost, ctx, (free[:, None] - extras[None, :]).ravel(), batches)
    n_mem = np.minimum(fit.reshape(len(names), 4, n_b), n_l + 1 - stages[:, None, None])  # (n, 4, n_b)
    slack, per_layer = _floor_budget(shape.min_decode_tok_s, n_l, step, head + embed, stages, hop_any, runs)
    with np.errstate(divide="ignore", invalid="ignore"):
        floor_cap = np.where(per_layer > 0, np.floor(slack / per_layer), n_l)
    floor_cap = np.where(slack >= 0, np.clip(floor_cap, 0, n_l), 0)
    n_dec = np.where(runs[:, None, :], np.minimum(n_mem, floor_cap[:, None, :]), -1)
    tp = np.array([t.layer_prefill_s(prompt) for t in times])

    # identical devices (same numbers everywhere the LP looks) form one class
    keys: dict[tuple[object, ...], list[int]] = {}
    for k in range(len(names)):
        key = (
            tp[k],
            *step[k],
            *head[k],
            *hop[k],
            port[k],
            free[k],
            *n_mem[k, :, 0],
            *n_dec[k].ravel(),
            *slack[k],
            *per_layer[k],
        )
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
        n_pre=n_mem[first, :, 0],
        n_dec=n_dec[first],
        slack=slack[first],
        per_layer=per_layer[first],
    )


def _solve(
    dev: _Classes, mod: _Model, mixed: bool, t_fixed: float | None, max_iterations: int
) -> tuple[float | None, int]:
    """The least t (busiest device's seconds per request) of the relaxation, or None if
    infeasible. With `t_fixed`, the tighter relaxation at that t (each device's time in a role
    at most its share of the role times t_fixed, and the MIXED floor after its prompts), in at
    most `max_iterations`: None if proven infeasible, else t_fixed. And the iterations used."""
    n, n_b = len(dev.count), MAX_CONCURRENCY
    out, n_l = mod.out, mod.n_layers
    # roles of a device: 0 PREFILL, then DECODER at micro-batch b, then MIXED at b
    n_r = 1 + n_b * (2 if mixed else 1)
    decoder = list(range(1, 1 + n_b))
    mixer = list(range(1 + n_b, n_r))
    prefills = [0, *mixer]
    decodes = [*decoder, *mixer]
    batch = np.concatenate([[1], np.arange(1, n_b + 1), np.arange(1, n_b + 1) if mixed else []]).astype(int)
    # (n, 4, n_r): the most layers a device holds in each role beside (nothing, emb, head, both)
    fits = np.concatenate(
        [dev.n_pre[:, :, None], dev.n_dec, dev.n_dec if mixed else dev.n_dec[:, :, :0]], axis=2
    )

    v = _Vars()
    t = int(v.block(1)[0])
    share = v.block(n, n_r)  # devices of the class in the role
    hold = v.block(n, n_r)  # layers they hold in it
    e, g = v.block(n, n_r), v.block(n, n_r)  # ... of them holding an embedding / an LM head
    # prefill layer-passes per request, decode ones per generated token (well-scaled columns)
    up, ud = v.block(n, n_r), v.block(n, n_r)
    hp, hd = v.block(n, n_r), v.block(n, n_r)  # LM-head rows: the prompt's, each token's

    def cells(x: np.ndarray, roles: Sequence[int], coef: float = 1.0) -> dict[int, float]:
        return {int(x[k, r]): coef for k in range(n) for r in roles}

    eqs: list[Row] = [
        (cells(up, prefills), float(n_l)),  # L prefill passes per request
        ({**cells(ud, decoder), **cells(up, [0], -1.0)}, 0.0),  # as many per token
        (cells(hp, prefills), 1.0),  # the prompt's head row
        (cells(hd, decodes), 1.0),  # a head row per decoded token
    ]
    if mixed:
        eqs.append(({**cells(ud, mixer), **cells(up, mixer, -1.0)}, 0.0))
    rows: list[Row] = []
    for r in range(n_r):  # each replica: one embedding, one LM head, all L layers
        eqs.append(({**cells(e, [r]), **cells(g, [r], -1.0)}, 0.0))
        eqs.append(({**cells(hold, [r]), **cells(e, [r], -float(n_l))}, 0.0))
        # ... and at micro-batch b at most the S stages with ceil(16 / S) >= b
        most = max(s for s in range(1, n_b + 1) if math.ceil(n_b / s) >= batch[r])
        rows.append(({**cells(share, [r]), **cells(e, [r], -float(most))}, 0.0))
    if mod.floor_tok_s > 0:  # the speed floor on average: a token's steps take <= 1 / floor
        floor: dict[int, float] = {}
        for k in range(n):
            for r in decodes:
                floor[int(ud[k, r])] = dev.step_s[k, batch[r] - 1]
                floor[int(hd[k, r])] = dev.head_s[k, batch[r] - 1]
        rows.append((floor, 1.0 / mod.floor_tok_s))
    bounds: list[tuple[float, float | None]] = [(0.0, None)] * v.n
    for r in range(n_r):
        mem_all: dict[int, float] = {}  # every replica holds the whole model's KV
        for k in range(n):
            c, b = dev.count[k], batch[r] - 1
            plain, with_e, with_g, both = fits[k, :, r]
            if plain < 1:  # it never takes this role
                for x in (share, hold, e, g, up, ud, hp, hd):
                    bounds[int(x[k, r])] = (0.0, 0.0)
                continue
            bounds[int(share[k, r])] = (0.0, c)
            busy = {int(up[k, r]): dev.prefill_s[k], int(hp[k, r]): dev.head_s[k, 0]}
            if r:
                busy[int(ud[k, r])] = out * (dev.step_s[k, b] + dev.hop_s[k, b] / plain) / batch[r]
                busy[int(hd[k, r])] = out * dev.head_s[k, b] / batch[r]
            if t_fixed is not None:
                rows.append(
                    ({**{c: x / t_fixed for c, x in busy.items()}, int(share[k, r]): -1.0}, 0.0)
                )  # its share of the time
                if r in mixer:  # the floor after the time its prompts take
                    rows.append(
                        (
                            {
                                int(up[k, r]): dev.prefill_s[k] / t_fixed,
                                int(hold[k, r]): dev.per_layer[k, b],
                                int(share[k, r]): -dev.slack[k, b],
                            },
                            0.0,
                        )
                    )
            # whole layers: fewer beside an embedding or a head (a linear cut valid for each
            # device's four cases: alpha, gamma no more than what each case costs)
            alpha = plain - with_e
            gamma = max(0.0, min(plain - with_g, plain - both - alpha))
            rows.append(
                (
                    {
                        int(hold[k, r]): 1.0,
                        int(share[k, r]): -plain,
                        int(e[k, r]): alpha,
                        int(g[k, r]): gamma,
                    },
                    0.0,
                )
            )
            rows.append(({int(share[k, r]): 1.0, int(hold[k, r]): -1.0}, 0.0))  # a layer each at least
            rows.append(({int(e[k, r]): 1.0, int(share[k, r]): -1.0}, 0.0))  # one embedding each at most
            rows.append(({int(g[k, r]): 1.0, int(share[k, r]): -1.0}, 0.0))
            # memory in units of the device's own (well-scaled rows for the solver)
            unit = 1.0 / dev.free[k]
            extras = {int(e[k, r]): mod.emb_bytes * unit, int(g[k, r]): mod.head_bytes * unit}
            per_layer_bytes = mod.layer_bytes + batch[r] * mod.kv_min
            rows.append(({int(hold[k, r]): per_layer_bytes * unit, **extras, int(share[k, r]): -1.0}, 0.0))
            gib = 1.0 / GIB
            mem_all |= {
                int(hold[k, r]): (mod.layer_bytes + batch[r] * mod.kv_mean) * gib,
                int(e[k, r]): mod.emb_bytes * gib,
                int(g[k, r]): mod.head_bytes * gib,
                int(share[k, r]): -dev.free[k] * gib,
            }
            rows.append(({int(up[k, r]): 1.0, int(hold[k, r]): -1.0}, 0.0))  # passes where held
            rows.append(({int(ud[k, r]): 1.0, int(hold[k, r]): -1.0}, 0.0))
            rows.append(({int(hp[k, r]): 1.0, int(up[k, r]): -1.0}, 0.0))  # a head row beside a pass ...
            rows.append(({int(hd[k, r]): 1.0, int(ud[k, r]): -1.0}, 0.0))
            rows.append(({int(hp[k, r]): 1.0, int(g[k, r]): -1.0}, 0.0))  # ... where a head is held
            rows.append(({int(hd[k, r]): 1.0, int(g[k, r]): -1.0}, 0.0))
            if r == 0:
                bounds[int(ud[k, r])] = bounds[int(hd[k, r])] = (0.0, 0.0)
            elif r in decoder:
                bounds[int(up[k, r])] = bounds[int(hp[k, r])] = (0.0, 0.0)
            else:  # a MIXED stage decodes every token of the prompts it prefills
                eqs.append(({int(ud[k, r]): 1.0, int(up[k, r]): -1.0}, 0.0))
                eqs.append(({int(hd[k, r]): 1.0, int(hp[k, r]): -1.0}, 0.0))
        rows.append((mem_all, 0.0))
    for k in range(n):
        c = dev.count[k]
        rows.append(({int(share[k, r]): 1.0 for r in range(n_r)}, c))  # one role each
        if t_fixed is None:
            busy_all: dict[int, float] = {t: -c}
            for r in range(n_r):
                b = batch[r] - 1
                busy_all |= {int(up[k, r]): dev.prefill_s[k], int(hp[k, r]): dev.head_s[k, 0]}
                if r and fits[k, 0, r] >= 1:
                    busy_all[int(ud[k, r])] = (
                        out * (dev.step_s[k, b] + dev.hop_s[k, b] / fits[k, 0, r]) / batch[r]
                    )
                    busy_all[int(hd[k, r])] = out * dev.head_s[k, b] / batch[r]
            rows.append((busy_all, 0.0))  # device time
        # KV out of the PREFILL ports, into the DECODER ports
        port_s = mod.handoff_layer / dev.port[k]
        into = {int(ud[k, r]): port_s for r in decoder}
        if t_fixed is None:
            rows.append(({int(up[k, 0]): port_s, t: -c}, 0.0))
            rows.append(({**into, t: -c}, 0.0))
        else:
            rows.append(({int(up[k, 0]): port_s / t_fixed, int(share[k, 0]): -1.0}, 0.0))
            rows.append(
                (
                    {
                        **{c: x / t_fixed for c, x in into.items()},
                        **{int(share[k, r]): -1.0 for r in decoder},
                    },
                    0.0,
                )
            )

    cost_vec = np.zeros(v.n)
    if t_fixed is None:
        cost_vec[t] = 1.0
    else:
        bounds[t] = (t_fixed, t_fixed)
    a_ub, b_ub = _sparse(rows, v.n)
    a_eq, b_eq = _sparse(eqs, v.n)
    # dual simplex, deterministic (an iteration cap rather than a time limit), at tight
    # tolerances and, where those end in numerical trouble (it happens), at the default ones
    used = 0
    for tolerance in (1e-9, 1e-7):
        options: dict[str, float] = {
            "primal_feasibility_tolerance": tolerance,
            "dual_feasibility_tolerance": tolerance,
        }
        if t_fixed is not None:
            options["maxiter"] = max(1, max_iterations - used)
        res = linprog(
            cost_vec,
            A_ub=a_ub,
            b_ub=b_ub,
            A_eq=a_eq,
            b_eq=b_eq,
            bounds=bounds,
            method="highs-ds",
            options=options,
        )
        used += res.nit
        if res.status != 4:
            break
    if res.status == 2:
        return None, used  # proven infeasible
    if t_fixed is not None:
        return t_fixed, used  # feasible, or not proven otherwise (the bound stays a bound)
    if res.status != 0:
        raise RuntimeError(f"the upper bound's LP failed: {res.message}")
    return float(res.x[t]), used


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


def _floor_budget(
    floor_tok_s: float,
    n_l: int,
    step: np.ndarray,
    fixed: np.ndarray,
    stages: np.ndarray,
    hop: np.ndarray,
    runs: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(slack, per_layer), each (n, n_b). A replica decoding at micro-batch b meets the floor
    only if floor x its token time <= 1 (a MIXED one: <= 1 - the share of its time its prompts
    take). Its token time is at least its layers' steps, the cheapest head and embedding
    (`fixed`) and, in a pipeline of S stages, S hops of `hop` each; with n layers on device k
    and the other layers on the fastest device at b, 1 - floor x token time <= slack - n x
    per_layer. Without a floor (1, 0)."""
    if floor_tok_s <= 0:
        return np.ones(step.shape), np.zeros(step.shape)
    fastest = np.where(runs, step, np.inf).min(axis=0)  # (n_b,)
    cheapest = np.where(runs, fixed, np.inf).min(axis=0)
    pipeline = np.where(stages > 1, stages, 0)[:, None] * hop[None, :]
    slack = 1.0 - floor_tok_s * (cheapest[None, :] + pipeline + n_l * fastest[None, :])
    return slack, floor_tok_s * (step - fastest[None, :])


def _sparse(rows: list[Row], n_vars: int) -> tuple[coo_matrix, np.ndarray]:
    r, c, data = [], [], []
    for i, (coefs, _) in enumerate(rows):
        for j, x in coefs.items():
            r.append(i)
            c.append(j)
            data.append(x)
    return coo_matrix((data, (r, c)), shape=(len(rows), n_vars)), np.array([rhs for _, rhs in rows])
