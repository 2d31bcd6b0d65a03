"""bench/inventory.py at a tiny size in the sandbox: it makes the resources it says, counts the pass's AWS calls from
botocore's events, and the pass keeps its state in S3 as cost-watch does."""

from __future__ import annotations

import pytest

from bench import inventory
from core import tags as t
from flows.cost_watch import STATE_KEY
from tests.conftest import exported_sandbox

pytestmark = pytest.mark.sandbox


def test_the_inventory_bench_counts_each_calls_of_a_pass_over_the_resources_it_made() -> None:
    with exported_sandbox(boot_delay=0.0) as cloud:
        base, big = inventory.measure(cloud, resources=12, baseline=3)
        ec2 = cloud.client("ec2")
        managed = [{"Name": f"tag:{t.MANAGED}", "Values": ["true"]}]
        made = [
            len([i for r in ec2.describe_instances(Filters=managed)["Reservations"] for i in r["Instances"]]),
            len(ec2.describe_volumes(Filters=managed)["Volumes"]),
            len(ec2.describe_snapshots(OwnerIds=["self"], Filters=managed)["Snapshots"]),
        ]
        assert sum(made) == 12 and made == [4, 4, 4]
        assert cloud.client("s3").head_object(Bucket=inventory.BUCKET, Key=STATE_KEY)["ContentLength"] > 0
    for measured, resources in ((base, 3), (big, 12)):
        assert measured.resources == resources and measured.priced + measured.unknown == resources
        # One query per managed filter set (trainctl:managed, CreatedBy=runctl) and resource type: 2 each.
        assert [measured.calls[f"ec2.{op}"] for op in inventory.RESOURCE_CALLS] == [2, 2, 2]
        assert measured.calls["s3.PutObject"] == 1 and measured.cpu_s > 0
    assert inventory.report(base, big)
