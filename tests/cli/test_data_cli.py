"""`trainctl data advise` through typer's CliRunner against a sandbox: the inputs come from the cloud (one S3
listing, moto's DescribeInstanceTypes data, the volumes tagged with the dataset), and the advice changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from cli.main import app
from core import tags as t
from sandbox import Sandbox
from tests.conftest import raw_volume

BUCKET = "advice-data"
DATASET = f"s3://{BUCKET}/imagenet/"
FILES = {f"imagenet/train/part-{i:03d}.bin": 1000 + i for i in range(40)}


@pytest.fixture(scope="module")
def cloud() -> Iterator[Sandbox]:
    with Sandbox(boot_delay=0.1) as sandbox:
        s3 = sandbox.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        for key, size in FILES.items():
            s3.put_object(Bucket=BUCKET, Key=key, Body=b"x" * size)
        s3.put_object(Bucket=BUCKET, Key="imagenet/", Body=b"")  # a console's folder marker: no data
        s3.put_object(Bucket=BUCKET, Key="other/readme.txt", Body=b"not this dataset")
        yield sandbox


@pytest.fixture
def run(cloud: Sandbox) -> Any:
    runner = CliRunner()
    env: dict[str, str | None] = {"AWS_PROFILE": None, **cloud.env}

    def invoke(*args: str) -> Result:
        return runner.invoke(app, ["data", "advise", *args], env=env)

    return invoke


def _resources(ec2: Any) -> tuple[int, int]:
    volumes = ec2.describe_volumes()["Volumes"]
    instances = [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]
    return len(volumes), len(instances)


def test_the_advice_reads_the_dataset_the_type_and_the_prewarmed_volumes_and_changes_nothing(
    cloud: Sandbox, run: Any
) -> None:
    ec2 = cloud.client("ec2")
    dataset = {t.DATASET: DATASET}
    done = {t.PREWARM: t.PREWARM_DONE}
    prewarmed = raw_volume(ec2, {**t.managed_tags(role=t.Role.DATA, persistent=True), **dataset, **done})
    never = [
        raw_volume(ec2, {**dataset, **done}),  # someone else's volume
        raw_volume(ec2, {**t.managed_tags(role=t.Role.DATA), **dataset, t.PREWARM: t.PREWARM_PENDING}),  # unfinished
        raw_volume(ec2, {**t.managed_tags(role=t.Role.DATA), t.DATASET: f"s3://{BUCKET}/other/", **done}),  # other
    ]
    before = _resources(ec2)

    result = run(
        DATASET, "--instance-type", "g5.xlarge", "--runs", "3", "--epochs", "2", "--az", "us-east-1a", "--json"
    )
    assert result.exit_code == 0, result.output
    advice = json.loads(result.stdout)
    assert (advice["file_count"], advice["dataset_bytes"]) == (len(FILES), sum(FILES.values()))
    estimates = {e["strategy"]: e for e in advice["estimates"]}
    assert estimates["local-cache"]["possible"] is True  # moto's g5.xlarge has its 250 GB NVMe
    assert "250 GB NVMe" in estimates["local-cache"]["plan"]
    assert f"reuse {prewarmed} (us-east-1a)" in estimates["prewarmed-ebs"]["plan"]
    assert estimates["prewarmed-ebs"]["setup_s"] == 0
    assert not [volume for volume in never if volume in result.stdout]
    assert estimates["existing-ebs"]["why_not"] == "no volume given (--volume vol-…)"
    assert advice["chosen"] in estimates and estimates[advice["chosen"]]["possible"]

    table = run(DATASET, "--instance-type", "g5.xlarge", "--runs", "3", "--epochs", "2", "--az", "us-east-1a")
    assert table.exit_code == 0, table.output
    assert f"* {advice['chosen']}" in table.stdout
    assert f"chosen: {advice['reason']}" in table.stdout
    assert "not possible: no volume given" in table.stdout
    assert _resources(ec2) == before  # read only: nothing created, attached or deleted


def test_without_an_az_a_prewarmed_volume_anywhere_is_reused_and_without_one_a_prewarm_is_planned(
    cloud: Sandbox, run: Any
) -> None:
    result = run("s3://advice-data/imagenet/train/", "--instance-type", "m5.large", "--json")
    assert result.exit_code == 0, result.output
    estimates = {e["strategy"]: e for e in json.loads(result.stdout)["estimates"]}
    # No volume is tagged with this prefix: a new prewarm on a temporary m5.large.
    assert "prewarm a new gp3 volume" in estimates["prewarmed-ebs"]["plan"]
    assert estimates["prewarmed-ebs"]["setup_s"] > 300
    assert estimates["local-cache"]["why_not"] == "m5.large has no instance store"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            [DATASET, "--instance-type", "m5.large", "--data-strategy", "local-cache"],
            "data_strategy: 'local-cache' is not valid: expected a strategy that can work here "
            "(m5.large has no instance store). Use ",
        ),
        ([f"s3://{BUCKET}/nothing-here/", "--instance-type", "g5.xlarge"], "found 0 objects, 0 bytes"),
        ([DATASET, "--instance-type", "zz.huge"], "instance_type: 'zz.huge' is not valid"),
        (["imagenet/", "--instance-type", "g5.xlarge"], "dataset: 'imagenet/' is not valid"),
        ([DATASET, "--instance-type", "g5.xlarge", "--runs", "0"], "runs"),
        ([DATASET, "--instance-type", "g5.xlarge", "--az", "east"], "availability_zone: 'east' is not valid"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(run: Any, args: list[str], message: str) -> None:
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert message in result.stderr


def test_an_existing_volume_in_another_az_is_refused_for_existing_ebs(cloud: Sandbox, run: Any) -> None:
    elsewhere = raw_volume(cloud.client("ec2"), t.managed_tags(role=t.Role.DATA), zone="us-east-1b")
    args = ["--volume", elsewhere, "--az", "us-east-1a", "--data-strategy", "existing-ebs"]
    result = run(DATASET, "--instance-type", "g5.xlarge", *args)
    assert result.exit_code == 2, result.output
    assert f"{elsewhere} is in us-east-1b, the job in us-east-1a" in result.stderr
