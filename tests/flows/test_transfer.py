"""The transfer flow in the sandbox: all six directions on one tree, byte-identical, staging removed.

The issue's full sizes (1,000 files incl. one 100 MB file, per direction) run in `test_full_size_...`, marked
slow: deselected by default, run with `pytest -m slow` (about 2.5 minutes on a shared 2-core machine).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import pytest

from core import tags as t
from core.errors import TrainctlError
from core.transfer import PARTIAL_PREFIX, TransferRequest, receive_script
from flows.transfer import transfer
from sandbox import Sandbox
from tasks.ec2_instances import LaunchRequest, launch_instance
from tasks.ssm import run_command, wait_online
from tasks.transfer import PARTIAL_LOCK

pytestmark = pytest.mark.sandbox
BUCKET = "flow-data"
slow = pytest.mark.slow


def make_tree(root: Path, n: int, big_mib: int) -> None:
    """Nested folders, an empty file, unicode and spaced names, one big file."""
    rng = random.Random(n)
    files = {"big/shard.bin": os.urandom(big_mib * 1024 * 1024), "empty.txt": b""}
    for i in range(n - 2):
        files[f"train/c{i % 5}/d{i % 3}/{'ünï ' if i % 7 == 0 else ''}f {i:04d}.jpg"] = rng.randbytes(
            rng.randint(1, 4000)
        )
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes(), usedforsecurity=False).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def _six_directions(cloud: Sandbox, tmp_path: Path, n: int, big_mib: int) -> None:
    s3 = cloud.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    src = tmp_path / "src"
    make_tree(src, n, big_mib)
    want = digest(src)
    instance = launch_instance.fn(
        LaunchRequest(name="w", role=t.Role.TRAIN, idempotency_key="tx-1", instance_type="t3.micro", job="demo")
    )
    wait_online.fn(instance.id)
    on_instance = Path(cloud.runtime.instance_root(instance.id))

    def run(src_: str, dst_: str, **options: object) -> None:
        report = transfer(TransferRequest(src=src_, dst=dst_, **options))
        assert (report.files_copied, report.verified, report.mismatches) == (n, True, []), report
        leftovers = s3.list_objects_v2(Bucket=BUCKET, Prefix="trainctl/").get("KeyCount", 0)
        assert leftovers == 0, f"staging left behind after {report.direction}"

    run(str(src), f"s3://{BUCKET}/up/")  # local → S3
    run(f"s3://{BUCKET}/up/", str(tmp_path / "down"))  # S3 → local
    assert digest(tmp_path / "down") == want
    # Partial folders on the instance: a killed receive's (lock free) goes, a live one's (lock held) stays.
    stale, live = (on_instance / "data" / "a" / f"{PARTIAL_PREFIX}{name}" for name in ("old", "live"))
    for folder in (stale, live):
        (folder / "x").mkdir(parents=True)
        (folder / "x" / "half.bin").write_bytes(b"half")
        (folder / PARTIAL_LOCK).touch()
    with (live / PARTIAL_LOCK).open("r+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        run(str(src), "job:demo:/data/a", staging=f"s3://{BUCKET}")  # local → instance (job's staging layout)
        assert not stale.exists() and (live / "x" / "half.bin").exists()
    shutil.rmtree(live)
    assert digest(on_instance / "data" / "a") == want
    run(f"{instance.id}:/data/a", str(tmp_path / "back"), staging=f"s3://{BUCKET}", compress=True)  # instance → local
    assert digest(tmp_path / "back") == want
    run(f"s3://{BUCKET}/up/", f"{instance.id}:/data/b")  # S3 → instance
    assert digest(on_instance / "data" / "b") == want
    run(f"{instance.id}:/data/b", f"s3://{BUCKET}/from-instance/")  # instance → S3
    run(f"s3://{BUCKET}/from-instance/", str(tmp_path / "round"))
    assert digest(tmp_path / "round") == want
    # A re-run of an instance leg moves nothing.
    again = transfer(TransferRequest(src=str(src), dst=f"{instance.id}:/data/a", staging=f"s3://{BUCKET}/tmp"))
    assert (again.files_copied, again.files_skipped) == (0, n)


def test_six_directions_byte_identical_and_staging_removed(cloud: Sandbox, tmp_path: Path) -> None:
    _six_directions(cloud, tmp_path, n=30, big_mib=2)


@slow
def test_full_size_six_directions(cloud: Sandbox, tmp_path: Path) -> None:
    _six_directions(cloud, tmp_path, n=1000, big_mib=100)


def test_a_failed_receive_on_the_instance_leaves_no_partial_folder(cloud: Sandbox) -> None:
    cloud.client("s3").create_bucket(Bucket=BUCKET)
    instance = launch_instance.fn(
        LaunchRequest(name="r", role=t.Role.TRAIN, idempotency_key="tx-fail", instance_type="t3.micro")
    )
    wait_online.fn(instance.id)
    manifest = {"files": {"a.bin": {"size": 3, "md5": "0" * 32}}, "delete": [], "verify": True}
    cloud.client("s3").put_object(Bucket=BUCKET, Key="m/manifest.json", Body=json.dumps(manifest).encode())
    # The manifest names a file the staging prefix does not hold: the fetch fails half-way through the script.
    script = receive_script(
        "/data/c",
        f"{PARTIAL_PREFIX}t1",
        f"s3://{BUCKET}/m/manifest.json",
        files_prefix=f"s3://{BUCKET}/m/files/",
        archive_uri=None,
        part_mib=50,
    )
    with pytest.raises(TrainctlError):
        run_command.fn(instance.id, script, what="receive files", timeout_s=60)
    folder = Path(cloud.runtime.instance_root(instance.id)) / "data" / "c"
    assert folder.is_dir() and list(folder.iterdir()) == []
