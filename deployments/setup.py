"""`trainctl deploy`: everything trainctl needs on a Prefect server, created or brought up to date, idempotently.

In order: the work pool (process type, created only if missing: an existing pool of any type is used as it is, so
an ECS or Kubernetes pool named here works too), the tag-based concurrency limits the AWS tasks carry (`aws-ec2`,
`aws-ssm`), every deployment of deployments/definitions.py on that pool, and the automations
(deployments/automations.py). Each thing is compared with what the server has and written only when it differs,
so a second run changes nothing and says so. Everything is checked before anything is written: the API is
configured, the notification block exists, no deployment of these names is served (deployments/serve.py says why
serve and a work pool cannot share a name).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.responses import DeploymentResponse
from prefect.deployments.runner import RunnerDeployment
from prefect.events.schemas.automations import AutomationCore
from prefect.exceptions import ObjectNotFound

from core.errors import InvalidInputError, UsageError
from deployments import automations
from deployments.definitions import DEFINITIONS, WORK_POOL, by_name, runner_deployment

# Tag-based limits on concurrently running task runs (the AWS tasks carry these tags). EC2 throttles per account
# and region, for every client of the account at once: 10 concurrent EC2 calls (each task retries and its waiters
# poll) leave room for a few jobs launching and tearing down together while a sweep over hundreds of resources
# cannot make the account's other users see RequestLimitExceeded.
AWS_EC2_LIMIT = 10
# SSM tasks mostly wait on a command (polling GetCommandInvocation); SendCommand has its own, lower, quota. 20 lets
# a transfer to several instances and a prewarm run side by side without queueing behind each other's waits.
AWS_SSM_LIMIT = 20
TAG_LIMITS = {"aws-ec2": AWS_EC2_LIMIT, "aws-ssm": AWS_SSM_LIMIT}

Outcome = Literal["created", "updated", "unchanged", "skipped"]


@dataclass(frozen=True)
class Change:
    kind: str  # work pool, concurrency limit, deployment, automation
    name: str
    outcome: Outcome
    detail: str = ""


def check_api() -> str:
    """The Prefect API deploy talks to; without one, Prefect would start a temporary server and lose it all."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise UsageError(
            "no Prefect server to deploy to: PREFECT_API_URL is not set",
            fix="Start one (`trainctl server up`, or `prefect server start`) and set PREFECT_API_URL to its API "
            "(e.g. http://127.0.0.1:4200/api), or point it at Prefect Cloud",
        )
    return str(url)


def parse_block(value: str, field: str = "--notify") -> tuple[str, str]:
    """`TYPE/NAME` of a notification block (e.g. `slack-webhook/oncall`) → (type slug, name)."""
    slug, _, name = value.partition("/")
    if not slug or not name or "/" in name:
        raise InvalidInputError(
            field, value, "TYPE/NAME of a notification block, e.g. slack-webhook/oncall", fix="See `prefect block ls`"
        )
    return slug, name


async def deploy(pool: str = WORK_POOL, notify: str | None = None) -> list[Change]:
    """Bring the server to what trainctl defines; the changes made (or found unnecessary), in order."""
    check_api()
    async with get_client() as client:
        block_id = await _notification_block(client, notify) if notify else None
        existing = await _existing_deployments(client)
        wanted = {d.full_name: runner_deployment(d, on_work_pool=True) for d in DEFINITIONS}
        changes = [await _work_pool(client, pool)]
        changes += [await _tag_limit(client, tag, limit) for tag, limit in TAG_LIMITS.items()]
        for name, deployment in wanted.items():
            changes.append(await _deployment(deployment, existing.get(name), pool))
        teardown = await client.read_deployment_by_name(by_name("safe-teardown").full_name)
        changes.append(await _automation(client, automations.threshold_teardown(teardown.id)))
        if block_id is not None:
            changes.append(await _automation(client, automations.gave_up_notification(block_id)))
        else:
            changes.append(
                Change("automation", automations.GAVE_UP_NOTIFICATION, "skipped", "no notification block (--notify)")
            )
    return changes


async def _notification_block(client: PrefectClient, value: str) -> UUID:
    slug, name = parse_block(value)
    try:
        document = await client.read_block_document_by_name(name, block_type_slug=slug, include_secrets=False)
    except ObjectNotFound:
        raise InvalidInputError(
            "--notify",
            value,
            "a saved notification block",
            fix="Create it in the UI (Blocks) or list them with `prefect block ls`",
        ) from None
    return document.id


async def _existing_deployments(client: PrefectClient) -> dict[str, DeploymentResponse]:
    """The definitions' deployments the server has; a served one (no work pool) is refused before any write."""
    found: dict[str, DeploymentResponse] = {}
    for definition in DEFINITIONS:
        try:
            found[definition.full_name] = await client.read_deployment_by_name(definition.full_name)
        except ObjectNotFound:
            continue
    served = sorted(name for name, d in found.items() if not d.work_pool_name)
    if served:
        raise UsageError(
            f"these deployments are served by a process (`python -m deployments.serve`), not on a work pool: "
            f"{', '.join(served)}; deploying would take them over",
            fix="Stop the serve process and delete them (`prefect deployment delete NAME`), then deploy again",
        )
    return found


async def _work_pool(client: PrefectClient, name: str) -> Change:
    try:
        pool = await client.read_work_pool(name)
    except ObjectNotFound:
        from prefect.workers.process import ProcessWorker

        template = ProcessWorker.get_default_base_job_template()
        await client.create_work_pool(WorkPoolCreate(name=name, type="process", base_job_template=template))
        return Change("work pool", name, "created", "type process")
    return Change("work pool", name, "unchanged", f"type {pool.type}")


async def _tag_limit(client: PrefectClient, tag: str, limit: int) -> Change:
    try:
        current = (await client.read_concurrency_limit_by_tag(tag)).concurrency_limit
    except ObjectNotFound:
        current = None
    if current == limit:
        return Change("concurrency limit", tag, "unchanged", f"{limit} task runs")
    await client.create_concurrency_limit(tag=tag, concurrency_limit=limit)  # an upsert on the tag
    return Change("concurrency limit", tag, "created" if current is None else "updated", f"{limit} task runs")


def wanted_fields(deployment: RunnerDeployment, pool: str) -> dict[str, Any]:
    limit = deployment.concurrency_limit
    strategy = deployment.concurrency_options.collision_strategy if deployment.concurrency_options else None
    return {
        "description": deployment.description,
        "tags": sorted(deployment.tags),
        "parameters": deployment.model_dump(mode="json", include={"parameters"})["parameters"],
        "entrypoint": deployment.entrypoint,
        "work pool": pool,
        "pull steps": [deployment.storage.to_pull_step()] if deployment.storage else [],
        "schedules": [s.schedule for s in deployment.schedules or []],
        "concurrency": (limit, strategy.value if limit and strategy else None),
        "parameter schema": deployment._parameter_openapi_schema.model_dump(exclude_unset=True),
    }


def current_fields(deployment: DeploymentResponse) -> dict[str, Any]:
    limit = deployment.global_concurrency_limit.limit if deployment.global_concurrency_limit else None
    strategy = deployment.concurrency_options.collision_strategy if deployment.concurrency_options else None
    return {
        "description": deployment.description,
        "tags": sorted(deployment.tags),
        "parameters": deployment.parameters,
        "entrypoint": deployment.entrypoint,
        "work pool": deployment.work_pool_name,
        "pull steps": deployment.pull_steps or [],
        "schedules": [s.schedule for s in deployment.schedules],
        "concurrency": (limit, strategy.value if limit and strategy else None),
        "parameter schema": deployment.parameter_openapi_schema,
    }


async def _deployment(wanted: RunnerDeployment, existing: DeploymentResponse | None, pool: str) -> Change:
    name = f"{wanted.flow_name}/{wanted.name}"
    if existing is None:
        await wanted.aapply(work_pool_name=pool)
        return Change("deployment", name, "created", f"on {pool}")
    want, have = wanted_fields(wanted, pool), current_fields(existing)
    differ = [field for field in want if want[field] != have[field]]
    if not differ:
        return Change("deployment", name, "unchanged", f"on {pool}")
    await wanted.aapply(work_pool_name=pool)
    return Change("deployment", name, "updated", ", ".join(differ))


async def _automation(client: PrefectClient, wanted: AutomationCore) -> Change:
    found = await client.read_automations_by_name(wanted.name)
    if not found:
        await client.create_automation(wanted)
        return Change("automation", wanted.name, "created")
    if automations.comparable(found[0]) == automations.comparable(wanted):
        return Change("automation", wanted.name, "unchanged")
    await client.update_automation(found[0].id, wanted)
    return Change("automation", wanted.name, "updated")
