"""Profile the device this process runs in (the fidelity experiment runs it inside each
testbed device: its namespace, CPU quota and memory limit).

    python profile_device.py OUT.json NAME [--quick]

The runtime's own stage code, fp32 (what `e2llm serve` holds), one torch thread (what each stage
actor gets), a stack of 8 layers (`e2llm.testbed.profiles.PROFILE_LAYERS`: calls as long as a
serving stage's, throttled by the CPU quota as those are), on the sizes this workload reaches.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import torch

from e2llm.cost.profile import make_profile, save_profile
from e2llm.profile.bandwidth import memory_bandwidth_gbs
from e2llm.profile.measure import QUICK_GRID, ProfileGrid, measure
from e2llm.specs.model_catalog import load_model, with_precision
from e2llm.testbed.profiles import PROFILE_LAYERS

MODEL = "smollm2-135m"
# Prompts 32..160 tokens, contexts up to ~190, decode batches up to 16 (fidelity workload.yaml).
GRID = ProfileGrid(
    prefill_tokens=(16, 32, 64, 96, 128, 192, 256, 384),
    decode_batches=(1, 2, 3, 4, 6, 8, 12, 16),
    decode_contexts=(32, 64, 128, 256),
    head_tokens=(1, 2, 4, 8, 16),
    embed_tokens=(1, 64, 256),
    layers=PROFILE_LAYERS,
    rounds=2,
    repeats=4,
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("name")
    ap.add_argument("--quick", action="store_true", help="a coarse grid, for a smoke run")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = with_precision(load_model(MODEL), "fp32")
    grid = dataclasses.replace(QUICK_GRID, layers=PROFILE_LAYERS) if args.quick else GRID
    device = torch.device("cpu")
    samples = measure(model, device, torch.float32, grid)
    profile = make_profile(
        device_name=args.name,
        torch_device="cpu",
        dtype="fp32",
        model=model,
        samples=samples,
        memory_bandwidth_gbs=memory_bandwidth_gbs(device, size_bytes=64 * 2**20),
    )
    save_profile(profile, args.out)
    fit = profile.fit
    print(
        f"{args.name}: prefill 128 tok {fit.prefill_s(128) * 1e3:.1f} ms/layer, decode b1 ctx128 "
        f"{fit.decode_s(1, 128) * 1e3:.2f} ms/layer, head 1 row {fit.head_s(1) * 1e3:.1f} ms; "
        f"fit error {', '.join(f'{k} {v:.1%}' for k, v in profile.fit_error.items())}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
