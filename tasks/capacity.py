"""Where EC2 capacity is: the AZs that offer an instance type, and EC2's spot placement scores per AZ.

Read-only. `placement_scores` answers None when the API is not there to ask (no permission, an endpoint or
partition without it), so the caller falls back to its own order; a transient error still raises, as everywhere.
"""

from __future__ import annotations

from typing import Any

from blocks.aws import load_account
from core.errors import InvalidInputError
from tasks.aws import aws_task, translate

# The API cannot be asked here: no permission, or the endpoint does not know the action. Not transient.
PLACEMENT_SCORES_UNAVAILABLE = frozenset(
    {
        "UnauthorizedOperation",
        "AccessDenied",
        "AccessDeniedException",
        "UnsupportedOperation",
        "InvalidAction",
        "UnknownOperationException",
        "NotImplemented",
        "OptInRequired",
    }
)


def offered_zones(ec2: Any, instance_type: str, *, availability_zone: str | None = None) -> list[str]:
    """The AZs of the client's region that offer `instance_type` (only `availability_zone`, when given), sorted.
    An unknown type is offered nowhere."""
    filters = [{"Name": "instance-type", "Values": [instance_type]}]
    if availability_zone:
        filters.append({"Name": "location", "Values": [availability_zone]})
    with translate("DescribeInstanceTypeOfferings"):
        pages = ec2.get_paginator("describe_instance_type_offerings").paginate(
            LocationType="availability-zone", Filters=filters
        )
        return sorted({str(o["Location"]) for page in pages for o in page["InstanceTypeOfferings"]})


@aws_task(name="zones-offering", task_run_name="zones-offering {instance_type}", tags=["aws-ec2"])
def zones_offering(instance_type: str, *, account: str | None = None) -> list[str]:
    """The AZs of the account's region where `instance_type` can be launched (DescribeInstanceTypeOfferings)."""
    return offered_zones(load_account(account).client("ec2"), instance_type)


@aws_task(name="placement-scores", task_run_name="placement-scores {instance_type} in {region}", tags=["aws-ec2"])
def placement_scores(instance_type: str, *, region: str, account: str | None = None) -> dict[str, int] | None:
    """EC2's spot placement score (1–10, higher: a spot launch more likely to succeed) of each AZ of `region` for
    one `instance_type` instance, keyed by AZ name; None when the API cannot be asked here.

    GetSpotPlacementScores names AZs by ID (`use1-az6`), which differ per account: DescribeAvailabilityZones maps
    them to this account's names. AWS documents that one or two instance types "always" score low: equal scores
    carry no preference, and the caller should keep its own order then.
    """
    aws = load_account(account)
    home = aws.resolved_region()
    if region != home:  # DescribeAvailabilityZones names the AZs of the client's own region only
        raise InvalidInputError("region", region, f"the account's region, {home}", fix="Use a client of that region")
    ec2 = aws.client("ec2")
    try:
        with translate("GetSpotPlacementScores"):
            pages = ec2.get_paginator("get_spot_placement_scores").paginate(
                InstanceTypes=[instance_type], TargetCapacity=1, SingleAvailabilityZone=True, RegionNames=[region]
            )
            scores = [s for page in pages for s in page["SpotPlacementScores"]]
    except Exception as exc:
        if getattr(exc, "code", "") in PLACEMENT_SCORES_UNAVAILABLE:
            return None
        raise
    with translate("DescribeAvailabilityZones"):
        zones = ec2.describe_availability_zones(Filters=[{"Name": "region-name", "Values": [region]}])
    names = {z["ZoneId"]: z["ZoneName"] for z in zones["AvailabilityZones"]}
    return {
        names[s["AvailabilityZoneId"]]: int(s["Score"])
        for s in scores
        if s.get("Region") == region and s.get("AvailabilityZoneId") in names
    }
