"""Fast checks of the serving layer's pure parts (no Ray, no model) and of `e2llm serve` bad input."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from e2llm.cli import main
from e2llm.errors import InputError
from e2llm.plan.types import Plan, Replica, Role, Stage
from e2llm.runtime.batch import DecodeSlots, fits
from e2llm.runtime.cluster import device_resource, torch_threads_per_actor
from e2llm.runtime.completions import max_tokens_for as _max_tokens
from e2llm.runtime.draw import TokenDraw
from e2llm.runtime.generation import Generation, TextStream
from e2llm.runtime.handoff import kv_routes
from e2llm.runtime.loss import ReplicaLost
from e2llm.runtime.metrics import ServingMetrics
from e2llm.runtime.openai_protocol import ApiError
from e2llm.runtime.plans import describe_plan, hand_plan, runnable_plan, split_layers
from e2llm.runtime.replica import ReplicaRunner
from e2llm.runtime.router import NoLiveReplica, Router


class CharTokenizer:
    """One token per character (id = code point): enough to exercise text streaming."""

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i) for i in ids if i != 0)


def _gen(max_tokens: int = 10, stop: Sequence[str] = (), **kw: object) -> Generation:
    return Generation(
        [1, 2, 3], max_tokens, 0.0, 1.0, None, frozenset({0}), TextStream(CharTokenizer(), stop), **kw
    )  # type: ignore[arg-type]


def _drain(gen: Generation) -> tuple[str, str | None]:
    text, finish = "", None
    while not gen.events.empty():
        e = gen.events.get_nowait()
        text += e.text
        finish = e.finish_reason or finish
    return text, finish


# ---- KV hand-off routes -------------------------------------------------------------------------
def _stages(*bounds: int) -> tuple[Stage, ...]:
    return tuple(Stage(f"d{i}", a, b) for i, (a, b) in enumerate(itertools.pairwise(bounds)))


def test_kv_routes_intersect_layer_ranges() -> None:
    routes = kv_routes(_stages(0, 10, 30), _stages(0, 20, 30))
    assert routes == [[(0, 0, 10), (1, 10, 20)], [(1, 20, 30)]]


@pytest.mark.parametrize(
    ("src", "dst"), [((0, 30), (0, 7, 19, 30)), ((0, 3, 5, 30), (0, 30)), ((0, 15, 30), (0, 15, 30))]
)
def test_kv_routes_cover_every_destination_layer_once(src: tuple[int, ...], dst: tuple[int, ...]) -> None:
    d = _stages(*dst)
    for stage, pieces in zip(d, kv_routes(_stages(*src), d), strict=True):
        layers = [layer for _, a, b in pieces for layer in range(a, b)]
        assert layers == list(range(stage.start, stage.end))


# ---- routing ------------------------------------------------------------------------------------
def _runner(rid: int, role: Role, concurrency: int = 4, prefill_tok_s: float | None = None) -> ReplicaRunner:
    replica = Replica(rid, role, _stages(0, 30), concurrency=concurrency, prefill_tok_s=prefill_tok_s)
    return ReplicaRunner(replica, [], ServingMetrics())


def test_jsq_prefill_weighs_outstanding_tokens_by_speed() -> None:
    fast, slow = _runner(0, Role.PREFILL, prefill_tok_s=300.0), _runner(1, Role.PREFILL, prefill_tok_s=100.0)
    router = Router([fast, slow, _runner(2, Role.DECODER)])
    assert router.pick_prefill(100) is fast
    fast.prefill_tokens_outstanding = 400  # (400 + 100) / 300 > 100 / 100
    assert router.pick_prefill(100) is slow


def test_jsq_decoder_by_load_over_concurrency_and_colocated_stays() -> None:
    p, d1, d2 = _runner(0, Role.PREFILL), _runner(1, Role.DECODER, 2), _runner(2, Role.DECODER, 2)
    router = Router([p, d1, d2])
    assert router.pick_decoder(p) is d1  # tie on load: lower id
    d1.slots.admitted.append(_gen())
    assert router.pick_decoder(p) is d2
    d2.slots.admitted.append(_gen())
    big = _runner(3, Role.DECODER, 8)
    big.slots.admitted.extend([_gen(), _gen()])  # 2 / 8 beats 1 / 2
    assert Router([p, d1, d2, big]).pick_decoder(p) is big
    c = _runner(3, Role.COLOCATED)
    assert Router([c]).pick_decoder(c) is c


def test_router_needs_both_phases() -> None:
    with pytest.raises(ValueError, match="prefills and one that decodes"):
        Router([_runner(0, Role.PREFILL)])


def test_decoder_admission_respects_concurrency_and_kv_budget() -> None:
    async def run() -> None:
        d = ReplicaRunner(Replica(0, Role.DECODER, _stages(0, 30), concurrency=2), [], ServingMetrics(), 25)
        gens = [_gen(max_tokens=10) for _ in range(3)]  # each reserves 3 + 10 tokens of KV
        joins = [asyncio.create_task(d.join(g, None)) for g in gens]
        await asyncio.sleep(0)
        d.slots.admit()
        assert len(d.slots.admitted) == 1  # a second would need 26 > 25 tokens
        gens[2].cancel()
        d.slots.admit()
        assert await joins[2] is False and len(d.slots.waiting) == 1
        for j in joins[:2]:
            j.cancel()

    asyncio.run(run())


def test_admission_fits_concurrency_and_kv_budget_and_an_empty_decoder_takes_anything() -> None:
    assert fits(2, None, [10], 10_000) and not fits(2, None, [10, 10], 1)
    assert fits(4, 100, [40, 40], 20) and not fits(4, 100, [40, 40], 21)
    assert fits(4, 100, [], 10_000)  # however long, or it could never be served


def test_a_sequence_leaving_frees_its_slot_for_the_next() -> None:
    async def run() -> None:
        slots = DecodeSlots(concurrency=1, kv_budget_tokens=None)
        first, second = _gen(), _gen()
        admitted = [slots.queue(first), slots.queue(second)]
        slots.admit()
        assert admitted[0].result() is True and not admitted[1].done()
        left = slots.enter(first)
        assert slots.step_batch() == ([first], [])
        first.add_token(0)  # EOS: done
        assert slots.step_batch() == ([], [first]) and left.done()
        slots.admit()
        assert admitted[1].result() is True and slots.admitted == [second]

    asyncio.run(run())


def test_release_gives_a_prefill_hold_back_exactly_once() -> None:
    from e2llm.runtime.replica import HELD_KV_PER_STAGE

    async def run() -> None:
        p = _runner(0, Role.PREFILL)
        assert p._kv_held is not None
        for _ in range(HELD_KV_PER_STAGE - 1):
            await p._kv_held.acquire()
        gen = _gen()
        gen.cancel()
        assert await p.prefill(gen) is None  # left while queued: nothing ran
        assert p._kv_held.locked()  # ... but it holds the last hold until released
        p.release(gen)
        p.release(gen)  # every exit path may call it: the second call is a no-op
        await p._kv_held.acquire()
        assert p._kv_held.locked()

    asyncio.run(run())


# ---- generation: EOS, max_tokens, stop strings -------------------------------------------------
def test_generation_finishes_on_length_eos_and_stop() -> None:
    g = _gen(max_tokens=3)
    for ch in "abc":
        g.add_token(ord(ch))
    assert _drain(g) == ("abc", "length")

    g = _gen()
    g.add_token(ord("h"))
    g.add_token(0)  # EOS
    assert _drain(g) == ("h", "stop") and g.done

    g = _gen(stop=["lo w"])
    for ch in "hello world":
        g.add_token(ord(ch))
        if g.done:
            break
    assert _drain(g) == ("hel", "stop")


def test_generation_sampling_bans_eos_until_min_tokens() -> None:
    g = _gen(min_tokens=2)
    assert g.draw().ban_eos is True
    g.add_token(ord("a"))
    g.add_token(ord("b"))
    assert g.draw() == TokenDraw(0.0, 1.0, None, 2, False)


# ---- plans ----------------------------------------------------------------------------------------
def _plan(*replicas: Replica) -> Plan:
    return Plan("t", "m", 0.0, "bottleneck_s", replicas)


def test_runnable_plan_moves_embedding_and_head_to_the_ends_and_skips_empty_stages() -> None:
    stages = (Stage("a", 0, 0, embedding=True), Stage("b", 0, 12), Stage("c", 12, 30, embedding=True))
    plan = runnable_plan(_plan(Replica(0, Role.COLOCATED, stages)), 30)
    (b, c) = plan.replicas[0].stages
    assert (b.device, b.embedding, b.lm_head, c.embedding, c.lm_head) == ("b", True, False, False, True)


@pytest.mark.parametrize("bounds", [(0, 10, 29), (0, 12, 12, 31), (1, 30), (0, 20, 10, 30)])
def test_runnable_plan_rejects_ranges_that_do_not_tile_the_model(bounds: tuple[int, ...]) -> None:
    stages = tuple(Stage(f"d{i}", a, b) for i, (a, b) in enumerate(itertools.pairwise(bounds)))
    with pytest.raises(InputError, match="replicas\\[0\\]"):
        runnable_plan(_plan(Replica(0, Role.PREFILL, stages)), 30)


def test_hand_plan_is_prefill_plus_decoder_and_described() -> None:
    plan = hand_plan(["c0", "c1", "c2", "c3"], 30, "smollm2-135m")
    assert [r.role for r in plan.replicas] == [Role.PREFILL, Role.DECODER]
    assert runnable_plan(plan, 30) == plan
    assert "c2[0,15)+emb -> c3[15,30)+head" in describe_plan(plan)
    assert split_layers(30, 4) == [(0, 8), (8, 16), (16, 23), (23, 30)]


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parents[2] / "examples" / "plans").glob("*.json")), ids=lambda p: p.name
)
def test_example_plans_load_and_run_the_built_in_model(path: Path) -> None:
    from e2llm.plan.plan_json import load_plan

    plan = load_plan(path)
    runnable_plan(plan, 30, str(path))  # layers tile the model: `e2llm serve` takes it
    assert plan.model == "smollm2-135m"


def test_cluster_helpers() -> None:
    assert device_resource("jetson-1") == "device:jetson-1"
    assert torch_threads_per_actor(4, cores=2) == 1
    assert torch_threads_per_actor(2, cores=16) == 8


def test_join_hint_names_the_missing_setting() -> None:
    from e2llm.runtime.cluster import join_hint

    assert "nothing answers at h:6379" in join_hint("h:6379", False, {})
    no_token = join_hint("h:6379", True, {})
    assert "RAY_AUTH_MODE=token" in no_token and "RAY_AUTH_TOKEN_PATH" in no_token
    wrong = join_hint("h:6379", True, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": "/etc/tok"})
    assert "/etc/tok holds the cluster's token" in wrong
    inline = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "x"}
    assert "RAY_AUTH_TOKEN holds" in join_hint("h:6379", True, inline)


def test_a_token_file_readable_by_others_is_made_owner_only(tmp_path: Path) -> None:
    from e2llm.runtime.cluster import protect_token_file

    token = tmp_path / "auth_token"
    token.write_text("secret")
    token.chmod(0o644)
    protect_token_file({"RAY_AUTH_TOKEN_PATH": str(token)})
    assert token.stat().st_mode & 0o777 == 0o600
    protect_token_file({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "absent")})  # nothing to do


def test_max_tokens_limits() -> None:
    assert _max_tokens(None, 100, 8192) == 8092
    assert _max_tokens(50, 8180, 8192) == 12
    for bad, prompt in ((0, 10), (-1, 10), (5, 8192)):
        with pytest.raises(ApiError) as err:
            _max_tokens(bad, prompt, 8192)
        assert err.value.status == 400


# ---- `e2llm serve` bad input: exit 2, one line --------------------------------------------------
@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["missing-plan.json"], "file not found"),
        (["{plan}", "--port", "0"], "--port"),
        (["{plan}", "--threads", "0"], "--threads"),
        (["{bad}"], "malformed JSON"),
        (["{empty}"], "at least one replica"),
        (["{other}"], "has no local weights"),
        (["{plan}", "--model", "/nonexistent/model.gguf"], "--model"),
        (["{plan}", "--max-body-bytes", "0"], "--max-body-bytes"),
        (["{plan}", "--max-inflight", "-1"], "--max-inflight"),
        (["{plan}", "--header-timeout", "0"], "--header-timeout"),
        (["{plan}", "--body-timeout", "nan"], "--body-timeout"),
    ],
)
def test_serve_bad_input_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], expect: str
) -> None:
    plan = tmp_path / "plan.json"
    replica = {"id": 0, "role": "COLOCATED", "devices": [{"name": "cpu0", "layers": [0, 30]}]}
    plan.write_text(
        json.dumps({"system": "t", "model": "smollm2-135m", "objective": 0, "replicas": [replica]})
    )
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"system": "t", "model": "smollm2-135m", "objective": 0, "replicas": []}))
    other = tmp_path / "other.json"
    other.write_text(plan.read_text().replace("smollm2-135m", "llama-3.1-8b"))
    argv = ["serve", *[a.format(plan=plan, bad=bad, empty=empty, other=other) for a in args]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expect in err and "Traceback" not in err


# ---- sampling on the LM-head stage -----------------------------------------------------------
def test_pick_tokens_greedy_banned_eos_and_seeded_rows_independent_of_batch() -> None:
    import torch

    from e2llm.runtime.sampling import pick_tokens

    def draw(t: float, p: float, seed: int | None, step: int, ban: bool) -> TokenDraw:
        return TokenDraw(t, p, seed, step, ban)

    logits = torch.tensor([[0.0, 5.0, 1.0, 0.5], [3.0, 0.0, 1.0, 0.5]])
    assert pick_tokens(logits, [draw(0.0, 1.0, None, 0, False)] * 2, eos_ids=[1]).tokens == (1, 0)
    assert pick_tokens(logits[:1], [draw(0.0, 1.0, None, 0, True)], eos_ids=[1]).tokens == (2,)  # EOS banned
    flat = torch.zeros(1, 1000)
    alone = pick_tokens(flat, [draw(1.0, 1.0, 42, 3, False)], eos_ids=[]).tokens
    batched = pick_tokens(
        flat.repeat(3, 1),
        [draw(1.0, 1.0, 7, 0, False), draw(1.0, 1.0, 42, 3, False), draw(0.5, 0.9, 1, 1, False)],
        eos_ids=[],
    ).tokens
    assert batched[1] == alone[0]  # same (seed, step): same draw, wherever the row sits
    steps = {pick_tokens(flat, [draw(1.0, 1.0, 42, s, False)], eos_ids=[]).tokens[0] for s in range(8)}
    assert len(steps) > 1  # the step advances the stream


def test_split_batch_into_at_most_one_micro_batch_per_stage() -> None:
    from e2llm.runtime.pipeline import split_batch

    gens = [_gen() for _ in range(5)]
    assert [len(g) for g in split_batch(gens, 2)] == [3, 2]
    assert [len(g) for g in split_batch(gens[:1], 4)] == [1]
    assert [g for group in split_batch(gens, 3) for g in group] == gens  # order kept, nobody lost


def test_default_serve_plan_has_a_prefill_and_a_decoder_replica() -> None:
    from e2llm.cli.serve_cmd import _plan_cluster

    plan = runnable_plan(_plan_cluster(None, "smollm2-135m", "e2llm"), 30)
    roles = {r.role for r in plan.replicas}
    assert {Role.PREFILL, Role.DECODER} <= roles
    assert plan.params is not None and plan.params.mixed  # MIXED allowed by default (none pays here)
    pd = _plan_cluster(None, "smollm2-135m", "e2llm", mixed=False)  # `e2llm serve --mixed off`
    assert pd.params is not None and not pd.params.mixed
    assert {r.role for r in pd.replicas} == {Role.PREFILL, Role.DECODER}


def test_prefill_replica_holds_a_bounded_number_of_prefilled_sequences() -> None:
    from e2llm.runtime.replica import HELD_KV_PER_STAGE

    async def run() -> None:
        p = _runner(0, Role.PREFILL)  # one stage, no actors: nothing may reach the prefill call
        assert p._kv_held is not None
        for _ in range(HELD_KV_PER_STAGE):
            await p._kv_held.acquire()  # as many prefilled sequences as it may hold
        gen = _gen()
        waiting = asyncio.create_task(p.prefill(gen))
        await asyncio.sleep(0.05)
        assert p.prefill_waiting == 1 and not waiting.done()  # back-pressure: queued, not run
        gen.cancel()
        p._kv_held.release()
        assert await waiting is None  # left while queued
        p.release(gen)  # what every exit path does: gives the hold back
        assert not p._kv_held.locked()
        assert p.prefill_waiting == 0 and p.prefill_tokens_outstanding == 0
        assert _runner(1, Role.COLOCATED)._kv_held is None

    asyncio.run(run())


# ---- replica loss -------------------------------------------------------------------------------
def test_router_skips_lost_replicas_and_says_when_none_is_left() -> None:
    p0, p1 = _runner(0, Role.PREFILL), _runner(1, Role.PREFILL)
    d2, d3 = _runner(2, Role.DECODER), _runner(3, Role.DECODER)
    router = Router([p0, p1, d2, d3])
    p0.mark_lost("test")
    d2.mark_lost("test")
    assert router.pick_prefill(10) is p1 and router.pick_decoder(p1) is d3
    assert router.unavailable_reason() is None
    d3.mark_lost("test")
    assert router.unavailable_reason() == "no live replica can decode"
    with pytest.raises(NoLiveReplica, match="decode"):
        router.pick_decoder(p1)
    p1.mark_lost("test")
    with pytest.raises(NoLiveReplica, match="prefill"):
        router.pick_prefill(10)


def test_lost_decoder_hands_back_every_sequence_it_held() -> None:
    async def scenario() -> None:
        decoder = _runner(1, Role.DECODER, concurrency=1)
        first, queued = _gen(), _gen()
        joins = [asyncio.create_task(decoder.join(g, None)) for g in (first, queued)]
        await asyncio.sleep(0)
        decoder.slots.admit()  # `first` takes the only slot, `queued` waits for one
        await asyncio.sleep(0)
        decoder.mark_lost("actor died")
        for join in joins:
            with pytest.raises(ReplicaLost, match="replica 1 lost: actor died"):
                await join
        assert not decoder.alive and decoder.decode_sequences == 0
        with pytest.raises(ReplicaLost):
            await decoder.join(_gen(), None)  # no new work either

    asyncio.run(scenario())


def test_context_ids_resume_after_the_tokens_generated_so_far() -> None:
    gen = _gen()
    assert gen.context_ids == [1, 2, 3]
    gen.add_token(ord("a"))
    gen.add_token(ord("b"))
    assert gen.context_ids == [1, 2, 3, ord("a"), ord("b")]
    gen.fail("replica lost", 503)
    event = [gen.events.get_nowait() for _ in range(gen.events.qsize())][-1]
    assert (event.finish_reason, event.status, event.error) == ("error", 503, "replica lost")


def test_a_lost_replica_leaves_the_per_replica_metrics() -> None:
    metrics = ServingMetrics()
    lost = ReplicaRunner(Replica(1, Role.DECODER, _stages(0, 30)), [], metrics)
    for label in ("0", "1"):
        metrics.prefill_done(label, 10, 0.1)
        metrics.decode_step(label, 2, 0.01)
        metrics.set_decode_queue(label, 1, 2)
        metrics.set_prefill_queue(label, 3)
    assert 'replica="1"' in metrics.render().decode()
    lost.mark_lost("stage actor died")
    metrics.set_prefill_queue("1", 5)  # late updates from the lost replica's last steps
    metrics.decode_step("1", 3, 0.1)
    text = metrics.render().decode()
    assert 'replica="1"' not in text and 'e2llm_decode_batch_size{replica="0"} 2.0' in text
    assert "e2llm_generated_tokens_total 9.0" in text  # what it generated still counts


def test_a_gone_replica_leaves_every_per_replica_gauge() -> None:
    metrics = ServingMetrics()
    for replica, role in (("1", "DECODER"), ("2", "DECODER")):
        metrics.set_role(replica, role)
        metrics.decode_step(replica, 3, 0.1)
        metrics.set_prefill_queue(replica, 2)
    metrics.set_role("1", "PREFILL", before="DECODER")
    metrics.replica_gone("1")
    metrics.set_role("1", "DECODER", before="PREFILL")  # a late update of the lost one is ignored
    text = metrics.render().decode()
    # what stays is history: the counter of its role switches
    gauges = [x for x in text.splitlines() if 'replica="1"' in x and not x.startswith("e2llm_role_switches")]
    assert gauges == [] and 'e2llm_replica_role{replica="2",role="DECODER"} 1.0' in text
