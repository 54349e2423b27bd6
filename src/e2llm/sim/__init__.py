"""Discrete-event simulation of a plan serving a workload.

`simulator.simulate(plan, cost, requests, ctx) -> SimResult` (per-request `RequestRecord`s,
per-device busy intervals, role changes); `metrics.summarize(records, floor, switches)` -> the
DESIGN metrics JSON; `validate.check_plan` / `check_serves` refuse plans that cannot run; `compare`
plans and simulates systems over loads. Every serving decision is the serving policy's
(`e2llm.policy`). Modules: engine (event loop), network (links shared by processor sharing),
prefill (PREFILL pipelines), decode (continuous batching: DECODER, COLOCATED and MIXED replicas),
mixed (what a MIXED replica does), replica (a replica's role at run time and its load view),
router (the views handed to the policy), state.
"""
