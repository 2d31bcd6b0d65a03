"""train-launch applies a data strategy (issue 19), in the sandbox: the real agent runs examples/train_data.py,
which reads the dataset the way the strategy delivers it and prints a checksum per file; each run's checksums
are compared with S3's."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from core import tags as t
from core.data import DIRECT_S3_CONNECTIONS, AdviceRequest
from core.errors import InvalidInputError
from core.jobs import DataStrategy, JobSpec, TemplateSpec
from core.launch import LaunchOptions
from flows.data import advise_data
from flows.train_launch import LaunchReport, train_launch
from sandbox import Sandbox
from tests.flows.test_train_launch import _get_text, _job_record, _live_instances

pytestmark = pytest.mark.sandbox
BUCKET = "ml-jobs"
DATA_BUCKET = "datasets"
SOURCE = f"s3://{DATA_BUCKET}/set/"
TRAINER = Path(__file__).resolve().parents[2] / "examples" / "train_data.py"


def _dataset(cloud: Sandbox) -> dict[str, str]:
    """Twelve objects under SOURCE; returns relative key → sha256."""
    s3 = cloud.client("s3")
    for bucket in (BUCKET, DATA_BUCKET):
        s3.create_bucket(Bucket=bucket)
    bodies = {f"part-{i:02d}.bin": f"record {i} ".encode() * (50 * (i + 1)) for i in range(11)}
    bodies["labels/train.csv"] = b"part-00,cat\npart-01,dog\n"
    for rel, body in bodies.items():
        s3.put_object(Bucket=DATA_BUCKET, Key=f"set/{rel}", Body=body)
    return {rel: hashlib.sha256(body).hexdigest() for rel, body in bodies.items()}


def _spec(tmp_path: Path, name: str, **fields: Any) -> JobSpec:
    code = tmp_path / f"code-{name}"
    code.mkdir()
    shutil.copy(TRAINER, code / "train_data.py")
    base: dict[str, Any] = {
        "name": name,
        "bucket": BUCKET,
        "template": TemplateSpec(instance_type="t3.micro"),
        "code_dir": str(code),
        "command": ["python3", "train_data.py", "--epochs", "2", "--batch", "4"],
        "data": SOURCE,
        "sync_interval_s": 1,
    }
    return JobSpec(**{**base, **fields})


def _trainer_read(cloud: Sandbox, report: LaunchReport) -> dict[str, Any]:
    """The trainer's own summary of what it read (the last `data {...}` line of its log in S3)."""
    lines = [line for line in _get_text(cloud, report.log_uri).splitlines() if line.startswith("data {")]
    summary: dict[str, Any] = json.loads(lines[-1].removeprefix("data "))
    return summary


def _instances_by_role(cloud: Sandbox) -> dict[str, int]:
    """Every instance ever launched (terminated ones included), counted by its trainctl:role tag."""
    counts: dict[str, int] = {}
    for reservation in cloud.client("ec2").describe_instances()["Reservations"]:
        for instance in reservation["Instances"]:
            role = t.from_aws(instance.get("Tags"))[t.ROLE]
            counts[role] = counts.get(role, 0) + 1
    return counts


def test_prewarmed_ebs_is_prewarmed_once_and_reused_by_the_next_job_and_both_trainers_read_the_dataset(
    cloud: Sandbox, tmp_path: Path
) -> None:
    in_s3 = _dataset(cloud)

    first = train_launch(_spec(tmp_path, "reader-a", data_strategy="prewarmed-ebs"), LaunchOptions(wait=True))
    assert first.status == "succeeded" and first.data is not None
    assert first.data.strategy == DataStrategy.PREWARMED_EBS and "prewarm: new" in first.data.why
    volume_id = first.volume_id
    assert volume_id is not None and first.data.volume_id == volume_id
    assert _instances_by_role(cloud) == {"prewarm": 1, "train": 1}
    read = _trainer_read(cloud, first)
    assert read["sha256"] == in_s3 and read["source"].endswith(f"/mnt/trainctl/{volume_id}")
    # The record holds the strategy that ran and its volume: spot-watch resumes with the same data.
    record = _job_record(cloud, "reader-a")
    assert record.spec is not None and record.spec.data_strategy == DataStrategy.PREWARMED_EBS
    assert record.spec.data_volume_id == volume_id
    assert record.volume_id == volume_id

    # A second job on the same dataset, one after the other: the volume is reused, no prewarm instance launched.
    second = train_launch(_spec(tmp_path, "reader-b", data_strategy="prewarmed-ebs"), LaunchOptions(wait=True))
    assert second.status == "succeeded" and second.data is not None
    assert second.volume_id == volume_id and "prewarm: reused" in second.data.why
    assert second.availability_zone == first.availability_zone
    assert _instances_by_role(cloud) == {"prewarm": 1, "train": 2}
    assert _trainer_read(cloud, second)["sha256"] == in_s3
    volume = cloud.client("ec2").describe_volumes(VolumeIds=[volume_id])["Volumes"][0]
    tags = t.from_aws(volume["Tags"])
    assert volume["State"] == "available" and tags[t.DATASET] == SOURCE and tags[t.PERSISTENT] == "true"
    assert [v["VolumeId"] for v in cloud.client("ec2").describe_volumes()["Volumes"]] == [volume_id]  # no other
    assert _live_instances(cloud) == []


def test_auto_reads_s3_directly_here_and_impossible_choices_are_refused_before_any_launch(
    cloud: Sandbox, tmp_path: Path
) -> None:
    in_s3 = _dataset(cloud)
    advice = advise_data(AdviceRequest(dataset_uri=SOURCE, instance_type="t3.micro", runs=3, epochs=2))
    assert advice.chosen == DataStrategy.DIRECT_S3  # a few runs of a small dataset: nothing beats reading it

    report = train_launch(_spec(tmp_path, "s3-reader", data_runs=3, data_epochs=2), LaunchOptions(wait=True))
    assert report.status == "succeeded" and report.data is not None and report.volume_id is None
    # The advice the launch followed weighed the job's planned runs and epochs.
    assert report.data.strategy == DataStrategy.DIRECT_S3 and report.data.why == advice.reason
    assert "3 run(s) × 2 epoch(s)" in report.data.why
    assert report.data.estimate_first_batch_s == advice.estimate(DataStrategy.DIRECT_S3).first_batch_s
    log = _get_text(cloud, report.log_uri)
    assert f"dataset {SOURCE}: 12 files, {DIRECT_S3_CONNECTIONS} workers" in log
    assert _trainer_read(cloud, report)["sha256"] == in_s3
    recorded = _job_record(cloud, "s3-reader").spec
    assert recorded is not None and recorded.data_strategy == DataStrategy.DIRECT_S3
    launched = _instances_by_role(cloud)

    # t3.micro has no instance store: local-cache is refused with the numbers and what fits, nothing launched.
    with pytest.raises(InvalidInputError, match="no instance store") as err:
        train_launch(_spec(tmp_path, "cache", data_strategy="local-cache"))
    assert err.value.field == "data_strategy" and "Use direct-s3" in str(err.value)
    # An empty dataset prefix is refused too.
    with pytest.raises(InvalidInputError) as err:
        train_launch(_spec(tmp_path, "empty", data=f"s3://{DATA_BUCKET}/nothing/"))
    assert err.value.field == "dataset"
    assert _instances_by_role(cloud) == launched
    assert cloud.client("ec2").describe_volumes()["Volumes"] == []  # no data volume was made


def test_local_cache_copies_the_dataset_onto_the_instance_store_before_the_trainer_reads_it(
    cloud: Sandbox, tmp_path: Path
) -> None:
    in_s3 = _dataset(cloud)
    template = TemplateSpec(instance_type="g4dn.xlarge")  # 125 GB of NVMe instance store
    spec = _spec(tmp_path, "cached", data_strategy="local-cache", template=template)

    report = train_launch(spec, LaunchOptions(wait=True))
    assert report.status == "succeeded" and report.data is not None and report.volume_id is None
    assert report.data.strategy == DataStrategy.LOCAL_CACHE and "as asked" in report.data.why
    log = _get_text(cloud, report.log_uri)
    assert "local-cache: 12 files" in log and "nvme-Amazon_EC2_NVMe_Instance_Storage_" in log and "verified" in log
    read = _trainer_read(cloud, report)
    assert read["sha256"] == in_s3 and read["source"].endswith("/mnt/trainctl/instance-store")
    assert _instances_by_role(cloud) == {"train": 1}
    assert cloud.client("ec2").describe_volumes()["Volumes"] == []  # no EBS volume for the data
    # The instance store went with the instance.
    assert list((cloud.runtime.state_dir / "volumes").glob("store-*")) == []
