"""The transfer flow against a bucket whose default encryption is SSE-KMS (its own module, so pytest-xdist's
loadfile runs it beside the other transfer flow tests)."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest
from boto3.s3.transfer import TransferConfig

import tasks.transfer
from core import tags as t
from core.transfer import TransferRequest
from flows.transfer import transfer
from sandbox import Sandbox
from tasks.ec2_instances import LaunchRequest, launch_instance
from tasks.ssm import wait_online
from tests.flows.test_transfer import BUCKET, digest, make_tree

pytestmark = pytest.mark.sandbox


def test_s3_legs_with_a_bucket_encrypted_by_kms(
    cloud: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SSE-KMS objects' ETags are no MD5s (the sandbox does as S3 does): their checksums verify them, here and on
    the instance (a full-object CRC64NVME, or a COMPOSITE one of boto3's parts), and a re-run still moves nothing.
    (Instance ↔ local legs compare MD5s of files.) The checksums are fetched for all files at once: no file's own
    check asks S3 for its object's checksum."""

    def one_head_per_file(*args: object) -> None:
        raise AssertionError(f"a file's check sent its own HeadObject: {args}")

    monkeypatch.setattr(tasks.transfer, "_matches_checksum", one_head_per_file)
    s3 = cloud.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    rule = {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms"}}
    s3.put_bucket_encryption(Bucket=BUCKET, ServerSideEncryptionConfiguration={"Rules": [rule]})
    make_tree(tmp_path / "src", 12, 2)
    # One object boto3 uploaded in 6 MiB parts (a CRC32 per part: a COMPOSITE checksum), the same file locally.
    parts = os.urandom(11 * 1024 * 1024)
    (tmp_path / "src" / "parts.bin").write_bytes(parts)
    config = TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=6 * 1024 * 1024)
    s3.upload_fileobj(io.BytesIO(parts), BUCKET, "up/parts.bin", Config=config)
    composite = s3.head_object(Bucket=BUCKET, Key="up/parts.bin", ChecksumMode="ENABLED")
    assert (composite["ChecksumType"], composite["ServerSideEncryption"]) == ("COMPOSITE", "aws:kms")
    want = digest(tmp_path / "src")
    instance = launch_instance.fn(
        LaunchRequest(name="k", role=t.Role.TRAIN, idempotency_key="tx-kms", instance_type="t3.micro")
    )
    wait_online.fn(instance.id)
    on_instance = Path(cloud.runtime.instance_root(instance.id))
    legs = [
        (str(tmp_path / "src"), f"s3://{BUCKET}/up/"),
        (f"s3://{BUCKET}/up/", f"{instance.id}:/data/k"),
        (f"{instance.id}:/data/k", f"s3://{BUCKET}/back/"),
        (f"s3://{BUCKET}/back/", str(tmp_path / "down")),
    ]
    for (src, dst), copied in zip(legs, (12, 13, 13, 13), strict=True):  # the first finds parts.bin already there
        report = transfer(TransferRequest(src=src, dst=dst))
        assert (report.files_copied, report.verified, report.mismatches) == (copied, True, []), report
    empty = s3.head_object(Bucket=BUCKET, Key="back/empty.txt")
    assert (
        empty["ServerSideEncryption"] == "aws:kms"
        and empty["ETag"] != f'"{hashlib.md5(b"", usedforsecurity=False).hexdigest()}"'
    )
    assert digest(on_instance / "data" / "k") == digest(tmp_path / "down") == want
    for src, dst in legs:
        again = transfer(TransferRequest(src=src, dst=dst))
        assert (again.files_copied, again.files_skipped) == (0, 13), again
