"""Checkpoints (agent/checkpoints.py) in-process against the sandbox: the upload order, restore past a corrupt
checkpoint, and a prefetch the restore at the start does not download again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.checkpoints import Checkpoints
from agent.spec import AgentSpec
from sandbox import Sandbox
from tests.agent.conftest import client

pytestmark = pytest.mark.sandbox


def test_checkpoint_upload_order_and_restore_falls_back_past_a_corrupt_checkpoint(
    cloud: Sandbox, bucket: str, tmp_path: Path
) -> None:
    s3 = client(cloud)
    puts: list[str] = []
    original = s3.put_object

    def recording(bucket_: str, key: str, data: bytes, **kwargs: Any) -> str:
        puts.append(key)
        return original(bucket_, key, data, **kwargs)

    s3.put_object = recording  # type: ignore[method-assign,assignment]
    spec = AgentSpec.from_dict({"job": "order", "attempt": 1, "bucket": bucket, "command": ["true"]})
    folder = tmp_path / "ckpt"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.pt").write_bytes(b"m1")
    (folder / "sub" / "opt.pt").write_bytes(b"o1")
    (folder / "half.tmp").write_bytes(b"in flight")  # a trainer's temp file is not part of a checkpoint
    ckpt = Checkpoints(s3, spec, folder, "i-test")
    assert ckpt.restore() == ""
    assert ckpt.upload() == 1
    prefix = "trainctl/jobs/order/checkpoints/"
    assert puts == [
        f"{prefix}ckpt-000001/model.pt",
        f"{prefix}ckpt-000001/sub/opt.pt",
        f"{prefix}ckpt-000001/MANIFEST.json",
        f"{prefix}LATEST.json",
    ]
    assert ckpt.upload() is None  # unchanged: nothing new
    (folder / "model.pt").write_bytes(b"m2")
    assert ckpt.upload() == 2 and ckpt.verify(2) == (True, "2 files verified")
    # Corrupt checkpoint 2 behind the agent's back: restore rejects it (sha256) and falls back to 1.
    cloud.client("s3").put_object(Bucket=bucket, Key=f"{prefix}ckpt-000002/model.pt", Body=b"XX")
    fresh = Checkpoints(client(cloud), spec, tmp_path / "restored", "i-test2")
    assert fresh.restore() == str(tmp_path / "restored")
    assert (tmp_path / "restored" / "model.pt").read_bytes() == b"m1"
    assert fresh.last_seq == 1 and fresh.next_seq == 3  # a new upload never reuses folder 2


def test_a_prefetched_checkpoint_is_not_downloaded_again_at_the_start_unless_it_changed(
    cloud: Sandbox, bucket: str, tmp_path: Path
) -> None:
    """The replacement of an interrupted attempt prefetches the checkpoint while the old instance serves its notice;
    the restore at the trainer's start then downloads only what is not there as prefetched."""
    spec = AgentSpec.from_dict({"job": "prefetch", "attempt": 1, "bucket": bucket, "command": ["true"]})
    source = tmp_path / "source"
    source.mkdir()
    (source / "model.pt").write_bytes(b"m" * 1000)
    (source / "opt.pt").write_bytes(b"o" * 1000)
    assert Checkpoints(client(cloud), spec, source, "i-old").upload() == 1

    s3 = client(cloud)
    downloads: list[str] = []
    original = s3.download_file

    def recording(bucket_: str, key: str, target: Path) -> tuple[int, str]:
        downloads.append(key.rsplit("/", 1)[-1])
        return original(bucket_, key, target)

    s3.download_file = recording  # type: ignore[method-assign,assignment]
    folder = tmp_path / "new" / "checkpoints"
    assert Checkpoints(s3, spec, folder, "i-new").restore(prefetch=True) == str(folder)
    assert sorted(downloads) == ["model.pt", "opt.pt"]
    marker = folder.parent / ".checkpoints.trainctl-prefetched.json"
    assert marker.exists()

    downloads.clear()
    (folder / "opt.pt").write_bytes(b"x" * 1000)  # changed on the instance since the prefetch: fetched again
    at_start = Checkpoints(s3, spec, folder, "i-new")
    assert at_start.restore() == str(folder) and at_start.last_seq == 1
    assert downloads == ["opt.pt"]
    assert (folder / "opt.pt").read_bytes() == b"o" * 1000 and (folder / "model.pt").read_bytes() == b"m" * 1000
    assert not marker.exists()  # used once
