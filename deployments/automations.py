"""trainctl's automations, as code: what the Prefect server does on its own when trainctl's events arrive.

- `trainctl.cost.threshold` about a job (resource `trainctl.job.<job>`, emitted by flows/cost_watch.py): run the
  safe-teardown deployment in dry run for that job, so the plan of what stopping it would remove is published as
  artifacts for a human to read. Region-wide crossings (resource `trainctl.cost.<region>`) name no job: no plan.
- `trainctl.job.gave-up` (flows/spot_watch.py: recovery gave up): a notification through a notification block,
  when one is given (`trainctl deploy --notify TYPE/NAME`); without one, that automation is not created.

Both are created or updated by name (deployments/setup.py); the names are the keys, so keep them stable.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from prefect.events.actions import RunDeployment, SendNotification
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

from core import events as ev

THRESHOLD_TEARDOWN = "trainctl: cost threshold → teardown plan (dry run)"
GAVE_UP_NOTIFICATION = "trainctl: job gave up → notification"
JOB_RESOURCES = "trainctl.job.*"


def on_each_job_event(event: str) -> EventTrigger:
    """Fires once per event of that name whose resource is a job (core/events.py names them)."""
    return EventTrigger(
        expect={event}, match={"prefect.resource.id": JOB_RESOURCES}, posture=Posture.Reactive, threshold=1
    )


def threshold_teardown(teardown_deployment_id: UUID) -> AutomationCore:
    """On each job's threshold crossing, a dry-run teardown of that job: its plan, nothing removed."""
    return AutomationCore(
        name=THRESHOLD_TEARDOWN,
        description="A job crossed a cost threshold: publish the plan of tearing it down (dry run; nothing removed).",
        trigger=on_each_job_event(ev.COST_THRESHOLD),
        actions=[
            RunDeployment(
                source="selected",
                deployment_id=teardown_deployment_id,
                # Rendered by the server from the event; a payload without a bucket gives null (no bucket).
                parameters={
                    "request": {
                        "job": "{{ event.payload.job }}",
                        "bucket": "{{ event.payload.bucket | default(None) }}",
                        "dry_run": True,
                    }
                },
            )
        ],
    )


def gave_up_notification(block_document_id: UUID) -> AutomationCore:
    """When spot-watch gives a job up (no capacity, attempts used up), tell a human through the block."""
    return AutomationCore(
        name=GAVE_UP_NOTIFICATION,
        description="spot-watch gave a job up: it will not be resumed without a human.",
        trigger=on_each_job_event(ev.JOB_GAVE_UP),
        actions=[
            SendNotification(
                block_document_id=block_document_id,
                subject="trainctl: job {{ event.payload.job }} gave up",
                body="spot-watch gave up on job {{ event.payload.job }} (bucket {{ event.payload.bucket }}, "
                "attempt {{ event.payload.attempt }}): {{ event.payload.reason }}. "
                "Relaunch it with `trainctl train launch`, or tear it down with `trainctl teardown --job`.",
            )
        ],
    )


def comparable(automation: AutomationCore) -> dict[str, Any]:
    """What an automation does, without the ids the server assigns (its own, its trigger's)."""
    dumped = automation.model_dump(
        mode="json",
        include={"name", "description", "enabled", "trigger", "actions", "actions_on_trigger", "actions_on_resolve"},
    )
    dumped["trigger"].pop("id", None)
    return dumped
