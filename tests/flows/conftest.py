"""Flow tests: real Prefect flow runs (one test harness per session, ~20 s) against one sandbox per module."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import flows.events
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


def record_events(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every event trainctl emits (all go through flows/events.py): name, resource, related and payload, recorded
    as Prefect receives them."""
    emitted: list[dict[str, Any]] = []
    module = flows.events
    real = module.emit_event

    def record(**kwargs: Any) -> Any:
        emitted.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(module, "emit_event", record)
    return emitted
