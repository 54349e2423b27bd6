"""Measuring a device for the cost model (`e2llm profile`).

`measure.measure(model, device, dtype, grid)` times a cut-down stack of the model's layers (the
runtime's own `StageModel`, random weights; `target.py`) and returns `cost.profile` samples;
`bandwidth.memory_bandwidth_gbs` times a large copy. The CLI fits and writes the profile JSON.
"""
