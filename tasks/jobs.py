"""The one job store: the job record (`job.json`) read with its ETag and written conditionally, and the agent's status.

Every write is an S3 conditional write (DESIGN.md section 5): `IfNoneMatch="*"` claims a new job name,
`IfMatch=<etag read>` updates a record nobody changed since it was read. Of two writers, one wins; the other gets
`JobChangedError` and writes nothing. Layout: core/jobs.py.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from blocks.aws import load_account
from core import jobs
from core.errors import UsageError
from core.jobs import JobRecord
from core.s3uri import parse_s3_uri
from tasks.aws import aws_task, translate

# S3's answers to a conditional write that lost: 412 (the ETag or existence check failed) and 409 (another
# conditional write to the key was in flight). With IfMatch, a key deleted meanwhile answers NoSuchKey.
_LOST_RACE = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})


class JobChangedError(UsageError):
    """The record changed between this command's read and its write: nothing was written."""

    def __init__(self, job: str, bucket: str) -> None:
        self.job = job
        super().__init__(
            f"job {job} was changed by another command at the same time (another launch?)",
            fix=f"Run `trainctl train status {job} --bucket {bucket}` and retry",
        )


def _location(bucket: str, job: str) -> tuple[str, str]:
    parsed = parse_s3_uri(jobs.job_record_uri(bucket, job))
    return parsed.bucket, parsed.key


@aws_task(name="read-job-record", tags=["aws-s3"])
def read_record(bucket: str, job: str, *, account: str | None = None) -> tuple[JobRecord | None, str | None]:
    """The record and its ETag; (None, None) when there is none. A record this version cannot parse (another
    tool's) reads as no record but keeps its ETag, so replacing it is still a conditional write."""
    record, etag, _ = _read_checked(bucket, job, account)
    return record, etag


def _read_checked(bucket: str, job: str, account: str | None) -> tuple[JobRecord | None, str | None, str | None]:
    """The record, its ETag, and why a stored record does not parse (None when it does, or there is none)."""
    s3_bucket, key = _location(bucket, job)
    try:
        with translate("s3:GetObject"):
            got = load_account(account).client("s3").get_object(Bucket=s3_bucket, Key=key)
            body, etag = got["Body"].read(), str(got["ETag"])
    except Exception as exc:
        if getattr(exc, "code", "") in {"NoSuchKey", "404", "NotFound"}:
            return None, None, None
        raise
    try:
        return JobRecord.model_validate(json.loads(body)), etag, None
    except ValidationError as exc:
        return (
            None,
            etag,
            "not a job record this version reads: " + str(exc.errors()[0]["msg"]).removeprefix("Value error, "),
        )
    except ValueError as exc:
        return None, etag, f"not JSON ({exc})"


@aws_task(name="write-job-record", tags=["aws-s3"])
def write_record(record: JobRecord, *, expected_etag: str | None, account: str | None = None) -> str:
    """Write the record if it is still as read (`expected_etag`; None: only if there is no record yet). Returns
    the new ETag, the one the next write of this writer expects. Raises JobChangedError when another won."""
    s3_bucket, key = _location(record.bucket, record.name)
    condition = {"IfNoneMatch": "*"} if expected_etag is None else {"IfMatch": expected_etag}
    body = json.dumps(record.model_dump(mode="json"), indent=2).encode()
    s3 = load_account(account).client("s3")
    try:
        with translate("s3:PutObject"):
            put = s3.put_object(Bucket=s3_bucket, Key=key, Body=body, ContentType="application/json", **condition)
    except Exception as exc:
        code = getattr(exc, "code", "")
        if code in _LOST_RACE or (expected_etag is not None and code in {"NoSuchKey", "404"}):
            mine = _already_written(s3, s3_bucket, key, body)
            if mine is not None:
                return mine
            raise JobChangedError(record.name, record.bucket) from exc
        raise
    return str(put["ETag"])


def _already_written(s3: Any, bucket: str, key: str, body: bytes) -> str | None:
    """The ETag of the stored record when it is byte for byte `body`: a retried write whose first try landed but
    whose answer was lost (the retry then fails its own condition) is no conflict. Records carry their creation
    and write times, so another writer's does not match (and one that did would change nothing)."""
    try:
        with translate("s3:GetObject"):
            got = s3.get_object(Bucket=bucket, Key=key)
    except Exception as exc:
        if getattr(exc, "code", "") in {"NoSuchKey", "404", "NotFound"}:
            return None
        raise
    return str(got["ETag"]) if got["Body"].read() == body else None


@aws_task(name="read-agent-status", tags=["aws-s3"])
def read_agent_status(bucket: str, job: str, attempt: int, *, account: str | None = None) -> dict[str, Any] | None:
    """The agent's status document of one attempt (core/jobs.py status_uri), or None before it wrote one."""
    return _read_document(jobs.status_uri(bucket, job, attempt), account)


@aws_task(name="read-interruption", tags=["aws-s3"])
def read_interruption(
    bucket: str, job: str, instance_id: str, *, account: str | None = None
) -> jobs.InterruptionRecord | None:
    """What the agent on `instance_id` did on its spot notice (core/jobs.py interruption_uri), or None: no notice
    handled (yet), or a document this version cannot read."""
    document = _read_document(jobs.interruption_uri(bucket, job, instance_id), account)
    try:
        return jobs.InterruptionRecord.model_validate(document) if document else None
    except ValidationError:
        return None


def _read_document(uri: str, account: str | None) -> dict[str, Any] | None:
    """A JSON object the agent wrote, or None when there is none (yet) or it is half-written or foreign."""
    parsed = parse_s3_uri(uri)
    try:
        with translate("s3:GetObject"):
            body = load_account(account).client("s3").get_object(Bucket=parsed.bucket, Key=parsed.key)["Body"].read()
    except Exception as exc:
        if getattr(exc, "code", "") in {"NoSuchKey", "404", "NotFound"}:
            return None
        raise
    try:
        data = json.loads(body)
    except ValueError:
        return None  # a half-written or foreign document: no status yet
    return data if isinstance(data, dict) else None


def current_record(
    bucket: str, job: str, *, save: bool = False, account: str | None = None
) -> tuple[JobRecord | None, str | None, dict[str, Any] | None]:
    """The record as it stands once it follows the agent's final status (core.jobs.reconcile), its ETag, and the
    agent's status. With `save`, a record that changed is written back if nobody changed it since it was read (a
    lost race means another command updated it: this view is just not saved)."""
    record, etag = read_record.fn(bucket, job, account=account)
    if record is None:
        return None, etag, None
    agent = read_agent_status.fn(bucket, job, record.attempt, account=account)
    reconciled = jobs.reconcile(record, agent)
    if reconciled is None:
        return record, etag, agent
    if save and etag is not None:
        reconciled.updated_at = datetime.now(UTC)
        with contextlib.suppress(JobChangedError):
            etag = write_record.fn(reconciled, expected_etag=etag, account=account)
    return reconciled, etag, agent


def update_attempt(
    bucket: str, job: str, attempt: int, changes: dict[str, Any], *, account: str | None = None
) -> JobRecord | None:
    """Apply `changes` (fields of the attempt; `status` and `message` also move the job, as the state machine
    allows) to the stored record if it is still the one of `attempt` (else a later launch owns the name: None,
    nothing written). An end already recorded is corrected by one seen first-hand (the flow that waited, the stop).
    One conditional write: JobChangedError if another command wrote in between."""
    stored, etag = read_record.fn(bucket, job, account=account)
    if stored is None or etag is None or stored.attempt != attempt:
        return None
    fields = dict(changes)
    status = fields.pop("status", None)
    message = fields.pop("message", None)
    if message is not None:
        fields["message"] = message
    if status is None:
        updated = stored.with_attempt(**fields)
    elif stored.finished and jobs.JobStatus(status) in jobs.FINAL_STATUSES:
        updated = stored.model_copy(update={"status": status}).with_attempt(status=status, **fields)
    else:
        updated = stored.with_status(jobs.JobStatus(status), **fields)
    updated.updated_at = datetime.now(UTC)
    write_record.fn(updated, expected_etag=etag, account=account)
    return updated


@aws_task(name="read-job-record-checked", tags=["aws-s3"])
def read_record_checked(
    bucket: str, job: str, *, account: str | None = None
) -> tuple[JobRecord | None, str | None, str | None]:
    """As read_record, plus why a stored record was not read (corrupt, or written by a newer trainctl): a caller
    that acts on jobs reports such a record and leaves it alone."""
    return _read_checked(bucket, job, account)


@aws_task(name="list-jobs", tags=["aws-s3"])
def list_jobs(bucket: str, *, account: str | None = None) -> list[str]:
    """Job names with anything under s3://<bucket>/trainctl/jobs/ (one delimited listing, paginated)."""
    s3 = load_account(account).client("s3")
    names: list[str] = []
    with translate("s3:ListObjectsV2"):
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=jobs.JOBS_ROOT + "/", Delimiter="/")
        for page in pages:
            for common in page.get("CommonPrefixes", []):
                names.append(common["Prefix"][len(jobs.JOBS_ROOT) + 1 :].strip("/"))
    return sorted(n for n in names if jobs.JOB_NAME.match(n))
