"""How the serving engine executes a plan, where engines differ: what the simulator must know
to predict one engine rather than another.

`IDEAL` is the engine the planner assumes: decode micro-batches cycle through the pipeline without
waiting for each other, and a decoder keeps decoding while handed-off KV arrives. `RAY_RUNTIME`
is `e2llm serve` as measured on the testbed (experiments/fidelity/README.md):

- `step_barrier`: a decode step submits one micro-batch per stage and waits for all of them
  before the next step (`runtime/replica.py`), so a step takes the pipeline's fill and drain:
  lap + (M - 1) x slowest stage, not max(lap, M x slowest stage).
- `kv_import_pauses_decode`: a decoder's stage actors take the KV of a hand-off as an actor call
  whose arguments Ray fetches in the actor's task order, so the decode calls behind it wait until
  the KV has crossed the link (measured: a 1.26 s gap in a running stream while 3.1 MB crossed
  a 20 Mbit/s link). The decoder pauses at its next step boundary until the KV is in.
- `prompts_interleave`: a COLOCATED replica sends a prompt's stage calls as soon as it arrives;
  each stage runs them after the decode call it is running, so the prompt does not wait for the
  decode step under way to end: that step finishes after the prompt instead.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Execution:
    step_barrier: bool = False
    kv_import_pauses_decode: bool = False
    prompts_interleave: bool = False
    handoff_at_step_boundary: bool = False


IDEAL = Execution()
RAY_RUNTIME = Execution(
    step_barrier=True, kv_import_pauses_decode=True, prompts_interleave=True, handoff_at_step_boundary=True
)
