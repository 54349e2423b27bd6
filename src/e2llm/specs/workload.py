"""Workloads: how requests arrive and how long they are.

A workload is either synthetic (an arrival process plus two token-length distributions) or a
trace (Azure format CSV) replayed or resampled. `generate_requests` turns either into the same
list of `Request`s, deterministically for a seed, so every system sees identical requests.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Request:
    id: int
    arrival_s: float  # seconds from the start of the run
    input_tokens: int
    output_tokens: int
