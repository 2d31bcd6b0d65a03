"""One sandbox per test module (starting one costs about a second); each test starts from a reset cloud."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sandbox import Sandbox


@pytest.fixture(scope="module")
def sandbox_module() -> Iterator[Sandbox]:
    with Sandbox(boot_delay=0.2) as cloud:
        yield cloud


@pytest.fixture
def cloud(sandbox_module: Sandbox) -> Iterator[Sandbox]:
    sandbox_module.reset()
    yield sandbox_module
