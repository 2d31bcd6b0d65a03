"""Emitting trainctl's events (names and shapes: core/events.py): every flow emits through here, so a job's
events all carry the job as the resource and what it holds as related resources."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prefect.events import emit_event

from core.events import job_resource, related


def emit(event: str, resource: dict[str, str], related_to: list[dict[str, str]], payload: dict[str, Any]) -> None:
    """One event to Prefect (nothing is sent when no Prefect API is configured; Prefect decides)."""
    emit_event(event=event, resource=resource, related=related_to, payload=payload)


def emit_job(
    event: str,
    job: str,
    *,
    bucket: str | None,
    resource_ids: Iterable[str | None] = (),
    **payload: Any,
) -> None:
    """An event of job `job`'s life: the job as the resource; `resource_ids` (instance, volumes, snapshots) and the
    bucket related; the payload always names the job and the bucket."""
    body = {"job": job, "bucket": bucket, **payload}
    emit(event, job_resource(job), related(resource_ids, bucket=bucket), body)
