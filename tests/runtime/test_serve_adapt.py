"""Run-time role switching on a live `e2llm serve`: long prompts move a decoder to PREFILL while
requests are served, with no restart and no request lost (~2.5 min on a loaded 2-core box).

Plan: e2llm's for `examples/clusters/local-cpu-4x1.yaml` (four one-device replicas) and a chat
shape (100 in / 100 out), maximum sustainable rate, PREFILL/DECODER roles only (`--mixed off`:
by default it would make all four MIXED, which have no role to switch): two PREFILL and two
DECODER replicas. Then
500-token prompts, one at a time (the served-alone references) and a burst of 8: the prefill
pool's queue passes the policy file's TTFT budget while the decoders idle, and moving one decoder
raises the rate both pools sustain for the recent demand, so the role controller switches it
(stop routing, drain, switch, publish). Every request must complete with exactly its
served-alone greedy tokens; `/health`, `/metrics`, the dashboard's events and the log show the
switch; the stage actors' pids do not change (weights stay loaded).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2llm.bench.local_server import local_server
from e2llm.bench.server_metrics import metric_sum
from e2llm.cli import main

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
MODEL = "smollm2-135m"
PROMPT_TOKENS = 500
TOKENS = 4
BURST = 8
POLICY = "adapt: true\nttft_budget_s: 0.5\nmin_dwell_s: 2\n"
CHAT = "requests: 50\nseed: 1\narrival: {process: fixed, interval_s: 1.0}\n" + (
    "input_tokens: {dist: fixed, value: 100}\noutput_tokens: {dist: fixed, value: 100}\nmin_decode_tok_s: 5\n"
)


def _prompt(k: int) -> list[int]:
    return [1000 + (k * 7919 + i * 104729) % 1000 for i in range(PROMPT_TOKENS)]


def _body(k: int) -> dict[str, Any]:
    return {"model": MODEL, "prompt": _prompt(k), "max_tokens": TOKENS, "temperature": 0, "ignore_eos": True}


async def _complete(client: httpx.AsyncClient, k: int) -> tuple[int, list[str]]:
    r = await client.post("/v1/completions", json=_body(k))
    return r.status_code, [c["text"] for c in r.json().get("choices", [])]


async def _scenario(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        reference = {k: await _complete(client, k) for k in (0, 1)}  # served alone
        pids = sorted(s["pid"] for s in (await client.get("/health")).json()["stages"])
        burst = [asyncio.create_task(_complete(client, i % 2)) for i in range(BURST)]
        health: dict[str, Any] = {}
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not all(t.done() for t in burst):
            health = (await client.get("/health")).json()
            if health["role_switches"]:
                break
            await asyncio.sleep(0.5)
        results = await asyncio.gather(*burst)
        after = (await client.get("/health")).json()
        status = (await client.get("/v1/status")).json()
        metrics = (await client.get("/metrics")).text
    return {
        "reference": reference,
        "results": results,
        "health": health,
        "after": after,
        "pids": pids,
        "status": status,
        "metrics": metrics,
    }


def test_a_burst_of_long_prompts_moves_a_decoder_to_prefill_live(tmp_path: Path) -> None:
    (tmp_path / "chat.yaml").write_text(CHAT)
    (tmp_path / "policy.yaml").write_text(POLICY)
    plan = tmp_path / "plan.json"
    cluster = str(ROOT / "examples/clusters/local-cpu-4x1.yaml")
    argv = [
        "plan",
        cluster,
        "--model",
        MODEL,
        "--workload",
        str(tmp_path / "chat.yaml"),
        "--objective",
        "max_rate",
        "--mixed",
        "off",  # the test is about switching between PREFILL and DECODER
    ]
    assert main([*argv, "--out", str(plan)]) == 0
    roles = sorted(r["role"] for r in json.loads(plan.read_text())["replicas"])
    assert roles == ["DECODER", "DECODER", "PREFILL", "PREFILL"]
    args = [str(plan), "--policy", str(tmp_path / "policy.yaml"), "--drift-threshold", "0"]
    with local_server(args, tmp_path / "serve.log", cwd=ROOT) as server:
        got = asyncio.run(_scenario(server.url))
    for i, result in enumerate(got["results"]):
        assert result == got["reference"][i % 2], (i, result)  # all served, exactly
    after = got["after"]
    assert after["adapt"] is True and after["role_switches"] >= 1
    assert sorted(after["roles"].values()) == ["DECODER", "PREFILL", "PREFILL", "PREFILL"]
    assert sorted(s["pid"] for s in after["stages"]) == got["pids"]  # no actor restarted
    assert metric_sum(got["metrics"], "e2llm_role_switches_total", role="PREFILL") == after["role_switches"]
    events = [e["text"] for e in got["status"]["events"] if e["kind"] == "role_switch"]
    assert any("DECODER -> PREFILL" in t for t in events), events
    assert "DECODER -> PREFILL" in (tmp_path / "serve.log").read_text()  # logged
