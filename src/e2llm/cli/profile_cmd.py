"""`e2llm profile`: measure this machine for one model shape and write a device profile JSON."""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path

from e2llm.cli.logs import add_log_level
from e2llm.cli.options import add_device, add_dtype, device_choice, dtype_choice
from e2llm.cli.progress import progress_bar
from e2llm.errors import InputError

EXAMPLES = """examples:
  e2llm profile                                   # smollm2-135m on the CPU, ~2 min
  e2llm profile --model llama-3.1-8b --device cuda --out profiles/fog.json
  e2llm profile --threads 1 --quick --out /tmp/p.json   # a few seconds, coarse grid

Use the profile by naming it in a cluster file:  devices: [{name: dev1, ..., profile: p.json}]
A profile of one layer shape also times other models: the cost model rescales each fitted term
(cost/profile_times.py) and refuses shapes more than 32x away, naming the profile and the model.
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "profile",
        help="measure per-layer prefill/decode times of this machine and write a profile",
        description="Time a cut-down copy of the model (same layer shape, random weights) on this "
        "machine: per-layer prefill over prompt lengths, per-layer decode over batch x context, "
        "final norm + LM head, embedding, and memory bandwidth; fit the cost model's curves and "
        "write the profile JSON that a cluster file's `profile:` field reads.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model", default="smollm2-135m", help="catalog name, HF config/dir or GGUF (default %(default)s)"
    )
    add_device(p)
    add_dtype(p, None, "fp32 on cpu, bf16 otherwise")
    p.add_argument(
        "--threads", type=int, help="torch CPU threads (default: torch's choice); match the serving worker"
    )
    p.add_argument("--layers", type=int, default=2, help="layers in the timed stack (default %(default)s)")
    p.add_argument("--name", help="device name recorded in the profile (default: host or GPU name)")
    p.add_argument("--quick", action="store_true", help="coarse grid, few repeats: seconds, for tests")
    p.add_argument("--out", default="profile.json", metavar="FILE", help="output file (default %(default)s)")
    add_log_level(p)
    p.set_defaults(func=run)


def _torch_device(name: str) -> object:
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device", "CUDA requested but torch sees no CUDA device", name)
    if name == "mps" and not torch.backends.mps.is_available():
        raise InputError("--device", "MPS requested but torch sees no MPS device", name)
    return torch.device(name)


def _load_warning(device: str) -> str | None:
    """A warning when other processes keep the CPU busy: CPU timings then measure the contention
    (and a GPU's launch overhead grows too), so the profile describes a loaded machine."""
    if not hasattr(os, "getloadavg"):
        return None
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load <= 0.5 * cores:
        return None
    return (
        f"e2llm profile: warning: load average {load:.1f} on {cores} cores; other processes compete "
        f"for the CPU, so this {device} profile will be slower and noisier than the idle machine"
    )


def _device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"{platform.node() or 'host'}-{device}"


def run(args: argparse.Namespace) -> int:
    import torch

    from e2llm.cost.profile import make_profile, save_profile
    from e2llm.profile.bandwidth import memory_bandwidth_gbs
    from e2llm.profile.measure import QUICK_GRID, ProfileGrid, grid_points, measure
    from e2llm.profile.target import DTYPES
    from e2llm.specs.model_catalog import load_model, with_precision

    device_name = device_choice(args.device)
    torch_device = _torch_device(device_name)
    assert isinstance(torch_device, torch.device)
    dtype_name = dtype_choice(args.dtype) if args.dtype else ("fp32" if device_name == "cpu" else "bf16")
    if args.layers < 1:
        raise InputError("--layers", "must be >= 1", args.layers)
    if args.threads is not None:
        if args.threads < 1:
            raise InputError("--threads", "must be >= 1", args.threads)
        torch.set_num_threads(args.threads)
    model = with_precision(load_model(args.model), dtype_name)
    if model.is_moe:
        raise InputError(
            "--model", "the profiler times dense Llama-family layers; MoE is not supported", args.model
        )
    grid = QUICK_GRID if args.quick else ProfileGrid()
    grid = dataclasses.replace(grid, layers=args.layers)

    out = Path(args.out)
    if not out.parent.is_dir():  # fail now, not after minutes of measuring
        raise InputError("--out", "the folder does not exist", str(out.parent))
    busy = _load_warning(device_name)
    if busy:
        print(busy, file=sys.stderr)
    started = time.perf_counter()
    points = grid_points(grid, model)
    with progress_bar("profile", "pt") as progress:
        samples = measure(model, torch_device, DTYPES[dtype_name], grid, progress)
        progress(points, points + 1, "bandwidth")
        bandwidth = memory_bandwidth_gbs(torch_device, size_bytes=grid.bandwidth_bytes)
    profile = make_profile(
        device_name=args.name or _device_name(device_name),
        torch_device=device_name,
        dtype=dtype_name,
        model=model,
        samples=samples,
        memory_bandwidth_gbs=bandwidth,
    )
    try:
        save_profile(profile, out)
    except OSError as e:
        raise InputError("--out", f"cannot write the profile: {e.strerror}", args.out) from None
    fit = profile.fit
    errors = ", ".join(f"{k} {v:.1%}" for k, v in profile.fit_error.items())
    threads = torch.get_num_threads()
    print(
        f"profiled {model.name} ({dtype_name}, {threads} threads) on {profile.device_name} "
        f"in {time.perf_counter() - started:.0f} s -> {args.out}\n"
        f"  per layer: prefill 128 tok {fit.prefill_s(128) * 1e3:.2f} ms, "
        f"1024 tok {fit.prefill_s(1024) * 1e3:.1f} ms; decode b1 ctx512 {fit.decode_s(1, 512) * 1e3:.2f} ms, "
        f"b16 ctx512 {fit.decode_s(16, 512) * 1e3:.2f} ms\n"
        f"  LM head: 1 row {fit.head_s(1) * 1e3:.2f} ms; memory bandwidth {bandwidth:.1f} GB/s\n"
        f"  fit error (median |rel|): {errors}"
    )
    return 0
