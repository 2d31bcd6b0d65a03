"""EBS operations for the CLI (and scripts): volumes and snapshots, one AWS operation each, and the read-only
checks that run before the prewarm flow starts.

The operations are the plain functions behind the tasks of tasks/ebs.py (`task.fn`): a task called outside a flow
would start Prefect's API (~20 s) to record a single AWS call. They take an AwsAccount block *name* (None: the AWS
environment) and check every rule themselves; `plan_volume_delete` is the verdict `delete_volume` acts on, for a
user to read and confirm first.
"""

from __future__ import annotations

from datetime import timedelta

from blocks.aws import load_account
from core.prewarm import PrewarmSpec, check_existing_volume, check_given_instance
from core.safety import DEFAULT_MIN_AGE_MINUTES
from tasks import ebs
from tasks.ebs import DeleteResult, VolumeDeletePlan, plan_volume_delete
from tasks.ec2_instances import get_instance

__all__ = [
    "DeleteResult",
    "VolumeDeletePlan",
    "attach_volume",
    "check_prewarm_targets",
    "create_volume",
    "default_min_age",
    "delete_volume",
    "detach_volume",
    "list_snapshots",
    "move_volume",
    "plan_volume_delete",
    "restore_snapshot",
    "snapshot_volume",
]

create_volume = ebs.create_volume.fn
attach_volume = ebs.attach_volume.fn
detach_volume = ebs.detach_volume.fn
delete_volume = ebs.delete_volume.fn
snapshot_volume = ebs.create_snapshot.fn
list_snapshots = ebs.list_snapshots.fn
restore_snapshot = ebs.restore_snapshot.fn
move_volume = ebs.move_volume.fn


def default_min_age() -> timedelta:
    """The SafetyPolicy default (5 minutes), read without Prefect: the CLI names no policy block here."""
    return timedelta(minutes=DEFAULT_MIN_AGE_MINUTES)


def check_prewarm_targets(spec: PrewarmSpec) -> None:
    """The prewarm flow's own read-only checks of an existing volume and a given instance, before Prefect starts
    (~10 s): someone else's volume is refused at once. The flow checks again (deployments run it without the CLI)."""
    if spec.volume_id is None and spec.instance_id is None:
        return
    ec2 = load_account(spec.account).client("ec2")
    zone = spec.availability_zone
    if spec.volume_id is not None:
        volume = ebs.get_volume(ec2, spec.volume_id)
        check_existing_volume(volume, spec)
        zone = volume.availability_zone
    if spec.instance_id is not None:
        check_given_instance(get_instance(ec2, spec.instance_id), zone)
