"""`e2llm profile`: a quick run writes a profile that loads; bad input exits 2 with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from e2llm.cli import main
from e2llm.cost.profile import FORMAT, load_profile
from e2llm.profile.measure import QUICK_GRID


def test_quick_profile_is_valid_and_complete(quick_profile: Path) -> None:
    raw = json.loads(quick_profile.read_text())
    assert raw["format"] == FORMAT
    p = load_profile(quick_profile)
    assert (p.device_name, p.torch_device, p.dtype) == ("test-cpu", "cpu", "fp32")
    assert (p.model.name, p.model.hidden, p.model.n_kv_heads, p.model.vocab) == (
        "smollm2-135m",
        576,
        3,
        49152,
    )
    assert p.model.weight_precision == "fp32" and p.model.kv_bytes_per_value == 4.0
    assert [t for t, _ in p.samples.prefill] == list(QUICK_GRID.prefill_tokens)
    grid = {(b, c) for b, c, _ in p.samples.decode}
    assert grid == {(b, c) for b in QUICK_GRID.decode_batches for c in QUICK_GRID.decode_contexts}
    assert len(p.samples.head) == len(QUICK_GRID.head_tokens) and len(p.samples.embed) == len(
        QUICK_GRID.embed_tokens
    )
    assert p.memory_bandwidth_gbs > 0
    # Fit error is reported for every curve, and the curves describe their samples.
    assert set(raw["fit_error"]) >= {"prefill", "decode", "head"}
    assert all(0 <= e < 0.5 for e in p.fit_error.values())
    # Prefill grows with the prompt (16x the tokens); a decode batch shares one read of the
    # weights, so a token costs less in a batch of 4 than alone. Both margins are several-fold:
    # a busy machine's noise cannot flip them (batch 4 vs batch 1 *time* differs by ~20% only).
    pre = dict(p.samples.prefill)
    assert pre[256] > pre[16]
    dec = {(b, c): s for b, c, s in p.samples.decode}
    assert dec[(4, 128)] / 4 < dec[(1, 128)]


def _one_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--device", "tpu"], "tpu"),
        (["--model", "no-such-model"], "no-such-model"),
        (["--model", "gpt-oss-20b"], "MoE"),
        (["--layers", "0"], "--layers"),
        (["--threads", "0"], "--threads"),
        (["--out", "/nonexistent-dir/p.json"], "nonexistent-dir"),
    ],
)
def test_bad_input(capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], needle: str) -> None:
    err = _one_line(
        capsys, ["profile", "--quick", "--threads", "1", "--out", str(tmp_path / "p.json"), *argv]
    )
    assert needle in err
    assert not (tmp_path / "p.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_but_absent(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    err = _one_line(capsys, ["profile", "--device", "cuda", "--out", str(tmp_path / "p.json")])
    assert "CUDA" in err


def test_a_busy_machine_is_warned_about(monkeypatch: pytest.MonkeyPatch) -> None:
    from e2llm.cli import profile_cmd

    monkeypatch.setattr(profile_cmd.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(profile_cmd.os, "getloadavg", lambda: (6.0, 5.0, 4.0))
    warning = profile_cmd._load_warning("cpu")
    assert warning is not None and "load average 6.0 on 2 cores" in warning
    monkeypatch.setattr(profile_cmd.os, "getloadavg", lambda: (0.2, 0.2, 0.2))
    assert profile_cmd._load_warning("cpu") is None
