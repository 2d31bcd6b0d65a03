"""bench/data.py runs end to end in the sandbox, at a small size: every strategy feeds the trainer the dataset, one
prewarm instance is launched in all (the second prewarmed-ebs job and the existing-ebs one reuse its volume), and
the table holds each strategy's measured time next to the advice's estimate. Six launches and a prewarm (~3 min):
`slow`, run with `pytest -m slow`."""

from __future__ import annotations

import pytest

from bench import data
from core import tags as t
from core.data import ATTACH_S, PREWARM_OVERHEAD_S
from tests.conftest import exported_sandbox

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]


def test_the_data_bench_runs_every_strategy_on_one_dataset_and_reuses_the_prewarmed_volume(
    prefect_harness: None,
) -> None:
    options = data.Options(files=12, mb=1, boot=0.2, workers=4)
    with exported_sandbox(boot_delay=options.boot) as cloud:
        run = data.measure(cloud, options)
        ec2 = cloud.client("ec2")
        # What happened in AWS: one prewarm instance; every instance ended with its job; one dataset volume, kept.
        roles: dict[str, int] = {}
        for reservation in ec2.describe_instances()["Reservations"]:
            for instance in reservation["Instances"]:
                assert instance["State"]["Name"] in {"shutting-down", "terminated"}
                role = t.from_aws(instance["Tags"])[t.ROLE]
                roles[role] = roles.get(role, 0) + 1
        assert roles == {"prewarm": 1, "train": 6}  # the warm-up and five measured launches
        volumes = ec2.describe_volumes(Filters=[{"Name": f"tag:{t.DATASET}", "Values": [data.SOURCE]}])["Volumes"]
        assert [v["State"] for v in volumes] == ["available"]
        volume_id = volumes[0]["VolumeId"]

    labels = [r.label for r in run.rows]
    assert labels == [
        "direct-s3",
        "local-cache",
        "prewarmed-ebs (new prewarm)",
        "prewarmed-ebs (reused)",
        "existing-ebs",
    ]
    assert [r.ran for r in run.rows] == ["direct-s3", "local-cache", "prewarmed-ebs", "prewarmed-ebs", "existing-ebs"]
    assert all(r.files_match for r in run.rows) and len(run.in_s3) == 12
    assert [r.volume_id for r in run.rows[2:]] == [volume_id] * 3
    assert run.prewarm_instances == 1
    # Each row: measured from the request to the trainer's first batch, and the advice's estimate beside it.
    assert all(r.first_batch_at > r.launched_at and r.estimate_s is not None for r in run.rows)
    # Asked before each launch: a new prewarm (its 300 s overhead) for the first, the reused volume's attach after.
    assert [r.estimate_s for r in run.rows[2:]] == [pytest.approx(PREWARM_OVERHEAD_S + 15, abs=5), ATTACH_S, ATTACH_S]
    assert data.launch_overhead_s(run) > 0
    table = data.table(run)
    assert [row[0] for row in table] == labels and all(len(row) == len(data.HEADER) for row in table)
