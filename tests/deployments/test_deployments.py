"""Deployments against a real Prefect API (the session's test server): registered, named, with model parameters."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast
from uuid import UUID

import yaml  # type: ignore[import-untyped]

from deployments.serve import deployments

REPO = Path(__file__).resolve().parents[2]


def test_every_flow_deploys_with_its_model_as_parameters(prefect_harness: None) -> None:
    from prefect.client.orchestration import get_client

    ids = [cast(UUID, d.apply()) for d in deployments()]

    async def read() -> list[Any]:
        async with get_client() as client:
            return [await client.read_deployment(i) for i in ids]

    found = {d.name: d for d in asyncio.run(read())}
    assert set(found) == {"prewarm", "train-launch", "transfer", "safe-teardown", "spot-watch"}
    prewarm_schema = found["prewarm"].parameter_openapi_schema
    assert "spec" in prewarm_schema["properties"]  # the PrewarmSpec model, rendered as a form in the UI
    assert all("trainctl" in d.tags for d in found.values())
    watch = found["spot-watch"]
    assert [s.schedule.interval.total_seconds() for s in watch.schedules] == [60]
    assert watch.global_concurrency_limit is not None and watch.global_concurrency_limit.limit == 1
    assert watch.concurrency_options is not None and watch.concurrency_options.collision_strategy == "CANCEL_NEW"


def test_prefect_yaml_names_the_same_entrypoints() -> None:
    config = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    for entry in config["deployments"]:
        module, _, name = entry["entrypoint"].partition(":")
        assert (REPO / module).exists() and f"def {name}(" in (REPO / module).read_text()
    assert {e["name"] for e in config["deployments"]} == {d.name for d in deployments()}
