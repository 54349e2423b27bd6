"""A picture of a plan: devices grouped by replica, each device's layer range as a bar.

One row per (replica, device) in pipeline order; the bar spans the device's half-open layer
range `[start, end)` on a shared layer axis, coloured by the replica's role. The bottleneck
stage (the slowest, which sets the replica's speed) is hatched and outlined; E / H mark the
devices that hold the embedding / the LM head; memory is planned use / the device's (GiB).
Each replica's block is labelled with its role, concurrency and predicted speeds, so the
picture says what the table of `e2llm plan` says.

`plan_figure` is pure (plan in, figure out: no pyplot state, no file); callers save it.
"""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.patches import Patch

from e2llm.plan.types import Plan, Replica, Role

ROLE_COLOURS = {  # as on the dashboard (runtime/static/dashboard.css)
    Role.PREFILL: "#4e79a7",
    Role.DECODER: "#f28e2b",
    Role.MIXED: "#b07aa1",
    Role.COLOCATED: "#59a14f",
}
BOTTLENECK_EDGE = "#d62728"
ROW_H = 0.36  # inches per device row
NARROW_BAR = 0.2  # share of the layer axis below which a bar's label goes beside it
REPLICA_GAP = 0.3  # rows of space between replicas


def role_colour(role: Role) -> str:
    return ROLE_COLOURS[role]


def replica_caption(r: Replica) -> str:
    """Role, concurrency and predicted speeds of one replica, on one line."""
    parts = [f"replica {r.id} {r.role.value}"]
    if r.does_decode:
        parts.append(f"concurrency {r.concurrency}")
    if r.prefill_tok_s is not None:
        parts.append(f"prefill {r.prefill_tok_s:.0f} tok/s")
    if r.decode_tok_s_per_request is not None:
        parts.append(f"decode {r.decode_tok_s_per_request:.1f} tok/s/req")
    return ", ".join(parts)


def plan_figure(plan: Plan) -> Figure:
    """The deployment of `plan` as a figure (see the module docstring)."""
    n_layers = max((s.end for r in plan.replicas for s in r.stages), default=1) or 1
    memory = (
        {d.name: d.memory_gb for d in plan.cluster.devices} if plan.cluster is not None else {}
    )  # available
    rows = sum(len(r.stages) for r in plan.replicas)
    height_rows = rows + (1.0 + REPLICA_GAP) * len(plan.replicas) + 1.0
    fig = Figure(figsize=(10, max(2.5, ROW_H * height_rows + 1.4)))
    ax = fig.add_subplot()

    y = 0.0  # rows go downwards: y grows, the axis is inverted at the end
    ticks: list[float] = []
    labels: list[str] = []
    for r in plan.replicas:
        y += REPLICA_GAP + 1.0  # the replica's caption row
        top = y - 0.5
        ax.text(0.2, y, replica_caption(r), fontsize=9, fontweight="bold", va="center")
        for s in r.stages:
            y += 1.0
            bottleneck = s.device == r.bottleneck_device
            ax.barh(
                y,
                s.n_layers,
                left=s.start,
                height=0.7,
                color=role_colour(r.role),
                edgecolor=BOTTLENECK_EDGE if bottleneck else "white",
                linewidth=2.0 if bottleneck else 0.5,
                hatch="//" if bottleneck else None,
            )
            marks = ("E " if s.embedding else "") + ("H" if s.lm_head else "")
            text = f"[{s.start},{s.end}) {marks}".strip()
            if s.memory_gb:
                avail = memory.get(s.device)
                text += f"  {s.memory_gb:.1f}/{avail:g} GiB" if avail else f"  {s.memory_gb:.1f} GiB"
            if s.n_layers >= NARROW_BAR * n_layers:
                middle = s.start + s.n_layers / 2
                ax.text(middle, y, text, ha="center", va="center", fontsize=8, color="white")
            else:  # too narrow to hold its label: write it just after the bar
                ax.text(s.end + n_layers * 0.01, y, text, va="center", fontsize=8)
            if bottleneck:
                ax.text(n_layers * 1.01, y, "bottleneck", va="center", fontsize=8, color=BOTTLENECK_EDGE)
            ticks.append(y)
            labels.append(s.device)
        ax.axhspan(top, y + 0.5, color=role_colour(r.role), alpha=0.08, linewidth=0)

    ax.set_yticks(ticks, labels=labels)
    ax.set_ylim(y + 0.6, 0)
    ax.set_xlim(0, n_layers)
    ax.set_xlabel("decoder layers [start, end)")
    ax.grid(True, axis="x", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    roles = list(dict.fromkeys(r.role for r in plan.replicas))
    handles = [Patch(color=role_colour(role), label=role.value) for role in roles]
    handles.append(Patch(facecolor="white", edgecolor=BOTTLENECK_EDGE, hatch="//", label="bottleneck"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=len(handles), fontsize=8)
    title = f"{plan.system} plan of {plan.model}: {len(plan.replicas)} replicas"
    if plan.unused_devices:
        title += f" (unused: {', '.join(plan.unused_devices)})"
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig
