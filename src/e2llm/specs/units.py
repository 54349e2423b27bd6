"""The units of every size and rate in e2llm's files, messages and numbers (one convention).

- Memory is counted in GiB, 2**30 bytes: a device's `memory_gb` and `host_memory_gb`, a plan
  stage's `memory_gb`, weight and KV sizes in messages and tables. The `_gb` field names are
  kept because cluster YAML and plan JSON are contracts; they mean GiB.
- Memory bandwidth is in GB/s, 1e9 bytes/s, as vendors' data sheets give it: a device's
  `mem_bandwidth_gbs`, a profile's `memory_bandwidth_gbs`.
- Network links are in Mbit/s, 1e6 bits/s (`bandwidth_mbps`), and milliseconds.
"""

GIB = 2**30  # bytes in one GiB (memory)
GB = 1e9  # bytes in one GB (bandwidth: GB/s)
