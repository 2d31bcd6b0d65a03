"""agent/data_cache.py on sandbox instances: the instance store is found by its Nitro name, formatted and mounted,
and the dataset copied onto it by the agent's own S3 client (the path without s5cmd) and verified; an instance
type without a store, and a key that cannot be a path, are refused before anything is copied."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from agent import data_cache
from agent.data_cache import DataCache, DataCacheError, prepare
from agent.errors import IntegrityError
from sandbox import Sandbox
from tests.agent.conftest import client

pytestmark = pytest.mark.sandbox


def _instance(cloud: Sandbox, instance_type: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A running instance of the type; this process then sees it as the agent does (its root, its shims)."""
    ec2 = cloud.client("ec2")
    image_id = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    made = ec2.run_instances(ImageId=image_id, InstanceType=instance_type, MinCount=1, MaxCount=1)
    instance_id = made["Instances"][0]["InstanceId"]
    for key, value in cloud.runtime.env_for(instance_id).items():
        if key in {"PATH", "TRAINCTL_ROOT"}:
            monkeypatch.setenv(key, value)
    return cloud.runtime.instance_root(instance_id)


def test_the_agent_copies_the_dataset_onto_the_formatted_instance_store_and_verifies_it(
    cloud: Sandbox, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3 = cloud.client("s3")
    bodies = {f"shard-{i}.bin": bytes([i]) * (100 + i) for i in range(9)} | {"meta/info.json": b"{}"}
    for rel, body in bodies.items():
        s3.put_object(Bucket=bucket, Key=f"ds/{rel}", Body=body)
    root = _instance(cloud, "g4dn.xlarge", monkeypatch)
    monkeypatch.setattr(data_cache.shutil, "which", lambda name: None)  # no s5cmd: the agent's client copies

    done = prepare(DataCache(uri=f"s3://{bucket}/ds", mount="/mnt/cache", workers=4), client(cloud))

    assert done.tool == "agent" and done.files == 10 and done.bytes == sum(len(b) for b in bodies.values())
    assert done.device.startswith("/dev/disk/by-id/nvme-Amazon_EC2_NVMe_Instance_Storage_AWS")
    assert "/mnt/cache xfs" in (root / "proc" / "mounts").read_text()  # formatted (blank store) and mounted
    on_store = {
        p.relative_to(done.folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in done.folder.rglob("*")
        if p.is_file()
    }
    assert on_store == {rel: hashlib.sha256(body).hexdigest() for rel, body in bodies.items()}
    # Again on the same instance (an agent restarted): mounted already, nothing copied twice, still verified.
    assert prepare(DataCache(uri=f"s3://{bucket}/ds/", mount="/mnt/cache"), client(cloud)).files == 10


def test_no_instance_store_or_an_unsafe_key_is_refused_before_anything_is_copied(
    cloud: Sandbox, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cloud.client("s3").put_object(Bucket=bucket, Key="ds/ok.bin", Body=b"x")
    _instance(cloud, "t3.micro", monkeypatch)
    with pytest.raises(DataCacheError, match="no NVMe instance store"):
        prepare(DataCache(uri=f"s3://{bucket}/ds/", mount="/mnt/cache"), client(cloud))

    cloud.client("s3").put_object(Bucket=bucket, Key="ds/a\\..\\b", Body=b"y")
    root = _instance(cloud, "g4dn.xlarge", monkeypatch)
    with pytest.raises(IntegrityError, match="unsafe path"):
        prepare(DataCache(uri=f"s3://{bucket}/ds/", mount="/mnt/cache"), client(cloud))
    assert [p for p in (root / "mnt" / "cache").rglob("*") if p.is_file()] == []
