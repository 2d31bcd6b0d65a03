"""Dataset reuse in the sandbox (issue 19): a prewarmed volume is found by its dataset tag and reused, re-synced
incrementally when the dataset changed, copied from its snapshot into another AZ, and left alone when attached."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from core import tags as t
from core.ebs import VolumeSpec
from core.errors import UsageError
from core.prewarm import PrewarmSpec
from flows.prewarm import prewarm
from sandbox import Sandbox
from tasks.ebs import attach_volume
from tasks.ec2_instances import LaunchRequest, launch_instance
from tasks.ssm import run_command, wait_online
from tests.flows.test_prewarm import _managed_instances

pytestmark = pytest.mark.sandbox
BUCKET = "reuse-data"
SOURCE = f"s3://{BUCKET}/set/"


def _files_on(cloud: Sandbox, volume_id: str) -> dict[str, str]:
    """The volume's data files (the sandbox keeps a volume as a folder): relative path → sha256."""
    root = cloud.runtime.volume_dir(volume_id) / "fs"
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file() and not p.relative_to(root).as_posix().startswith(".trainctl/")
    }


def _inodes(cloud: Sandbox, volume_id: str) -> dict[str, int]:
    root = cloud.runtime.volume_dir(volume_id) / "fs"
    return {p.relative_to(root).as_posix(): p.stat().st_ino for p in root.rglob("*") if p.is_file()}


def _in_s3(cloud: Sandbox) -> dict[str, str]:
    s3 = cloud.client("s3")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="set/").get("Contents", [])]
    return {
        key[len("set/") :]: hashlib.sha256(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()).hexdigest()
        for key in keys
    }


def _all_instances(cloud: Sandbox) -> list[str]:
    reservations = cloud.client("ec2").describe_instances()["Reservations"]
    return [i["InstanceId"] for r in reservations for i in r["Instances"]]


def _volumes(cloud: Sandbox) -> dict[str, dict[str, str]]:
    """Every live volume: ID → tags."""
    return {
        v["VolumeId"]: t.from_aws(v.get("Tags"))
        for v in cloud.client("ec2").describe_volumes()["Volumes"]
        if v["State"] not in {"deleting", "deleted"}
    }


def _spec(name: str, zone: str) -> PrewarmSpec:
    return PrewarmSpec(source=SOURCE, volume=VolumeSpec(name=name, size_gib=10), availability_zone=zone)


def test_a_prewarmed_dataset_is_reused_resynced_incrementally_and_copied_into_another_az(cloud: Sandbox) -> None:
    s3 = cloud.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    for i in range(12):
        s3.put_object(Bucket=BUCKET, Key=f"set/part-{i:02d}.bin", Body=f"record {i} ".encode() * (i + 1))

    first = prewarm(_spec("ds", "us-east-1a"))
    assert first.path == "new" and "no prewarmed volume" in first.why
    tags = _volumes(cloud)[first.volume_id]
    assert tags[t.DATASET] == SOURCE and tags[t.DATASET_DIGEST] == first.digest and tags[t.PREWARM] == "done"
    assert len(_all_instances(cloud)) == 1

    # The same dataset again, same AZ: the volume is reused, nothing launched, nothing created.
    second = prewarm(_spec("ds-again", "us-east-1a"))
    assert (second.path, second.volume_id, second.instance_id) == ("reused", first.volume_id, None)
    assert "unchanged" in second.why
    assert len(_all_instances(cloud)) == 1 and list(_volumes(cloud)) == [first.volume_id]

    # One object changed (same size, other bytes: only its ETag tells), one added, one deleted.
    before = _inodes(cloud, first.volume_id)
    s3.put_object(Bucket=BUCKET, Key="set/part-03.bin", Body=b"RECORD 3 " * 4)
    s3.put_object(Bucket=BUCKET, Key="set/part-12.bin", Body=b"new record")
    s3.delete_object(Bucket=BUCKET, Key="set/part-07.bin")
    third = prewarm(_spec("ds-again", "us-east-1a"))
    assert (third.path, third.volume_id, third.copied, third.deleted) == ("re-synced", first.volume_id, 2, 1)
    assert (
        third.digest != first.digest and len(_all_instances(cloud)) == 2 and list(_volumes(cloud)) == [first.volume_id]
    )
    tags = _volumes(cloud)[first.volume_id]
    assert tags[t.DATASET_DIGEST] == third.digest and tags[t.PREWARM] == "done"
    assert _files_on(cloud, first.volume_id) == _in_s3(cloud)
    after = _inodes(cloud, first.volume_id)
    moved = {rel for rel in after if before.get(rel) != after[rel] and not rel.startswith(".trainctl/")}
    assert moved == {"part-03.bin", "part-12.bin"}  # only those were copied; the other ten files were not touched
    assert "part-07.bin" not in after

    # Another AZ: a copy restored from a snapshot of the volume, every block read once, the data intact.
    fourth = prewarm(_spec("ds-b", "us-east-1b"))
    assert (fourth.path, fourth.reused_volume_id, fourth.availability_zone) == (
        "restored",
        first.volume_id,
        "us-east-1b",
    )
    assert fourth.copied == 0 and fourth.deleted == 0  # the snapshot holds the current dataset
    assert fourth.initialised is not None and f"{10 * 1024**3} bytes" in fourth.initialised
    volumes = _volumes(cloud)
    assert set(volumes) == {first.volume_id, fourth.volume_id}
    copy_tags = volumes[fourth.volume_id]
    assert copy_tags[t.DATASET] == SOURCE and copy_tags[t.DATASET_DIGEST] == third.digest
    assert copy_tags[t.NAME] == "ds-b" and copy_tags[t.PREWARM] == "done"
    snapshot = cloud.client("ec2").describe_snapshots(SnapshotIds=[fourth.restored_from])["Snapshots"][0]
    assert snapshot["VolumeId"] == first.volume_id
    assert t.from_aws(snapshot["Tags"])[t.DATASET_DIGEST] == third.digest
    assert _files_on(cloud, fourth.volume_id) == _in_s3(cloud)
    assert _managed_instances(cloud) == []  # every temporary instance is gone

    # Both volumes attached to a trainer's instance: neither is reused, a new volume is prewarmed.
    for volume in (first, fourth):
        worker = launch_instance.fn(
            LaunchRequest(
                name=f"worker-{volume.availability_zone}",
                role=t.Role.TRAIN,
                idempotency_key=f"worker-{volume.volume_id}",
                instance_type="t3.micro",
                availability_zone=volume.availability_zone,
            )
        )
        wait_online.fn(worker.id)
        attach_volume.fn(volume.volume_id, worker.id)
    # dd on the instance is still the system's for anything but reading a whole volume.
    out = run_command.fn(
        worker.id, ["set -eu", "dd if=/dev/zero of=zeros bs=1024 count=3 2>/dev/null", "wc -c < zeros"]
    )
    assert out.stdout.strip() == "3072"
    fifth = prewarm(_spec("ds-fresh", "us-east-1a"))
    assert fifth.path == "new" and fifth.volume_id not in {first.volume_id, fourth.volume_id}
    assert first.volume_id in fifth.why and fourth.volume_id in fifth.why and "in use" in fifth.why
    assert _files_on(cloud, fifth.volume_id) == _in_s3(cloud) and fifth.copied == 12


# Moving ~1 GB through moto takes most of a minute on a loaded 2-core machine: with the issues' full sizes
# (`pytest -m slow`). tests/core/test_prewarm.py checks every path of check_fits without data.
@pytest.mark.slow
def test_a_reused_volume_too_small_for_its_grown_dataset_is_refused_before_anything_changes(
    cloud: Sandbox, tmp_path: Path
) -> None:
    s3, ec2 = cloud.client("s3"), cloud.client("ec2")
    s3.create_bucket(Bucket=BUCKET)
    # A 1 GiB volume a prewarm filled with an earlier, smaller version of the dataset (the tags it left).
    earlier = {
        t.MANAGED: "true",
        t.PERSISTENT: "true",
        t.NAME: "ds-small",
        t.DATASET: SOURCE,
        t.DATASET_DIGEST: "0" * 64,
        t.PREWARM: t.PREWARM_DONE,
    }
    small = ec2.create_volume(
        AvailabilityZone="us-east-1a",
        Size=1,
        VolumeType="gp3",
        TagSpecifications=t.tag_specifications("volume", earlier),
    )["VolumeId"]
    # The dataset grew to 950 MB (a sparse file of zeros: the smallest that outgrows 1 GiB with the headroom).
    big = tmp_path / "big.bin"
    with big.open("wb") as out:
        out.truncate(950_000_000)
    s3.upload_file(str(big), BUCKET, "set/big.bin")
    before = _volumes(cloud)

    with pytest.raises(UsageError) as refused:
        prewarm(_spec("ds-grown", "us-east-1a"))
    message = str(refused.value)
    # 950e6 bytes + 15% = 1.09e9 bytes = 1.02 GiB: 2 GiB needed.
    assert f"{small} (1 GiB, us-east-1a) holds an older version of {SOURCE} (950.0 MB; with 15% headroom 2 GiB)" in (
        message
    )
    assert "--no-reuse --size 2" in message and "modify-volume" in message
    # Refused before any mutation: no instance, no new volume, the old one still done with its old digest.
    assert _all_instances(cloud) == [] and _volumes(cloud) == before
    assert before[small][t.PREWARM] == t.PREWARM_DONE and before[small][t.DATASET_DIGEST] == "0" * 64


# make test walks every reuse path above (five prewarms); this opt-out's two more prewarms run in make test-exhaustive.
@pytest.mark.exhaustive
def test_reuse_off_prewarms_a_new_volume(cloud: Sandbox) -> None:
    s3 = cloud.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="set/a.txt", Body=b"a")
    first = prewarm(_spec("off-1", "us-east-1a"))
    second = prewarm(_spec("off-2", "us-east-1a").model_copy(update={"reuse": False}))
    assert second.path == "new" and "reuse is off" in second.why
    assert set(_volumes(cloud)) == {first.volume_id, second.volume_id} and len(_all_instances(cloud)) == 2
