"""An emulated multi-node cluster on one Linux host, for trying plans and measuring fidelity.

Per device a network namespace on a bridge with its links shaped by tc, a cgroup with a CPU
quota and a memory limit, and a Ray worker node advertising `device:<name>`; the Ray head
outside, token authentication on. `topology` plans it (pure), `netcmds` and `cgroups` say what to
create, `lifecycle` builds and removes it, `control` acts on a running one, `status` reports.
"""
