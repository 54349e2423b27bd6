"""Inputs: devices and clusters (`device`, `presets`, `cluster_file`), models (`model_spec`: the
one model type; `model_catalog`: names and `load_model`; `model_files`: HF config.json and GGUF
readers; `gguf_header`), workloads (`workload`, `workload_file`, `trace`), and the units of
sizes and rates (`units`). Every bad input raises `e2llm.errors.InputError` naming the file, the
field or line, and the value."""
