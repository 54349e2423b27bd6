"""The plan picture: one bar per (replica, device) over its layer range, bottleneck marked."""

from __future__ import annotations

from pathlib import Path

from matplotlib.colors import to_hex
from matplotlib.patches import Rectangle

from e2llm.plan.types import Plan, Replica, Role, Stage
from e2llm.report.plan_figure import BOTTLENECK_EDGE, plan_figure, replica_caption, role_colour
from e2llm.specs.device import Cluster, Device, Link

PLAN = Plan(
    system="e2llm",
    model="tiny",
    objective=0.0,
    objective_kind="bottleneck_s",
    replicas=(
        Replica(
            0,
            Role.PREFILL,
            (Stage("a", 0, 10, embedding=True, memory_gb=1.5), Stage("b", 10, 30, lm_head=True)),
            prefill_tok_s=400.0,
            bottleneck_device="b",
        ),
        Replica(
            1,
            Role.DECODER,
            (Stage("c", 0, 30, embedding=True, lm_head=True),),
            concurrency=8,
            decode_tok_s_per_request=12.5,
            bottleneck_device="c",
        ),
    ),
    unused_devices=("d",),
    cluster=Cluster((Device("a", memory_gb=2.0, tflops=1.0, mem_bandwidth_gbs=10.0),), Link(1000.0, 0.5)),
)


def _bars(plan: Plan) -> list[Rectangle]:
    ax = plan_figure(plan).axes[0]
    return [bar for container in ax.containers for bar in container if isinstance(bar, Rectangle)]


def test_one_bar_per_stage_spanning_its_layers_coloured_by_role() -> None:
    bars = _bars(PLAN)
    spans = [(b.get_x(), b.get_x() + b.get_width()) for b in bars]
    assert spans == [(0, 10), (10, 30), (0, 30)]
    prefill, decoder = role_colour(Role.PREFILL), role_colour(Role.DECODER)
    assert [to_hex(b.get_facecolor()) for b in bars] == [prefill, prefill, decoder]


def test_bottleneck_stages_are_hatched_and_outlined() -> None:
    bars = _bars(PLAN)
    marked = [bool(b.get_hatch()) and to_hex(b.get_edgecolor()) == BOTTLENECK_EDGE for b in bars]
    assert marked == [False, True, True]


def test_rows_are_named_by_device_and_replicas_captioned() -> None:
    fig = plan_figure(PLAN)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "c"]
    texts = [t.get_text() for t in ax.texts]
    assert replica_caption(PLAN.replicas[0]) in texts
    assert "replica 1 DECODER, concurrency 8, decode 12.5 tok/s/req" in texts
    assert "[0,10) E  1.5/2 GiB" in texts and "[10,30) H" in texts
    assert "unused: d" in fig.get_suptitle()


def test_saves_as_png(tmp_path: Path) -> None:
    plan_figure(PLAN).savefig(tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_every_role_has_its_colour() -> None:
    assert len({role_colour(role) for role in Role}) == len(Role)
