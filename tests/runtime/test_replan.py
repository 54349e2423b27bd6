"""Re-planning after a stage worker is killed for real, and taking the device back.

The served plan is made by the e2llm planner on three emulated devices with the method's roles
(`mixed=False`: the test is about PREFILL/DECODER hand-off and migration; two PREFILL replicas,
one DECODER) and embeds its cluster, model spec and planner parameters, so the re-plan keeps
them. While greedy streams run, the process of PREFILL replica 1 (device cpu1) is killed. Every
stream must complete with its served-alone text (those on cpu1 migrate); within a bound
`/health` shows plan generation 1 without cpu1, and new requests are served by it.
`POST /admin/replan` (behind the API key) then takes cpu1 back. The server's log shows the loss,
the re-plans, the switches and the retirement with their numbers.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_device_loss import PROMPTS, _body, _pids, _stream

from e2llm.bench.local_server import serving_plan
from e2llm.cost.build import build_cost_model
from e2llm.plan.plan_json import plan_to_dict
from e2llm.plan.request import PlanRequest
from e2llm.plan.systems import get_system
from e2llm.plan.types import PlannerParams
from e2llm.plan.workload_shape import WorkloadShape
from e2llm.specs.cluster_file import cluster_from_dict
from e2llm.specs.model_catalog import load_model

pytestmark = pytest.mark.slow

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
STREAMS = 6
SWITCH_BOUND_S = 60.0
# fp32 throughout: greedy text is then the same whatever the batch (at q4 the activations are
# bf16, whose logits tie exactly now and then, and a batch-dependent rounding flips the tie)
EXACT_PRECISION = "fp32"
CLUSTER = {
    "devices": [
        {"name": f"cpu{i}", "memory_gb": 2.0, "tflops": 0.1, "mem_bandwidth_gbs": 20} for i in range(3)
    ],
    "network": {"bandwidth_mbps": 10000, "latency_ms": 0.1},
}


def _planned() -> dict[str, Any]:
    cost = build_cost_model(
        load_model("smollm2-135m", EXACT_PRECISION), cluster_from_dict(CLUSTER, "test cluster")
    )
    chat = WorkloadShape(mean_input_tokens=256, mean_output_tokens=128, interval_s=1.0)
    plan = plan_to_dict(get_system("e2llm")(PlanRequest(cost, chat, PlannerParams(mixed=False))))
    assert plan["planner"]["mixed"] is False
    roles = [(r["role"], [d["name"] for d in r["devices"]]) for r in plan["replicas"]]
    assert roles == [("PREFILL", ["cpu0"]), ("PREFILL", ["cpu1"]), ("DECODER", ["cpu2"])], roles
    return plan


async def _kill_and_replan(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=120, headers=AUTH) as client:
        reference = {}
        for p in PROMPTS:
            reference[p] = (await client.post("/v1/completions", json=_body(p, False))).json()["choices"][0][
                "text"
            ]
        health = (await client.get("/health")).json()
        assert health["plan_generation"] == 0 and health["devices"] == ["cpu0", "cpu1", "cpu2"], health
        started: asyncio.Queue[None] = asyncio.Queue()
        jobs = [
            asyncio.create_task(_stream(client, PROMPTS[i % len(PROMPTS)], started)) for i in range(STREAMS)
        ]
        await asyncio.wait_for(started.get(), 60)  # serving; others still queued for prefill
        for pid in _pids(health, 1):
            os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        served_again = None
        while True:  # requests keep being served while the new plan starts
            r = await client.post("/v1/completions", json=_body(PROMPTS[0], False))
            if r.status_code == 200 and served_again is None:
                assert r.json()["choices"][0]["text"] == reference[PROMPTS[0]]
                served_again = time.monotonic() - t0
            health = (await client.get("/health")).json()
            if health["plan_generation"] == 1 or time.monotonic() - t0 > SWITCH_BOUND_S:
                break
        live = time.monotonic() - t0
        results = await asyncio.wait_for(asyncio.gather(*jobs), 120)
        for i, (text, outcome) in enumerate(results):  # each completed, exactly as served alone
            assert outcome == "length" and text == reference[PROMPTS[i % len(PROMPTS)]], (i, text, outcome)
        assert health["plan_generation"] == 1, health
        assert health["devices"] == ["cpu0", "cpu2"] and health["devices_left_out"] == ["cpu1"], health
        assert health["status"] == "degraded" and health["lost_replicas"] == [], health
        after = await client.post("/v1/completions", json=_body(PROMPTS[1], False))
        assert after.status_code == 200 and after.json()["choices"][0]["text"] == reference[PROMPTS[1]]
        stage_labels = {(s["replica"], s["device"]) for s in health["stages"]}
        assert stage_labels == {(0, "cpu0"), (1, "cpu2")}, health  # served by the new plan's actors

        switch_s = health["last_switch_s"]  # loss -> new plan serving, as the server measured it
        refused = await client.post("/admin/replan", headers={"Authorization": "Bearer wrong"})
        assert refused.status_code == 401
        back = await client.post("/admin/replan", json={})  # a POST must be JSON (no CSRF)
        assert back.status_code == 200 and back.json()["plan_generation"] == 2, back.text
        health = (await client.get("/health")).json()
        assert "cpu1" in health["devices"] and health["status"] == "ok", health
        again = await client.post("/v1/completions", json=_body(PROMPTS[2], False))
        assert again.status_code == 200 and again.json()["choices"][0]["text"] == reference[PROMPTS[2]]
        done = sum(o == "length" for _, o in results)
        return {"served_again_s": served_again, "seen_live_s": live, "switch_s": switch_s, "completed": done}


def test_lost_device_is_replanned_without_restart_and_taken_back(tmp_path: Path) -> None:
    with serving_plan(_planned(), tmp_path, env={"E2LLM_API_KEY": KEY}) as (url, _, log):
        figures = asyncio.run(_kill_and_replan(url))
    print(f"replan figures: {figures}")
    assert figures["completed"] == STREAMS, figures
    # The console tells the story, with its numbers.
    text = log.read_text()
    for line in (
        r"WARNING +e2llm\.runtime\.fleet: replica 1 \(devices cpu1\) lost: .*; \d+ requests",
        r"re-planning without devices \['cpu1'\]",
        r"switched to plan generation 1: \d+ replicas on devices cpu0,cpu2 \(left out: cpu1\)",
        r"retired \d+ replicas of the plan before generation 1 \(\d+ requests",
        r"switched to plan generation 2: \d+ replicas on devices .*cpu1.* \(left out: none\)",
    ):
        assert re.search(line, text), (line, text[-3000:])
