"""A job's S3 state for teardown: its record's status, its checkpoints (with ages, complete or not) and its staging
objects, read from the layout in core/jobs.py. Listing only: deletions go through tasks/s3.py.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from core import jobs
from core.jobs import CheckpointSet, JobStorage
from core.models import StoredObject
from core.s3uri import parse_s3_uri
from core.teardown import BucketLeftovers, PendingUpload
from tasks.aws import aws_task
from tasks.jobs import current_record, list_jobs
from tasks.s3 import client, list_objects, list_uploads

_CKPT = re.compile(r"^ckpt-(\d+)/")
_STATUS = re.compile(r"^attempt-(\d+)\.json$")  # core/jobs.py status_uri


def _objects(s3: Any, bucket: str, prefix: str) -> list[StoredObject]:
    return [
        StoredObject(key=obj["Key"], size=int(obj["Size"]), last_modified=obj["LastModified"])
        for obj in list_objects(s3, bucket, prefix)
    ]


def group_checkpoints(bucket: str, prefix: str, objects: list[StoredObject]) -> list[CheckpointSet]:
    """Objects under `<prefix>ckpt-<seq>/` as one CheckpointSet each; complete iff its MANIFEST.json exists."""
    groups: dict[int, tuple[str, list[StoredObject]]] = {}
    for obj in objects:
        match = _CKPT.match(obj.key[len(prefix) :])
        if match:
            folder = prefix + match.group(0)
            groups.setdefault(int(match.group(1)), (folder, []))[1].append(obj)
    return [
        CheckpointSet(
            bucket=bucket,
            prefix=folder,
            seq=seq,
            objects=objs,
            complete=any(o.key == folder + jobs.MANIFEST_NAME for o in objs),
        )
        for seq, (folder, objs) in sorted(groups.items())
    ]


def _heartbeats(s3: Any, bucket: str, job: str) -> dict[int, datetime]:
    """attempt -> when its agent last wrote its status (every heartbeat rewrites it): one listing per job."""
    prefix = jobs.job_prefix(bucket, job).join("status").prefix
    beats: dict[int, datetime] = {}
    for obj in _objects(s3, bucket, prefix):
        match = _STATUS.match(obj.key[len(prefix) :])
        if match:
            beats[int(match.group(1))] = obj.last_modified
    return beats


def read_job_storage(bucket: str, job: str, *, account: str | None = None) -> JobStorage:
    """One job's S3 state (the plain function behind `list_job_storage`)."""
    s3 = client(account)
    # The record as the agent left it: a job whose agent said it ended is not `running` to teardown.
    record, _, _ = current_record(bucket, job, account=account)
    checkpoint_uri = (record.checkpoint_uri if record else None) or jobs.default_checkpoint_uri(bucket, job)
    ckpt = parse_s3_uri(str(checkpoint_uri), field="checkpoint_uri")
    staging = jobs.job_prefix(bucket, job).join("staging").prefix
    return JobStorage(
        job=job,
        bucket=bucket,
        status=record.status.value if record else None,
        attempt=record.attempt if record else None,
        instance_id=record.instance_id if record else None,
        heartbeats=_heartbeats(s3, bucket, job) if record else {},
        staging_prefix=staging,
        staging=_objects(s3, bucket, staging),
        checkpoint_prefix=ckpt.prefix,
        checkpoints=group_checkpoints(ckpt.bucket, ckpt.prefix, _objects(s3, ckpt.bucket, ckpt.prefix)),
    )


@aws_task(name="list-job-storage", task_run_name="list-job-storage s3://{bucket}", tags=["aws-s3"])
def list_job_storage(
    bucket: str, job_names: list[str] | None = None, *, account: str | None = None
) -> list[JobStorage]:
    """The S3 state of the named jobs (None: every job with a folder in the bucket)."""
    names = sorted(set(job_names)) if job_names is not None else list_jobs.fn(bucket, account=account)
    return [read_job_storage(bucket, name, account=account) for name in names if jobs.JOB_NAME.match(name)]


@aws_task(name="list-bucket-leftovers", task_run_name="list-leftovers s3://{bucket}", tags=["aws-s3"])
def list_bucket_leftovers(bucket: str, *, account: str | None = None) -> BucketLeftovers:
    """What killed copies leave in the bucket: objects under trainctl/staging/ (transfers without a job) and every
    unfinished multipart upload under trainctl/. Two paginated listings, whatever their number."""
    s3 = client(account)
    left = BucketLeftovers(bucket=bucket)
    return left.model_copy(
        update={
            "staging": _objects(s3, bucket, left.staging_prefix),
            "uploads": [
                PendingUpload(bucket=bucket, key=key, upload_id=upload_id, initiated=initiated)
                for key, upload_id, initiated in list_uploads(s3, bucket, "trainctl/")
            ],
        }
    )


@aws_task(name="latest-checkpoint", task_run_name="latest-checkpoint {checkpoint_uri}", tags=["aws-s3"])
def latest_checkpoint(checkpoint_uri: str, *, account: str | None = None) -> CheckpointSet | None:
    """The latest complete checkpoint under `checkpoint_uri` (one listing), or None when there is none."""
    ckpt = parse_s3_uri(checkpoint_uri, field="checkpoint_uri")
    s3 = client(account)
    complete = [
        c for c in group_checkpoints(ckpt.bucket, ckpt.prefix, _objects(s3, ckpt.bucket, ckpt.prefix)) if c.complete
    ]
    return complete[-1] if complete else None
