"""The events trainctl emits: their names, and the resource + related list each one carries (pure).

A job's life is told by events whose resource is the job (`trainctl.job.<name>`) and whose related resources are
what the job holds at that moment: its instance (`aws.ec2.instance.<id>`, role `instance`), its volumes (role
`volume`), snapshots (role `snapshot`) and its bucket (`aws.s3.bucket.<name>`, role `bucket`). Automations and the
UI's event feed follow a job by its resource id; DESIGN.md section 6 lists every event with its payload.
"""

from __future__ import annotations

from collections.abc import Iterable

# -- a job's life (resource: the job) -----------------------------------------------------------------------------
JOB_LAUNCHED = "trainctl.job.launched"  # train-launch: attempt 1 runs its trainer
JOB_FINISHED = "trainctl.job.finished"  # spot-watch: the trainer exited 0 (the record says succeeded)
JOB_FAILED = "trainctl.job.failed"  # spot-watch: the trainer failed, the instance was lost, or a launch stalled
JOB_STOPPED = "trainctl.job.stopped"  # `trainctl job stop`, or cost-watch's budget / idle-GPU stop
JOB_INTERRUPTED = "trainctl.job.interrupted"  # spot-watch: spot took the instance; the checkpoint is in S3
JOB_RESUMED = "trainctl.job.resumed"  # spot-watch: the next attempt was launched from the checkpoint
JOB_GAVE_UP = "trainctl.job.gave-up"  # spot-watch: no attempt, capacity or checkpoint left (automations use it)
JOB_TORN_DOWN = "trainctl.job.torn-down"  # safe-teardown acted on the job's resources (never on a dry run)

# -- warnings and money -------------------------------------------------------------------------------------------
SPOT_WARNING = "trainctl.spot.warning"  # spot-watch: a spot notice on a live attempt (resource: the job)
COST_THRESHOLD = "trainctl.cost.threshold"  # cost-watch: a threshold crossed (automations use it)

JOB_EVENTS = (
    JOB_LAUNCHED,
    JOB_FINISHED,
    JOB_FAILED,
    JOB_STOPPED,
    JOB_INTERRUPTED,
    JOB_RESUMED,
    JOB_GAVE_UP,
    JOB_TORN_DOWN,
)
ALL_EVENTS = (*JOB_EVENTS, SPOT_WARNING, COST_THRESHOLD)

MAX_RELATED = 20  # resources named in one event (a threshold over 1,000 resources names the costliest)

_KINDS = {"i-": "instance", "vol-": "volume", "snap-": "snapshot"}


def job_resource(job: str) -> dict[str, str]:
    """The job as an event's resource."""
    return {"prefect.resource.id": f"trainctl.job.{job}", "prefect.resource.name": job}


def region_resource(region: str) -> dict[str, str]:
    """A region's spending as an event's resource (a threshold on no one job)."""
    return {"prefect.resource.id": f"trainctl.cost.{region}", "prefect.resource.name": region}


def related(resource_ids: Iterable[str | None], *, bucket: str | None = None) -> list[dict[str, str]]:
    """EC2 ids (instances, volumes, snapshots; others and None skipped, duplicates once) and the bucket as an
    event's related resources, at most MAX_RELATED."""
    out: list[dict[str, str]] = []
    seen: set[str] = set()
    for rid in resource_ids:
        kind = next((k for prefix, k in _KINDS.items() if rid and rid.startswith(prefix)), None)
        if rid is None or kind is None or rid in seen or len(out) >= MAX_RELATED:
            continue
        seen.add(rid)
        out.append({"prefect.resource.id": f"aws.ec2.{kind}.{rid}", "prefect.resource.role": kind})
    if bucket:
        out.append({"prefect.resource.id": f"aws.s3.bucket.{bucket}", "prefect.resource.role": "bucket"})
    return out
