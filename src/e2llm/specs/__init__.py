"""Inputs: devices and clusters (`device`, `presets`, `cluster_file`), models (`model`, `models`,
`model_config`, `gguf_header`), workloads (`workload`, `workload_file`, `trace`). Every bad input
raises `e2llm.errors.InputError` naming the file, the field or line, and the value."""
