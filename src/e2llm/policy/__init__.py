"""The serving policy: one place, two clocks (DESIGN "Serving policy").

Pure functions over `ReplicaLoad`, a small frozen view of one replica's load that either clock
can fill: the simulator from its event state (virtual time), the runtime from its live counters
(wall-clock time). Neither clock decides anything itself, so a prediction is of what is served.

- routing: where a prompt is prefilled (`pick_prefill`), which decoder takes a prefilled
  sequence (`pick_decoder`), and whether a waiting sequence joins a decode batch (`admits`).
- controller: when e2llm switches a replica's role at run time (`decide_switch`), and when a
  replica that stopped taking work has drained (`drained`).
- mixed_pool: Splitwise's own mixed-pool rules for the `splitwise` baseline.
- settings: the policy's tunables (`PolicySettings`), validated from a plain mapping.
"""
