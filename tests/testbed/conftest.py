"""Shared by the live testbed tests: skip (with the reason) where the host cannot run one."""

from __future__ import annotations

import pytest

from e2llm.testbed.host import unsupported_reason


@pytest.fixture(scope="session")
def testbed_host() -> None:
    reason = unsupported_reason()
    if reason:
        pytest.skip(f"no testbed on this host: {reason}")
