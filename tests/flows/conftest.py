"""Flow tests: real Prefect flow runs (one test harness per session, ~20 s) against one sandbox per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sandbox import Sandbox
from tests.conftest import exported_sandbox


@pytest.fixture(scope="module")
def sandbox_env(prefect_harness: None) -> Iterator[Sandbox]:
    with exported_sandbox(boot_delay=0.2) as sandbox:
        yield sandbox


@pytest.fixture
def cloud(sandbox_env: Sandbox) -> Sandbox:
    """Each test starts from an empty cloud (the sandbox keeps running; resetting it takes milliseconds)."""
    sandbox_env.reset()
    return sandbox_env
