"""Discrete-event simulation of a plan serving a workload.

`simulator.simulate(plan, cost, requests) -> SimResult` (per-request `RequestRecord`s, per-device
busy intervals); `metrics.summarize(records)` -> the DESIGN metrics JSON; `validate.check_plan` /
`check_serves` refuse plans that cannot run; `compare` plans and simulates systems over loads.
Modules: engine (event loop), network (links shared by processor sharing), prefill (PREFILL
pipelines), decode (continuous batching, COLOCATED replicas), router (jsq / splitwise), state.
"""
