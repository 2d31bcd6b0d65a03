"""The AWS actions of teardown that no other task module has: terminate any managed instance (not only one this
run launched), wait for termination, and delete an exact list of S3 objects.

Each re-checks its precondition against AWS at the moment it acts (the plan may be minutes old) and refuses
rather than forcing; each is idempotent (NotFound / already terminated = done), so a re-run converges.
"""

from __future__ import annotations

from datetime import datetime

from blocks.aws import load_account
from core.errors import SafetyRefusalError
from core.ids import kind_of, validate_id
from core.models import Instance, ManagedResource, Snapshot, Volume
from tasks.aws import aws_task, translate
from tasks.s3 import abort_uploads, client, delete_keys, list_objects
from tasks.volumes import WAIT, get_instance

GONE_STATES = {"shutting-down", "terminated"}


def _code(exc: BaseException) -> str:
    return str(getattr(exc, "code", "") or "")


@aws_task(name="terminate-instance", tags=["aws-ec2"])
def terminate_instance(instance_id: str, *, account: str | None = None) -> bool:
    """Terminate a managed, unprotected instance that has no persistent or protected volume attached any more.

    Returns False when it was already gone or terminating. The volume check is rule 1 enforced at the last
    moment: if the detach step did not happen (failed, skipped), terminating is refused, never forced.
    """
    ec2 = load_account(account).client("ec2")
    try:
        instance = get_instance(ec2, instance_id)
    except Exception as exc:
        if _code(exc) == "InvalidInstanceID.NotFound":
            return False
        raise
    if instance.state in GONE_STATES:
        return False
    if not instance.managed or instance.protected:
        raise SafetyRefusalError(
            f"refusing to terminate {instance_id}: it is {'protected' if instance.managed else 'not managed'}"
        )
    with translate("DescribeVolumes"):
        data = ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [instance_id]}])["Volumes"]
    kept = [v.id for v in map(Volume.from_aws, data) if v.attached and (v.persistent or v.protected)]
    if kept:
        raise SafetyRefusalError(
            f"refusing to terminate {instance_id}: persistent/protected volume(s) {', '.join(kept)} still attached",
            fix="The detach step must succeed first; run the teardown again.",
        )
    with translate("TerminateInstances"):
        ec2.terminate_instances(InstanceIds=[instance_id])
    return True


@aws_task(name="wait-terminated", tags=["aws-ec2"])
def wait_terminated(instance_id: str, *, account: str | None = None) -> None:
    ec2 = load_account(account).client("ec2")
    validate_id("instance", instance_id)
    try:
        with translate("wait instance_terminated"):
            ec2.get_waiter("instance_terminated").wait(InstanceIds=[instance_id], WaiterConfig=WAIT)
    except Exception as exc:
        if "NotFound" not in _code(exc):  # forgotten by EC2 already: terminated long ago
            raise


@aws_task(name="delete-objects", tags=["aws-s3"])
def delete_objects(
    bucket: str, keys: list[str], *, not_after: datetime, account: str | None = None
) -> dict[str, list[str]]:
    """Delete exactly `keys`, skipping any object modified after `not_after` (rewritten since the plan: its
    recency must be judged again). Missing keys count as deleted. Returns {"deleted": [...], "skipped": [...]}."""
    s3 = client(account)
    current: dict[str, datetime] = {}
    # A key's folder is its listing prefix; a key without a folder is listed by its own name.
    prefixes = sorted({k.rsplit("/", 1)[0] + "/" if "/" in k else k for k in keys})
    for prefix in prefixes:
        current.update((obj["Key"], obj["LastModified"]) for obj in list_objects(s3, bucket, prefix))
    wanted = set(keys)
    skipped = sorted(k for k in wanted if k in current and current[k] > not_after)
    deletable = sorted(k for k in wanted if k in current and k not in skipped)
    delete_keys(s3, bucket, deletable)
    return {"deleted": sorted(wanted - set(skipped)), "skipped": skipped}


@aws_task(name="abort-upload", tags=["aws-s3"])
def abort_upload(bucket: str, key: str, upload_id: str, *, account: str | None = None) -> bool:
    """Abort one unfinished multipart upload (its stored parts go). False when it was completed or aborted since."""
    s3 = client(account)
    return abort_uploads(s3, bucket, key, keys={key}, upload_ids={upload_id}) > 0


@aws_task(name="describe-unmanaged", tags=["aws-ec2"])
def describe_unmanaged(ids: list[str], *, account: str | None = None) -> dict[str, ManagedResource]:
    """Of IDs the managed inventory does not hold, those that exist here but are not managed (one call per kind).

    So the plan can say "not managed" instead of "not found". Malformed IDs are skipped (the planner names them);
    a terminated instance counts as gone.
    """
    ec2 = load_account(account).client("ec2")
    by_kind: dict[str, list[str]] = {}
    for rid in ids:
        kind = kind_of(rid.strip())
        if kind in {"instance", "volume", "snapshot"}:
            by_kind.setdefault(kind, []).append(rid.strip())
    found: list[ManagedResource] = []
    for kind, wanted in by_kind.items():
        # Asking for all IDs at once fails the whole call on one unknown ID; a filter returns what exists.
        if kind == "instance":
            with translate("DescribeInstances"):
                pages = ec2.get_paginator("describe_instances").paginate(
                    Filters=[{"Name": "instance-id", "Values": wanted}]
                )
                found += [Instance.from_aws(i) for p in pages for r in p["Reservations"] for i in r["Instances"]]
        elif kind == "volume":
            with translate("DescribeVolumes"):
                pages = ec2.get_paginator("describe_volumes").paginate(
                    Filters=[{"Name": "volume-id", "Values": wanted}]
                )
                found += [Volume.from_aws(v) for p in pages for v in p["Volumes"]]
        else:
            with translate("DescribeSnapshots"):
                pages = ec2.get_paginator("describe_snapshots").paginate(
                    OwnerIds=["self"], Filters=[{"Name": "snapshot-id", "Values": wanted}]
                )
                found += [Snapshot.from_aws(s) for p in pages for s in p["Snapshots"]]
    return {r.id: r for r in found if not r.managed and r.state not in GONE_STATES}
