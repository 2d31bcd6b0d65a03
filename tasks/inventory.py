"""Inventory: every managed instance, volume and snapshot of the account's region, with relations resolved; and,
for IDs it does not hold, which exist unmanaged.

One paginated query per tag filter set per resource type (core.tags.managed_filter_sets), so the number of AWS
calls depends on pages, never on the number of resources.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from blocks.aws import AwsConfig, load_account
from core import tags as t
from core.ids import kind_of
from core.models import Instance, Inventory, ManagedResource, Snapshot, Volume
from tasks.aws import aws_task, translate
from tasks.ec2_instances import GONE_STATES

# Every state but terminated: a terminated instance is gone for good and only listed on request.
LIVE_INSTANCE_STATES = ["pending", "running", "shutting-down", "stopping", "stopped"]

# The largest page each API allows, so a normal account is one page per query.
_PAGE_SIZE = {"describe_instances": 1000, "describe_volumes": 500, "describe_snapshots": 1000}


def _pages(ec2: Any, operation: str, extra_filters: list[dict[str, Any]], **params: Any) -> Iterator[dict[str, Any]]:
    """Every page of `operation` for each managed filter set (EC2 ANDs filters, so "OR" is one query per set)."""
    paginator = ec2.get_paginator(operation)
    for filter_set in t.managed_filter_sets():
        yield from paginator.paginate(
            Filters=[*filter_set, *extra_filters],
            PaginationConfig={"PageSize": _PAGE_SIZE[operation]},
            **params,
        )


def collect_inventory(aws: AwsConfig, *, now: datetime | None = None, include_terminated: bool = False) -> Inventory:
    """List the managed resources of `aws` and link them (volume → instance, snapshot → volume)."""
    taken_at = now or datetime.now(UTC)
    region = aws.resolved_region()
    ec2 = aws.client("ec2")
    instances: dict[str, Instance] = {}
    volumes: dict[str, Volume] = {}
    snapshots: dict[str, Snapshot] = {}

    state_filter = [] if include_terminated else [{"Name": "instance-state-name", "Values": LIVE_INSTANCE_STATES}]
    # A resource matching both filter sets (trainctl:managed and CreatedBy=runctl) is kept once, by ID. The
    # is_managed check is the same rule client-side, so a looser server filter can never widen what we touch.
    with translate("ec2:DescribeInstances"):
        for page in _pages(ec2, "describe_instances", state_filter):
            for reservation in page.get("Reservations", []):
                for data in reservation.get("Instances", []):
                    if t.is_managed(t.from_aws(data.get("Tags"))):
                        instances.setdefault(data["InstanceId"], Instance.from_aws(data))
    with translate("ec2:DescribeVolumes"):
        for page in _pages(ec2, "describe_volumes", []):
            for data in page.get("Volumes", []):
                if t.is_managed(t.from_aws(data.get("Tags"))):
                    volumes.setdefault(data["VolumeId"], Volume.from_aws(data))
    with translate("ec2:DescribeSnapshots"):
        for page in _pages(ec2, "describe_snapshots", [], OwnerIds=["self"]):
            for data in page.get("Snapshots", []):
                if t.is_managed(t.from_aws(data.get("Tags"))):
                    snapshots.setdefault(data["SnapshotId"], Snapshot.from_aws(data))

    return Inventory.assemble(
        region=region,
        taken_at=taken_at,
        instances=list(instances.values()),
        volumes=list(volumes.values()),
        snapshots=list(snapshots.values()),
    )


@aws_task(name="inventory", tags=["aws-ec2"])
def inventory(account: str | None = None, include_terminated: bool = False) -> Inventory:
    """Prefect task: the inventory of the AwsAccount block `account` (None: the standard AWS environment)."""
    return collect_inventory(load_account(account), include_terminated=include_terminated)


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
