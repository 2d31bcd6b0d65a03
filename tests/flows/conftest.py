"""Flow tests: real Prefect flow runs (one test harness per session, ~20 s) against one sandbox per module."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from blocks.aws import clear_client_cache
from sandbox import Sandbox


@pytest.fixture(scope="module")
def sandbox_env(prefect_harness: None) -> Iterator[Sandbox]:
    """A sandbox whose environment the product code picks up, as a user's `export` would."""
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    with Sandbox(boot_delay=0.2) as sandbox:
        os.environ.update(sandbox.env)
        clear_client_cache()
        yield sandbox
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    clear_client_cache()


@pytest.fixture
def cloud(sandbox_env: Sandbox) -> Sandbox:
    """Each test starts from an empty cloud (the sandbox keeps running; resetting it takes milliseconds)."""
    sandbox_env.reset()
    return sandbox_env
