"""`e2llm testbed up|status|down|exec CLUSTER`: an emulated multi-node cluster on this Linux host."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import asdict

from e2llm.errors import InputError

EXAMPLES = """examples:
  sudo e2llm testbed up examples/clusters/testbed-4.yaml --scale 0.1
  sudo e2llm testbed status examples/clusters/testbed-4.yaml
  sudo e2llm testbed exec examples/clusters/testbed-4.yaml dev1 -- e2llm profile --threads 1 --out dev1.json
  sudo e2llm testbed down examples/clusters/testbed-4.yaml

Every device becomes a network namespace on a bridge (addresses from 198.18.0.0/15) with its
links' bandwidths (times --scale) enforced by tc htb, a cgroup whose CPU quota is the device's
speed relative to the fastest and whose memory limit is its memory_gb (times --memory-scale), and
a Ray worker node advertising device:NAME. The Ray head runs outside on the bridge address, with
token authentication. `up` prints how to serve on it:

  . /run/e2llm-testbed/<id>/env.sh     # RAY_AUTH_MODE=token, the token file, the address
  e2llm serve PLAN.json --ray-address $E2LLM_TESTBED_ADDRESS --threads 1

`down` removes exactly what `up` made. Needs Linux and root."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "testbed",
        help="emulate a cluster on this Linux host: namespaces, shaped links, CPU/memory quotas, Ray nodes",
        description="Build, inspect, use and remove an emulated multi-node testbed of a cluster file.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=type(p))
    up = actions.add_parser("up", help="build the testbed and start its Ray nodes")
    up.add_argument("cluster", metavar="CLUSTER", help="cluster YAML (devices, network)")
    up.add_argument("--scale", type=float, default=1.0, metavar="F", help="link bandwidth factor (default 1)")
    up.add_argument(
        "--memory-scale", type=float, default=1.0, metavar="F", help="device memory factor (default 1)"
    )
    up.add_argument(
        "--cpu-budget",
        type=float,
        metavar="CORES",
        help="cores the devices share (default: this host's cores - 0.5)",
    )
    _profile_flags(up, "--profile", "also profile every device inside it; write DIR/cluster.yaml")
    up.set_defaults(func=run_up)
    status = actions.add_parser("status", help="show the testbed's devices, links, quotas and Ray nodes")
    status.add_argument("cluster", metavar="CLUSTER")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=run_status)
    down = actions.add_parser("down", help="stop the Ray nodes and remove everything `up` made")
    down.add_argument("cluster", metavar="CLUSTER")
    down.set_defaults(func=run_down)
    prof = actions.add_parser(
        "profile",
        help="profile every device inside the running testbed; write DIR/cluster.yaml with the profiles",
    )
    prof.add_argument("cluster", metavar="CLUSTER")
    _profile_flags(prof, "--out", "folder for the profiles and cluster.yaml", required=True)
    prof.set_defaults(func=run_profile)
    ex = actions.add_parser(
        "exec",
        help="run a command inside a device (its namespace, CPU quota and memory limit)",
        description="Run CMD inside DEVICE: in its network namespace and cgroups, with the "
        "testbed's Ray token in the environment. DEVICE 'head' (when no device has that name) "
        "runs CMD in the head's cgroup, outside the namespaces.",
    )
    ex.add_argument("cluster", metavar="CLUSTER")
    ex.add_argument("device", metavar="DEVICE")
    ex.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    ex.set_defaults(func=run_exec)


def _profile_flags(p: argparse.ArgumentParser, flag: str, help: str, required: bool = False) -> None:
    p.add_argument(flag, dest="profile_dir", metavar="DIR", required=required, help=help)
    p.add_argument("--model", default="smollm2-135m", help="model shape to profile (default %(default)s)")
    p.add_argument("--quick", action="store_true", help="coarse profile grid (seconds per device)")


def _progress(msg: str) -> None:
    print(f"e2llm testbed: {msg}", file=sys.stderr, flush=True)


def run_up(args: argparse.Namespace) -> int:
    from e2llm.testbed.host import TestbedError
    from e2llm.testbed.lifecycle import up
    from e2llm.testbed.topology import TestbedOptions

    options = TestbedOptions(
        scale=args.scale, memory_scale=args.memory_scale, cpu_budget_cores=args.cpu_budget
    )
    try:
        state = up(args.cluster, options, progress=_progress)
    except TestbedError as e:
        print(f"e2llm testbed up: {e}", file=sys.stderr)
        return 1
    topo = state.topology
    print(
        f"testbed {topo.testbed_id}: {len(topo.devices)} devices on {topo.subnet}, Ray head {state.address}"
    )
    for d in topo.devices:
        links = ", ".join(f"{c.peer or 'head'} {c.rate_mbps:g}" for c in d.egress)
        print(
            f"  {d.name:<12} {d.address:<14} {d.netns:<24} cpu {d.cpu_cores:.2f} cores  "
            f"memory {d.memory_limit_bytes / 2**30:.2f} GiB  Mbit/s: {links}"
        )
    print(
        f"serve on it:\n  . {state.folder}/env.sh\n"
        "  e2llm serve PLAN.json --ray-address $E2LLM_TESTBED_ADDRESS --threads 1\n"
        f"take it down: e2llm testbed down {args.cluster}"
    )
    return 0


def _profile(state: object, args: argparse.Namespace) -> None:
    from pathlib import Path

    from e2llm.testbed.profiles import e2llm_profile, profile_testbed
    from e2llm.testbed.state import TestbedState

    assert isinstance(state, TestbedState)
    command = e2llm_profile(args.model, args.quick)
    path = profile_testbed(state, Path(args.profile_dir), command, progress=_progress)
    print(f"cluster with the devices' profiles: {path}  (e2llm plan {path} --model ... --workload ...)")


def run_profile(args: argparse.Namespace) -> int:
    from e2llm.testbed.host import TestbedError
    from e2llm.testbed.lifecycle import load_state

    try:
        _profile(load_state(args.cluster), args)
    except TestbedError as e:
        print(f"e2llm testbed profile: {e}", file=sys.stderr)
        return 1
    return 0


def run_status(args: argparse.Namespace) -> int:
    from e2llm.testbed.lifecycle import load_state
    from e2llm.testbed.status import status

    st = status(load_state(args.cluster))
    if args.json:
        print(json.dumps({**asdict(st), "healthy": st.healthy}, indent=2))
        return 0 if st.healthy else 1
    print(f"testbed {st.testbed_id}: Ray head {st.address} {'up' if st.head_alive else 'DOWN'}")
    for d in st.devices:
        used = "?" if d.memory_used_gib is None else f"{d.memory_used_gib:.2f}"
        print(
            f"  {d.name:<12} {d.address:<14} link {'up' if d.link_up else 'DOWN':<4} "
            f"ray {'in' if d.in_ray else 'OUT':<3} raylet {d.raylet_pid or '-'!s:<7} "
            f"cpu {d.cpu_cores:.2f}  memory {used}/{d.memory_limit_gib:.2f} GiB  "
            f"Mbit/s: {', '.join(f'{peer} {mbps:g}' for peer, mbps in d.links_mbps.items())}"
        )
    return 0 if st.healthy else 1


def run_down(args: argparse.Namespace) -> int:
    from e2llm.testbed.lifecycle import down, load_state

    state = load_state(args.cluster)
    left = down(state)
    if left:
        print(f"e2llm testbed down: could not remove: {'; '.join(left)}", file=sys.stderr)
        return 1
    print(f"testbed {state.topology.testbed_id} removed")
    return 0


def run_exec(args: argparse.Namespace) -> int:
    from e2llm.testbed.control import device_command
    from e2llm.testbed.lifecycle import load_state

    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise InputError("exec", "no command given (e2llm testbed exec CLUSTER DEVICE -- CMD ...)")
    state = load_state(args.cluster)
    names = {d.name for d in state.topology.devices}
    device = None if args.device == "head" and "head" not in names else args.device
    argv, env = device_command(state, device, cmd)
    return subprocess.run(argv, env={**os.environ, **env}).returncode
