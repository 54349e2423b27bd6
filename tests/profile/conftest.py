"""One real `e2llm profile --quick` run (a few seconds), shared by the profiler tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2llm.cli import main


@pytest.fixture(scope="session")
def quick_profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("profile") / "cpu.json"
    code = main(["profile", "--quick", "--threads", "1", "--name", "test-cpu", "--out", str(path)])
    assert code == 0
    return path
