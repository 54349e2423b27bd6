"""`e2llm plan ... --out plan.png` draws the plan; any other suffix writes its JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_plan_cmd import run_plan
from test_simulate_cmd import _cluster_yaml, _files

from e2llm.cli import main


@pytest.mark.parametrize("name", ["plan.png", "plan.svg"])
def test_out_with_a_picture_suffix_draws_the_plan(tmp_path: Path, name: str) -> None:
    out = tmp_path / name
    assert run_plan(tmp_path, "--out", str(out)) == 0
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG") if name.endswith(".png") else b"<svg" in data[:500]


def test_out_json_still_writes_the_plan(tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    assert run_plan(tmp_path, "--out", str(out)) == 0
    assert json.loads(out.read_text())["replicas"]


def test_unwritable_picture_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_plan(tmp_path, "--out", str(tmp_path / "missing-dir" / "plan.png")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing-dir" in err[0] and "cannot write the plan" in err[0]


def test_compare_out_keeps_its_plots_and_draws_each_plan(tmp_path: Path) -> None:
    _, w = _files(tmp_path)
    out = tmp_path / "out"
    argv = ["compare", _cluster_yaml(tmp_path), "--model", "smollm2-135m", "--workload", w]
    assert main([*argv, "--systems", "e2llm,splitwise", "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    expected = {"metrics.json", "cdf_default.png", "utilisation_e2llm_default.png"}
    expected |= {"plan_e2llm_default.png", "plan_splitwise_default.png"}
    assert expected <= names
    assert all((out / n).read_bytes()[:4] == b"\x89PNG" for n in expected if n.endswith(".png"))
