"""The status JSON, the event log and the dashboard's static files, without Ray or a model.

The deployment here is real (router, replica runners, metrics) but its replicas have no stage
actors: the status is built from the runners' live state, the metrics' windows (which these
tests drive the way the serving loop does) and stage rows shaped as `Deployment.stage_stats()`
returns them. The live route, against real stage actors, is checked by the browser test
(`test_dashboard_browser.py`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from e2llm.plan.types import Plan, Replica, Role, Stage
from e2llm.runtime.dashboard import ASSETS, SECURITY_HEADERS
from e2llm.runtime.events import EventKind, EventLog
from e2llm.runtime.metrics import TOKENS_PER_S_WINDOW_S, ServingMetrics
from e2llm.runtime.replica import ReplicaRunner
from e2llm.runtime.server import ServedModel, create_app
from e2llm.runtime.service import Deployment
from e2llm.runtime.status import ReplicaStatus, Status, deployment_status
from e2llm.specs.device import Cluster, Device, Link

ROOT = Path(__file__).resolve().parents[2]
KEY = "status-key"
CLUSTER = Cluster(
    devices=tuple(Device(n, memory_gb=2.0, tflops=1.0, mem_bandwidth_gbs=50.0) for n in ("a", "b", "c", "d")),
    default_link=Link(1000.0, 0.5),
    links={frozenset(("a", "b")): Link(100.0, 5.0)},
)
PLAN = Plan(
    system="e2llm",
    model="tiny",
    objective=0.0,
    objective_kind="bottleneck_s",
    replicas=(
        Replica(
            0,
            Role.PREFILL,
            (Stage("a", 0, 10, embedding=True), Stage("b", 10, 30, lm_head=True)),
            prefill_tok_s=300.0,
            prefill_capacity_tok_s=500.0,
            bottleneck_device="b",
        ),
        Replica(
            1,
            Role.DECODER,
            (Stage("c", 0, 30, embedding=True, lm_head=True),),
            concurrency=4,
            decode_tok_s_per_request=12.0,
            decode_capacity_tok_s=40.0,
            bottleneck_device="c",
        ),
    ),
    unused_devices=("d",),
    cluster=CLUSTER,
)


def _no_replan(plan: Plan, generation: int) -> list[ReplicaRunner]:
    raise AssertionError("a plan without a model spec is never re-planned")


def _deployment(plan: Plan = PLAN) -> Deployment:
    metrics = ServingMetrics()
    return Deployment(plan, [ReplicaRunner(r, [], metrics) for r in plan.replicas], metrics, _no_replan)


ROWS = [  # what the stage actors would report
    {"replica": 0, "label": "0", "device": "a", "kv_bytes": 4096, "sequences": 1},
    {"replica": 0, "label": "0", "device": "b", "kv_bytes": 8192, "sequences": 1},
    {"replica": 1, "label": "1", "device": "c", "kv_bytes": 0, "sequences": 0},
]


@pytest.fixture
def deployment() -> Deployment:
    return _deployment()


def _status(deployment: Deployment, rows: Sequence[Mapping[str, Any]] = ROWS) -> Status:
    """The status as `GET /v1/status` sends it: JSON that validates against the schema."""
    status = deployment_status(deployment, rows, "tiny", time.time() - 5)
    return Status.model_validate_json(status.model_dump_json())


def _served() -> ServedModel:
    return ServedModel(
        "tiny", tokenizer=None, context_len=64, eos_ids=frozenset(), encode_chat=lambda t, m: []
    )


@pytest.fixture
def client(deployment: Deployment) -> Iterator[TestClient]:
    with TestClient(create_app(deployment, _served(), api_key=KEY)) as c:
        yield c


# ---- events ---------------------------------------------------------------------------------
def test_event_log_numbers_events_and_keeps_the_last_ones() -> None:
    log = EventLog(keep=3)
    for i in range(5):
        log.record(EventKind.MIGRATION, f"request {i}")
    assert [(e.id, e.text) for e in log.recent()] == [(3, "request 2"), (4, "request 3"), (5, "request 4")]


def test_record_event_keeps_and_counts_it() -> None:
    metrics = ServingMetrics()
    metrics.record_event(EventKind.DEVICE_LOST, "replica 1 (c) out of service")
    metrics.record_event(EventKind.ROLE_SWITCH, "replica 1: DECODER -> PREFILL")
    assert [e.kind for e in metrics.events.recent()] == [EventKind.DEVICE_LOST, EventKind.ROLE_SWITCH]
    text = metrics.render().decode()
    assert 'e2llm_events_total{kind="device_lost"} 1.0' in text
    assert 'e2llm_events_total{kind="role_switch"} 1.0' in text


# ---- the status -----------------------------------------------------------------------------
def test_status_shows_plan_cluster_and_replicas(deployment: Deployment) -> None:
    s = _status(deployment)
    assert (s.model, s.status, s.plan.system, s.plan.generation) == ("tiny", "ok", "e2llm", 0)
    assert s.uptime_s >= 5
    assert not s.can_replan and s.replan_error  # embeds no model spec: a hand-written plan
    assert [(d.name, d.state) for d in s.cluster.devices] == [
        ("a", "serving"),
        ("b", "serving"),
        ("c", "serving"),
        ("d", "unused"),
    ]
    assert (s.cluster.network.bandwidth_mbps, s.cluster.network.latency_ms) == (1000.0, 0.5)
    assert [(link.a, link.b, link.bandwidth_mbps) for link in s.cluster.network.links] == [("a", "b", 100.0)]
    pre, dec = s.replicas
    assert (pre.role, pre.state, [(st.device, st.start, st.end) for st in pre.stages]) == (
        "PREFILL",
        "serving",
        [("a", 0, 10), ("b", 10, 30)],
    )
    assert [(st.kv_bytes, st.sequences) for st in pre.stages] == [(4096, 1), (8192, 1)]
    assert (dec.role, dec.concurrency, dec.bottleneck_device) == ("DECODER", 4, "c")
    assert pre.prefill_speed.predicted == 300.0 and pre.prefill_throughput.predicted == 500.0
    assert dec.decode_speed.predicted == 12.0 and dec.decode_throughput.predicted == 40.0
    assert pre.prefill_speed.observed is None and dec.decode_speed.observed is None  # no work yet


def test_starting_records_the_plan_in_the_event_log(deployment: Deployment) -> None:
    async def start_and_stop() -> None:
        deployment.start()
        await deployment.stop()

    asyncio.run(start_and_stop())
    events = _status(deployment).events
    assert [e.kind for e in events] == [EventKind.PLAN_STARTED]
    assert "serving plan e2llm: replica 0 PREFILL: a[0,10)+emb -> b[10,30)+head; replica 1" in events[0].text


def test_observed_rates_follow_the_work_done(deployment: Deployment) -> None:
    deployment.metrics.prefill_done("0", 100, 0.5)  # 100 prompt tokens in 0.5 s
    for _ in range(2):  # two steps of a batch of 4, 0.1 s each
        deployment.metrics.decode_step("1", 4, 0.1)
    s = _status(deployment)
    pre, dec = s.replicas
    assert pre.prefill_speed.observed == pytest.approx(200.0)
    assert pre.prefill_throughput.observed == pytest.approx(100 / TOKENS_PER_S_WINDOW_S)
    assert dec.decode_speed.observed == pytest.approx(10.0)  # one token per sequence per 0.1 s step
    assert dec.decode_throughput.observed == pytest.approx(8 / TOKENS_PER_S_WINDOW_S)
    assert (pre.prompt_tokens, dec.generated_tokens) == (100, 8)
    assert s.totals.tokens_per_s == pytest.approx(9 / TOKENS_PER_S_WINDOW_S)  # + the prefill's token


def test_lost_replica_shows_as_lost_and_degrades(deployment: Deployment) -> None:
    runner = deployment.fleet.runners[1]
    runner.mark_lost("stage actor died: RayActorError")
    runner.mark_lost("stage actor died: RayActorError")  # noticed again by another request: one event
    s = _status(deployment, ROWS[:2])  # stage_stats skips lost replicas
    assert s.status == "degraded"
    assert (s.replicas[1].state, s.replicas[1].reason) == ("lost", "stage actor died: RayActorError")
    assert all(st.kv_bytes is None for st in s.replicas[1].stages)
    assert {d.name: d.state for d in s.cluster.devices}["c"] == "lost"
    lost = [e for e in s.events if e.kind == EventKind.DEVICE_LOST]
    assert len(lost) == 1 and "replica 1 (devices c) lost: stage actor died" in lost[0].text


def test_plan_without_cluster_lists_its_devices_without_specs() -> None:
    s = _status(_deployment(dataclasses.replace(PLAN, cluster=None)))
    assert [(d.name, d.memory_gb, d.state) for d in s.cluster.devices] == [
        ("a", None, "serving"),
        ("b", None, "serving"),
        ("c", None, "serving"),
        ("d", None, "unused"),
    ]
    assert s.cluster.network.bandwidth_mbps is None


# ---- the API key and the static files ----------------------------------------------------------
def test_status_needs_the_key_but_the_page_does_not(client: TestClient) -> None:
    assert client.get("/v1/status").status_code == 401
    assert client.get("/v1/status", headers={"authorization": "Bearer wrong"}).status_code == 401
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/dashboard/dashboard.js" in page.text and "http" not in page.text.replace("http-equiv", "")
    for name, media in ASSETS.items():
        r = client.get(f"/dashboard/{name}")
        assert r.status_code == 200 and r.headers["content-type"] == media
        for header, value in SECURITY_HEADERS.items():
            assert r.headers[header] == value
    assert client.get("/dashboard/secret.txt").status_code == 401  # only the listed files are public


def test_page_loads_nothing_from_elsewhere() -> None:
    """Works offline: no URL in the shipped files points off the server."""
    static = ROOT / "src/e2llm/runtime/static"
    for path in static.iterdir():
        urls = re.findall(r"https?://[^\s\"'`)]+", path.read_text())
        assert urls == ["http://www.w3.org/2000/svg"] if path.suffix == ".js" else urls == [], path


def test_status_fields_are_documented() -> None:
    doc = (ROOT / "docs/serving.md").read_text()
    for model in (Status, ReplicaStatus):
        for name in model.model_fields:
            assert f"`{name}`" in doc, f"docs/serving.md does not describe {model.__name__}.{name}"
