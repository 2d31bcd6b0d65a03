"""Deployments against a real Prefect API (the session's test server): registered, named, with model parameters."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast
from uuid import UUID

import yaml  # type: ignore[import-untyped]
from pydantic import BaseModel

from core.jobs import JobSpec
from core.launch import LaunchOptions
from core.prewarm import PrewarmSpec
from core.transfer import TransferRequest
from deployments.serve import deployments
from flows.cost_watch import CostWatchRequest
from flows.spot_watch import SpotWatchRequest
from flows.teardown import TeardownRequest

REPO = Path(__file__).resolve().parents[2]
# Each deployment's parameters and the model each one is.
MODELS: dict[str, dict[str, type[BaseModel]]] = {
    "prewarm": {"spec": PrewarmSpec},
    "train-launch": {"spec": JobSpec, "options": LaunchOptions},
    "transfer": {"request": TransferRequest},
    "safe-teardown": {"request": TeardownRequest},
    "spot-watch": {"request": SpotWatchRequest},
    "cost-watch": {"request": CostWatchRequest},
}
# The scheduled ones: interval (seconds), and one run at a time (a run due while one runs is cancelled).
SCHEDULED = {"spot-watch": 60, "cost-watch": 900}


def test_every_flow_deploys_with_its_model_as_parameters_every_field_described(prefect_harness: None) -> None:
    from prefect.client.orchestration import get_client

    ids = [cast(UUID, d.apply()) for d in deployments()]

    async def read() -> list[Any]:
        async with get_client() as client:
            return [await client.read_deployment(i) for i in ids]

    found = {d.name: d for d in asyncio.run(read())}
    assert set(found) == {"prewarm", "train-launch", "transfer", "safe-teardown", "spot-watch", "cost-watch"}
    for name, params in MODELS.items():
        # Each parameter is its model, rendered as a form in the UI: every field there, every field described.
        schema = found[name].parameter_openapi_schema
        assert set(schema["properties"]) == set(params), name
        for param, model in params.items():
            refs = [schema["properties"][param], *schema["properties"][param].get("anyOf", [])]
            assert {"$ref": f"#/definitions/{model.__name__}"} in [{"$ref": r["$ref"]} for r in refs if "$ref" in r]
            assert set(schema["definitions"][model.__name__]["properties"]) == set(model.model_fields), model
        for model_name, definition in schema["definitions"].items():
            fields = definition.get("properties", {})
            undescribed = sorted(f for f, field in fields.items() if not field.get("description"))
            assert undescribed == [], f"{name}: {model_name} fields without a description"
    assert all("trainctl" in d.tags for d in found.values())
    for name, interval in SCHEDULED.items():
        watch = found[name]
        assert [s.schedule.interval.total_seconds() for s in watch.schedules] == [interval], name
        assert watch.global_concurrency_limit is not None and watch.global_concurrency_limit.limit == 1
        assert watch.concurrency_options is not None and watch.concurrency_options.collision_strategy == "CANCEL_NEW"
    assert not any(found[name].schedules for name in set(found) - set(SCHEDULED))


def test_prefect_yaml_names_the_same_entrypoints() -> None:
    config = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    for entry in config["deployments"]:
        module, _, name = entry["entrypoint"].partition(":")
        assert (REPO / module).exists() and f"def {name}(" in (REPO / module).read_text()
    served = {d.name: d for d in deployments()}
    assert {e["name"] for e in config["deployments"]} == set(served)
    # The same schedules and limits as serve's (one definition, two ways to deploy it).
    for entry in config["deployments"]:
        intervals = [s["interval"] for s in entry.get("schedules", [])]
        assert intervals == ([SCHEDULED[entry["name"]]] if entry["name"] in SCHEDULED else []), entry["name"]
        deployment = served[entry["name"]]
        options = deployment.concurrency_options
        expected = (
            None
            if deployment.concurrency_limit is None or options is None
            else {"limit": deployment.concurrency_limit, "collision_strategy": options.collision_strategy.value}
        )
        assert entry.get("concurrency_limit") == expected, entry["name"]
