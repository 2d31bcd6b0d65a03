"""Flow tests: real Prefect flow runs (one test harness per session, ~20 s) against one sandbox per module."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import flows.events
from sandbox import Sandbox
from tests.conftest import exported_sandbox


@contextmanager
def _cli_default_prefect_api() -> Iterator[None]:
    """The CLI's default choice of Prefect API (cli/local_server.py) for the flow commands these tests run: it must
    take the harness's URL, so no local server may have been started by the end."""
    from cli import local_server

    with pytest.MonkeyPatch.context() as env:
        env.setenv(local_server.MODE_ENV, "local")
        yield
    assert local_server.read_state() is None, "a flow command under the test harness started the local server"


@pytest.fixture(scope="module")
def sandbox_env(prefect_harness: None) -> Iterator[Sandbox]:
    with _cli_default_prefect_api(), exported_sandbox(boot_delay=0.2) as sandbox:
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
