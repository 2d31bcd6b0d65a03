"""prewarm end to end in the sandbox: real instances, real SSM commands, volumes as folders."""

from __future__ import annotations

import hashlib
import os
import random
import signal
from pathlib import Path
from typing import Any

import pytest
from prefect.exceptions import TerminationSignal

import flows.prewarm
from cli.output import sigterm_as_error
from core import tags as t
from core.ebs import VolumeSpec
from core.errors import InvalidInputError, NotManagedError, TerminatedError
from core.paths import PathEscapeError
from core.prewarm import PrewarmSpec
from flows.prewarm import PrewarmFailedError, prewarm
from sandbox import Sandbox
from tasks.ebs import attach_volume
from tasks.ec2_instances import LaunchRequest, launch_instance
from tasks.ssm import run_command, wait_online

pytestmark = pytest.mark.sandbox
BUCKET = "datasets"


def _upload_dataset(cloud: Sandbox, prefix: str) -> dict[str, str]:
    """200 files in nested folders (one of 50 MB, one empty, unicode names): relative path → sha256."""
    s3 = cloud.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    rng = random.Random(7)
    checksums: dict[str, str] = {}
    for i in range(200):
        if i == 0:
            rel, data = "big/shard-000.bin", os.urandom(50 * 1024 * 1024)
        elif i == 1:
            rel, data = "labels/empty.txt", b""
        else:
            rel = f"train/class-{i % 7}/{'ünïcode-' if i % 11 == 0 else ''}img-{i:04d}.jpg"
            data = rng.randbytes(rng.randint(10, 4000))
        s3.put_object(Bucket=BUCKET, Key=f"{prefix}/{rel}", Body=data)
        checksums[rel] = hashlib.sha256(data).hexdigest()
    return checksums


def _managed_instances(cloud: Sandbox, states: tuple[str, ...] = ("pending", "running")) -> list[str]:
    reservations = cloud.client("ec2").describe_instances(
        Filters=[
            {"Name": "tag:trainctl:managed", "Values": ["true"]},
            {"Name": "instance-state-name", "Values": list(states)},
        ]
    )["Reservations"]
    return [i["InstanceId"] for r in reservations for i in r["Instances"]]


CHECKSUM_SCRIPT = r"""set -eu
dev="${TRAINCTL_ROOT:-}/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_$SERIAL"
mnt="${TRAINCTL_ROOT:-}/mnt/check"
mkdir -p "$mnt"; mount "$dev" "$mnt"
cd "$mnt" && find . -type f ! -path './.trainctl/*' -print0 | sort -z | xargs -0 sha256sum
cat "$mnt/.trainctl/prewarm-manifest.json" >&2
umount "$mnt"
"""


def test_prewarm_lands_every_byte_and_leaves_no_instance(cloud: Sandbox) -> None:
    checksums = _upload_dataset(cloud, "imagenet")
    report = prewarm(
        PrewarmSpec(source=f"s3://{BUCKET}/imagenet/", volume=VolumeSpec(name="imagenet", size_gib=100), job="demo")
    )
    assert report.files == 200 and report.temporary_instance_terminated

    ec2 = cloud.client("ec2")
    volume = ec2.describe_volumes(VolumeIds=[report.volume_id])["Volumes"][0]
    tags = t.from_aws(volume["Tags"])
    assert volume["State"] == "available" and volume["Attachments"] == []
    assert tags[t.MANAGED] == "true" and tags[t.PERSISTENT] == "true" and tags[t.NAME] == "imagenet"
    assert tags[t.PREWARM] == t.PREWARM_DONE  # no sweep reports it as left by an unfinished prewarm
    temp = ec2.describe_instances(InstanceIds=[report.instance_id])["Reservations"][0]["Instances"][0]
    assert temp["State"]["Name"] == "terminated"
    assert _managed_instances(cloud) == []

    # A new instance sees the same files, byte for byte.
    reader = launch_instance.fn(
        LaunchRequest(
            name="reader",
            role=t.Role.TRAIN,
            idempotency_key="reader-1",
            instance_type="t3.micro",
            availability_zone=report.availability_zone,
        )
    )
    wait_online.fn(reader.id)
    attach_volume.fn(report.volume_id, reader.id)
    out = run_command.fn(
        reader.id,
        [f"SERIAL={report.volume_id.replace('-', '')}", CHECKSUM_SCRIPT],
        output_s3_uri=f"s3://{BUCKET}/ssm-output",
    )
    seen = {line.split("  ./", 1)[1]: line.split("  ", 1)[0] for line in out.stdout.splitlines() if "  ./" in line}
    assert seen == checksums
    assert '"objects": 200' in out.stderr


def test_missing_prefix_is_refused_before_anything_is_created(cloud: Sandbox) -> None:
    cloud.client("s3").create_bucket(Bucket="empty-bucket")
    before = cloud.client("ec2").describe_volumes()["Volumes"]
    with pytest.raises(InvalidInputError, match="source"):
        prewarm(PrewarmSpec(source="s3://empty-bucket/nothing/", volume=VolumeSpec(name="x", size_gib=10)))
    with pytest.raises(InvalidInputError, match="does not exist"):
        prewarm(PrewarmSpec(source="s3://no-such-bucket/data/", volume=VolumeSpec(name="x", size_gib=10)))
    assert cloud.client("ec2").describe_volumes()["Volumes"] == before
    assert _managed_instances(cloud) == []


def test_a_key_that_would_escape_the_volume_is_refused_before_anything_is_created(cloud: Sandbox) -> None:
    s3, ec2 = cloud.client("s3"), cloud.client("ec2")
    s3.create_bucket(Bucket="evil-src")
    s3.put_object(Bucket="evil-src", Key="evil/ok.txt", Body=b"fine")
    escaping = "evil/../../../../../tmp/x/ESCAPED.txt"
    s3.put_object(Bucket="evil-src", Key=escaping, Body=b"as root, anywhere")
    assert escaping in [o["Key"] for o in s3.list_objects_v2(Bucket="evil-src")["Contents"]]  # S3 keeps it as is
    # S3 keys may be 1,024 bytes; a file name may not exceed 255: this object cannot land on any filesystem.
    too_long = "long/" + "x" * 300 + ".bin"
    s3.put_object(Bucket="evil-src", Key="long/ok.txt", Body=b"fine")
    s3.put_object(Bucket="evil-src", Key=too_long, Body=b"too long a name")
    volumes_before = ec2.describe_volumes()["Volumes"]

    for prefix, key in (("evil/", escaping), ("long/", too_long)):
        with pytest.raises(PathEscapeError) as err:
            prewarm(PrewarmSpec(source=f"s3://evil-src/{prefix}", volume=VolumeSpec(name="v", size_gib=5)))
        assert repr(f"s3://evil-src/{key}") in str(err.value) and "\n" not in str(err.value)
        assert err.value.exit_code == 2

    assert ec2.describe_volumes()["Volumes"] == volumes_before
    assert ec2.describe_instances()["Reservations"] == []  # not even a pending one
    # Nothing written: not under the sandbox's state (instances, volumes), not where the key points from there.
    state = Path(cloud.state_dir)
    assert list(state.rglob("ESCAPED.txt")) == []
    for folder in (state, *state.parents):
        assert not (folder / "tmp" / "x" / "ESCAPED.txt").exists()


def test_failed_sync_still_terminates_the_temporary_instance(cloud: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    s3 = cloud.client("s3")
    s3.create_bucket(Bucket="broken")
    s3.put_object(Bucket="broken", Key="data/ok.txt", Body=b"fine")
    s3.put_object(Bucket="broken", Key="data/gone.bin", Body=b"deleted after the listing")
    real_put_json = flows.prewarm.put_json

    def put_then_delete(uri: str, payload: object, **kwargs: Any) -> str:
        # Once the list of keys to copy is written, an object on it goes: the copy on the instance fails.
        written = real_put_json(uri, payload, **kwargs)
        s3.delete_object(Bucket="broken", Key="data/gone.bin")
        return str(written)

    monkeypatch.setattr(flows.prewarm, "put_json", put_then_delete)
    with pytest.raises(PrewarmFailedError) as err:
        prewarm(PrewarmSpec(source="s3://broken/data/", volume=VolumeSpec(name="broken", size_gib=10)))
    message = str(err.value)
    assert "step 'sync'" in message and "terminated" in message and "detached" in message
    assert _managed_instances(cloud) == []
    volumes = cloud.client("ec2").describe_volumes(Filters=[{"Name": "tag:Name", "Values": ["broken"]}])["Volumes"]
    assert [v["State"] for v in volumes] == ["available"]  # the data volume is kept, detached
    assert t.from_aws(volumes[0]["Tags"])[t.PREWARM] == t.PREWARM_PENDING  # its data is partial: the sweep says so
    staging = s3.list_objects_v2(Bucket="broken", Prefix="trainctl/")
    assert staging.get("KeyCount", 0) == 0  # the list of keys is removed, failure or not


def test_sigterm_mid_flow_cleans_up_and_says_so(cloud: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    s3 = cloud.client("s3")
    s3.create_bucket(Bucket="sig")
    s3.put_object(Bucket="sig", Key="data/a.txt", Body=b"a")

    def sigterm(*args: object, **kwargs: object) -> None:  # what Prefect's handler raises in the flow on SIGTERM
        raise TerminationSignal(signal.SIGTERM)

    def sigterm_inside_prefect(*args: object, **kwargs: object) -> None:  # the signal hit Prefect's task engine
        try:
            sigterm()
        except TerminationSignal:
            raise ValueError("Task run is not set") from None

    for name, stand_in in (("first", sigterm), ("second", sigterm_inside_prefect)):
        monkeypatch.setattr("flows.prewarm.wait_online", stand_in)
        # The CLI's handler: Prefect hands the signal back to it after the flow's cleanup (else: SIG_DFL, pytest dies).
        with pytest.raises(TerminatedError) as stopped, sigterm_as_error():
            prewarm(PrewarmSpec(source="s3://sig/data/", volume=VolumeSpec(name=name, size_gib=10)))
        message = str(stopped.value)
        assert "prewarm was interrupted by SIGTERM at step 'ssm online'" in message, message
        assert "terminated" in message and "Task run is not set" not in message
        assert stopped.value.exit_code == 143
        assert _managed_instances(cloud) == []  # the temporary instance is gone
        volumes = cloud.client("ec2").describe_volumes(Filters=[{"Name": "tag:Name", "Values": [name]}])["Volumes"]
        assert [v["State"] for v in volumes] == ["available"]  # the data volume is kept, detached


def test_existing_volume_adopted_and_instance_reused_kept_and_snapshotted(cloud: Sandbox) -> None:
    s3 = cloud.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    for i in range(5):
        s3.put_object(Bucket=BUCKET, Key=f"small/part-{i}.txt", Body=f"part {i}".encode())
    first = prewarm(PrewarmSpec(source=f"s3://{BUCKET}/small/", volume=VolumeSpec(name="small", size_gib=10)))
    worker = launch_instance.fn(
        LaunchRequest(
            name="worker",
            role=t.Role.TRAIN,
            idempotency_key="worker-1",
            instance_type="t3.micro",
            availability_zone=first.availability_zone,
        )
    )
    s3.put_object(Bucket=BUCKET, Key="small/part-5.txt", Body=b"a new file")
    ec2 = cloud.client("ec2")
    # Now someone else's volume (no managed tag): refused before anything is done, prewarmed once adopted.
    ec2.delete_tags(Resources=[first.volume_id], Tags=[{"Key": t.MANAGED}])
    reuse = PrewarmSpec(source=f"s3://{BUCKET}/small/", volume_id=first.volume_id, instance_id=worker.id, snapshot=True)
    with pytest.raises(NotManagedError, match=f"{first.volume_id} was not created by trainctl.*--adopt"):
        prewarm(reuse)
    assert ec2.describe_volumes(VolumeIds=[first.volume_id])["Volumes"][0]["Attachments"] == []
    of_volume = [{"Name": "volume-id", "Values": [first.volume_id]}]
    assert ec2.describe_snapshots(OwnerIds=["self"], Filters=of_volume)["Snapshots"] == []

    again = prewarm(reuse.model_copy(update={"adopt": True}))

    tags = t.from_aws(ec2.describe_volumes(VolumeIds=[first.volume_id])["Volumes"][0]["Tags"])
    assert tags[t.MANAGED] == "true" and tags[t.NAME] == "small"
    assert again.volume_id == first.volume_id and again.files == 6
    assert not again.temporary_instance_terminated
    state = ec2.describe_instances(InstanceIds=[worker.id])["Reservations"][0]["Instances"][0]["State"]["Name"]
    assert state == "running"  # a given instance is the user's: never terminated
    assert ec2.describe_volumes(VolumeIds=[first.volume_id])["Volumes"][0]["State"] == "available"
    assert again.snapshot_id is not None
    snapshot = ec2.describe_snapshots(SnapshotIds=[again.snapshot_id])["Snapshots"][0]
    assert snapshot["State"] == "completed" and snapshot["VolumeId"] == first.volume_id
    assert t.from_aws(snapshot["Tags"])[t.MANAGED] == "true"
