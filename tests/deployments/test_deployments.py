"""`trainctl deploy` against a real Prefect API, then seen through that API: the work pool, the concurrency limits,
every deployment (schedules, limits, descriptions, parameter forms, where a worker runs it), the automations; a
teardown dry run executed by a process worker; a `trainctl.cost.threshold` event turned into a dry-run teardown of
its job by the automation.

The session's Prefect test server (`prefect_harness`) is a real `prefect server` process (uvicorn over HTTP); it
runs the event services (ReactiveTriggers and Actions are RunInEphemeralServers), so automations fire in it; the
scheduler does not run there, so no scheduled run executes during the test (schedules are checked as data).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, TypeVar, cast
from uuid import UUID

import pytest
import yaml  # type: ignore[import-untyped]
from pydantic import BaseModel

from core import tags as t
from core.errors import InvalidInputError, UsageError
from core.jobs import JobSpec
from core.launch import LaunchOptions
from core.prewarm import PrewarmSpec
from core.transfer import TransferRequest
from deployments import automations
from deployments.definitions import DEFINITIONS, ROOT, first_paragraph
from deployments.render import PREFECT_YAML, render
from deployments.setup import AWS_EC2_LIMIT, AWS_SSM_LIMIT, Change, deploy
from flows.cost_watch import CostWatchRequest
from flows.spot_watch import SpotWatchRequest
from flows.teardown import TeardownRequest
from sandbox import Sandbox
from tests.conftest import exported_sandbox, raw_volume

pytestmark = pytest.mark.prefect_server
T = TypeVar("T")
MODELS: dict[str, dict[str, type[BaseModel]]] = {
    "prewarm": {"spec": PrewarmSpec},
    "train-launch": {"spec": JobSpec, "options": LaunchOptions},
    "transfer": {"request": TransferRequest},
    "safe-teardown": {"request": TeardownRequest},
    "nightly-sweep": {"request": TeardownRequest},
    "spot-watch": {"request": SpotWatchRequest},
    "cost-watch": {"request": CostWatchRequest},
}
ONE_AT_A_TIME = {"spot-watch", "cost-watch", "nightly-sweep"}
WAIT_S = 120  # a flow run on a loaded 2-core machine: worker poll + a python start + the run


def api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    return str(PREFECT_API_URL.value())


async def _api(method: str, *args: Any, **kwargs: Any) -> Any:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return await getattr(client, method)(*args, **kwargs)


def api(method: str, *args: Any, **kwargs: Any) -> Any:
    """One call of Prefect's client: api("read_work_pool", "trainctl")."""
    return asyncio.run(_api(method, *args, **kwargs))


def poll(what: str, probe: Callable[[], T | None], timeout_s: float = WAIT_S) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(1.0)
    raise AssertionError(f"no {what} within {timeout_s} s")


@pytest.fixture(scope="module")
def deployed(prefect_harness: None) -> Iterator[dict[str, list[Change]]]:
    """`deploy` run, then `prefect deploy --all` from the root (the committed prefect.yaml), then `deploy` again."""
    first = asyncio.run(deploy())
    env = {**os.environ, "PREFECT_API_URL": api_url()}
    done = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    again = asyncio.run(deploy())
    try:
        yield {"first": first, "again": again}
    finally:  # the harness is shared with other files: no automation may react to their events
        for name in (automations.THRESHOLD_TEARDOWN, automations.GAVE_UP_NOTIFICATION):
            for found in api("read_automations_by_name", name):
                api("delete_automation", found.id)


def test_committed_prefect_yaml_is_what_the_definitions_render() -> None:
    assert PREFECT_YAML.read_text() == render()
    config = yaml.safe_load(PREFECT_YAML.read_text())
    assert "pull" not in config  # so `prefect deploy` records the folder it runs from (checked below, on a server)
    assert [d["name"] for d in config["deployments"]] == [d.name for d in DEFINITIONS]


def test_deploy_creates_everything_once_and_prefect_deploy_all_from_the_root_agrees(
    deployed: dict[str, list[Change]],
) -> None:
    first = {(c.kind, c.name): c.outcome for c in deployed["first"]}
    assert first[("work pool", "trainctl")] == "created"
    assert first[("concurrency limit", "aws-ec2")] == first[("concurrency limit", "aws-ssm")] == "created"
    assert {first[("deployment", d.full_name)] for d in DEFINITIONS} == {"created"}
    assert first[("automation", automations.THRESHOLD_TEARDOWN)] == "created"
    assert first[("automation", automations.GAVE_UP_NOTIFICATION)] == "skipped"  # no --notify
    # After `prefect deploy --all` rewrote every deployment from prefect.yaml, deploy finds nothing to change: the
    # yaml and the definitions give the same deployments, down to the worker's working directory.
    assert {c.outcome for c in deployed["again"]} == {"unchanged", "skipped"}

    pool = api("read_work_pool", "trainctl")
    assert pool.type == "process"
    limits = {tag: api("read_concurrency_limit_by_tag", tag) for tag in ("aws-ec2", "aws-ssm")}
    assert limits["aws-ec2"].concurrency_limit == AWS_EC2_LIMIT
    assert limits["aws-ssm"].concurrency_limit == AWS_SSM_LIMIT


def test_deployments_have_their_schedules_limits_descriptions_forms_and_working_directory(
    deployed: dict[str, list[Change]],
) -> None:
    found = {d.name: api("read_deployment_by_name", d.full_name) for d in DEFINITIONS}
    assert found["spot-watch"].schedules[0].schedule.interval == timedelta(seconds=60)
    assert found["cost-watch"].schedules[0].schedule.cron == "*/15 * * * *"
    sweep = found["nightly-sweep"]
    assert sweep.schedules[0].schedule.cron == "0 3 * * *"
    assert sweep.parameters == {"request": {"sweep": True, "dry_run": True}}
    assert TeardownRequest.model_validate(sweep.parameters["request"]).dry_run
    for name, deployment in found.items():
        assert len(deployment.schedules) == (1 if name in ONE_AT_A_TIME else 0), name
        assert deployment.work_pool_name == "trainctl"
        assert deployment.pull_steps == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}
        ], name
        assert "trainctl" in deployment.tags
        definition = next(d for d in DEFINITIONS if d.name == name)
        assert deployment.description and deployment.description.startswith(
            definition.summary or first_paragraph(definition.flow)
        )
        if name in ONE_AT_A_TIME:
            assert deployment.global_concurrency_limit.limit == 1
            assert deployment.concurrency_options.collision_strategy == "CANCEL_NEW"
        else:
            assert deployment.global_concurrency_limit is None
        _check_form(name, deployment.parameter_openapi_schema)


def _check_form(name: str, schema: dict[str, Any]) -> None:
    """Each parameter is its model, rendered as a form in the UI: every field there, every field described."""
    params = MODELS[name]
    assert set(schema["properties"]) == set(params), name
    for param, model in params.items():
        refs = [schema["properties"][param], *schema["properties"][param].get("anyOf", [])]
        assert {"$ref": f"#/definitions/{model.__name__}"} in [{"$ref": r["$ref"]} for r in refs if "$ref" in r]
        assert set(schema["definitions"][model.__name__]["properties"]) == set(model.model_fields), model
    for model_name, definition in schema["definitions"].items():
        undescribed = sorted(f for f, field in definition.get("properties", {}).items() if not field.get("description"))
        assert undescribed == [], f"{name}: {model_name} fields without a description"


def test_automations_and_the_refusals(deployed: dict[str, list[Change]]) -> None:
    from prefect.blocks.notifications import SlackWebhook

    teardown = api("read_deployment_by_name", "safe-teardown/safe-teardown")
    [auto] = api("read_automations_by_name", automations.THRESHOLD_TEARDOWN)
    assert auto.trigger.expect == {"trainctl.cost.threshold"}
    assert auto.trigger.match.model_dump() == {"prefect.resource.id": "trainctl.job.*"}
    [action] = auto.actions
    assert action.type == "run-deployment" and action.deployment_id == teardown.id
    assert action.parameters["request"]["dry_run"] is True

    # An unknown block is refused before anything is written; a saved one gets its automation, once.
    with pytest.raises(InvalidInputError, match="--notify"):
        asyncio.run(deploy(notify="slack-webhook/nobody"))
    assert api("read_automations_by_name", automations.GAVE_UP_NOTIFICATION) == []
    block_id = SlackWebhook(url="https://hooks.slack.invalid/x").save("trainctl-oncall", overwrite=True)
    changes = asyncio.run(deploy(notify="slack-webhook/trainctl-oncall"))
    assert {c.name: c.outcome for c in changes if c.kind == "automation"}[automations.GAVE_UP_NOTIFICATION] == "created"
    [notify] = api("read_automations_by_name", automations.GAVE_UP_NOTIFICATION)
    assert notify.trigger.expect == {"trainctl.job.gave-up"}
    assert [a.block_document_id for a in notify.actions] == [UUID(str(block_id))]
    again = asyncio.run(deploy(notify="slack-webhook/trainctl-oncall"))
    assert {c.outcome for c in again} == {"unchanged"}

    # serve would take the pool's deployments over: it refuses, naming them.
    from deployments.serve import check_servable, on_work_pools

    with pytest.raises(UsageError, match="spot-watch/spot-watch"):
        check_servable(asyncio.run(on_work_pools()))


@pytest.fixture(scope="module")
def worker(deployed: dict[str, list[Change]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """A sandbox, and a process worker on the pool whose flow runs reach it (as `make up` starts one)."""
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    with exported_sandbox() as cloud, log.open("w") as out:
        env = {**os.environ, "PREFECT_API_URL": api_url(), "PREFECT_WORKER_QUERY_SECONDS": "1"}
        env.pop("TRAINCTL_HOME", None)  # the worker needs nothing set: the pull step names the folder
        command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", "trainctl", "--type", "process"]
        # Started away from the repository: the flows must come from the deployments' pull step.
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent)
        try:
            yield cloud
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            print(log.read_text()[-4000:])  # shown by pytest when a test of this module failed


def finished(flow_run_id: UUID) -> Any:
    run = api("read_flow_run", flow_run_id)
    return run if run.state is not None and run.state.is_final() else None


def test_teardown_dry_runs_on_a_worker_by_hand_and_by_the_cost_threshold_automation(worker: Sandbox) -> None:
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterId,
    )
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment
    from prefect.events import emit_event

    ec2 = worker.client("ec2")
    volume = raw_volume(ec2, {t.MANAGED: "true", t.JOB: "over-budget"})

    by_hand = cast(FlowRun, run_deployment("safe-teardown/nightly-sweep", timeout=0))
    run = poll("finished nightly-sweep run", lambda: finished(by_hand.id))
    assert run.state.is_completed(), run.state

    emit_event(
        event="trainctl.cost.threshold",
        resource={"prefect.resource.id": "trainctl.job.over-budget", "prefect.resource.name": "over-budget"},
        payload={"job": "over-budget", "threshold": "per_job_usd", "amount_usd": 501.0, "limit_usd": 500.0},
    )
    teardown = api("read_deployment_by_name", "safe-teardown/safe-teardown")

    def triggered() -> Any:
        runs = api("read_flow_runs", deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[teardown.id])))
        return next((r for r in runs if r.parameters.get("request", {}).get("job") == "over-budget"), None)

    started = poll("flow run started by the automation", triggered)
    assert started.parameters["request"] == {"job": "over-budget", "bucket": None, "dry_run": True}
    run = poll("finished automated teardown", lambda: finished(started.id))
    assert run.state.is_completed(), run.state
    # A dry run: the plan is published for that run, naming the job's volume; the volume is still there.
    artifacts = api("read_artifacts", flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[started.id])))
    assert any(volume in str(a.data) for a in artifacts), [a.key for a in artifacts]
    assert ec2.describe_volumes(VolumeIds=[volume])["Volumes"][0]["State"] == "available"
