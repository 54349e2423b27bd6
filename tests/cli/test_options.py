"""The CLI's one vocabulary: shared flags spelled and checked alike, lower layers' parameter
names shown as flags, one progress bar."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from e2llm.cli import main
from e2llm.cli.options import FLAGS, dtype_choice, with_flag
from e2llm.cli.progress import progress_bar
from e2llm.errors import InputError
from e2llm.specs.workload import with_load
from e2llm.specs.workload_file import load_workload

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SMOKE = EXAMPLES / "workloads" / "smoke.yaml"


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"interval_s": 0}, "--interval"),
        ({"rate_per_s": -2}, "--rate"),
        ({"requests": 0}, "--requests"),
        ({"interval_s": 1, "rate_per_s": 1}, "--interval/--rate"),
    ],
)
def test_lower_layers_name_parameters_and_the_cli_shows_flags(kwargs: dict[str, float], flag: str) -> None:
    with pytest.raises(InputError) as caught:
        with_load(load_workload(SMOKE), **kwargs)
    assert "--" not in str(caught.value)
    assert str(with_flag(caught.value)).startswith(f"{flag}: ")


def test_an_error_that_names_a_file_is_left_alone() -> None:
    e = InputError("w.yaml: requests", "must be >= 1", 0)
    assert with_flag(e) is e and set(FLAGS.values()) >= {"--system", "--exhaustive", "--precision"}


@pytest.mark.parametrize(
    ("given", "ours"), [("fp32", "fp32"), ("float32", "fp32"), ("bfloat16", "bf16"), ("fp16", "fp16")]
)
def test_dtype_takes_both_spellings(given: str, ours: str) -> None:
    assert dtype_choice(given) == ours


PLAN = [
    "plan",
    str(EXAMPLES / "clusters" / "paper-testbed.yaml"),
    "--model",
    "gpt-oss-20b",
    "--workload",
    str(SMOKE),
]


@pytest.mark.parametrize(
    "argv",
    [
        [*PLAN, "--system", "vllm"],
        [*PLAN, "--rate", "0"],
        ["serve", "--dtype", "int4"],
        ["serve", "--device", "tpu"],
        ["profile", "--dtype", "half"],
    ],
)
def test_bad_shared_flags_are_one_line_naming_the_flag(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    flag = next(a for a in argv if a.startswith("--") and a not in ("--model", "--workload"))
    assert len(err.splitlines()) == 1 and f"error: {flag}: " in err, err


def test_the_progress_bar_shows_only_once_a_run_is_slow_off_a_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from e2llm.cli import progress as module

    out = io.StringIO()
    monkeypatch.setattr(module.sys, "stderr", out)
    with progress_bar("work", "step") as progress:
        progress(1, 4, "first")
    assert out.getvalue() == ""  # quick, and not a terminal
    monkeypatch.setattr(module, "SLOW_RUN_S", 0.0)
    with progress_bar("work", "step") as progress:
        progress(1, 4, "first")
        progress(3, 4)
    assert "work" in out.getvalue()  # drawn (tqdm throttles the updates that follow)
