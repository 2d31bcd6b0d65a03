"""Big files (a part or more) checked while they are copied, against the sandbox's S3 through the plain functions:
a download computes the object's checksum as the bytes arrive (tasks/verified_copy.py), an upload sends its
CRC64NVME for S3 to check. The report says which check each file got."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import Any

import pytest
from awscrt import checksums
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from core.transfer import MIB, PARTIAL_PREFIX, Checksum, TransferRequest, TransferVerifyError
from flows.transfer import raise_on_mismatch, run_transfer
from sandbox import Sandbox
from tasks import local_files, verified_copy
from tasks import transfer as tx
from tests.tasks.test_transfer import BUCKET, cloud, digest, md5  # noqa: F401 (cloud: the module's sandbox fixture)

pytestmark = pytest.mark.sandbox


def crc64(data: bytes) -> str:
    return base64.b64encode(checksums.crc64nvme(data).to_bytes(8, "big")).decode()


def download(prefix: str, dst: Path) -> Any:
    return run_transfer(TransferRequest(src=f"s3://{BUCKET}/{prefix}", dst=str(dst), part_size_mib=5))


def test_each_kind_of_checksum_is_checked_as_the_bytes_arrive(
    cloud: Sandbox,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A full-object CRC64NVME, a COMPOSITE CRC32 (boto3's multipart upload), a single-part MD5 ETag and a multipart
    MD5 ETag (objects without checksums, as a store like SeaweedFS keeps s5cmd's uploads): each big file is
    verified in flight, never read again; the small file is checked after it lands, as before."""
    s3 = cloud.client("s3")
    data = {name: os.urandom(11 * MIB + 7) for name in ("full", "composite", "md5", "parts")}
    s3.put_object(Bucket=BUCKET, Key="kinds/full.bin", Body=data["full"], ChecksumAlgorithm="CRC64NVME")
    config = TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB)
    s3.upload_fileobj(io.BytesIO(data["composite"]), BUCKET, "kinds/composite.bin", Config=config)
    s3.put_object(Bucket=BUCKET, Key="kinds/md5.bin", Body=data["md5"])
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key="kinds/parts.bin")["UploadId"]
    parts = [
        {"PartNumber": n, "ETag": s3.upload_part(
            Bucket=BUCKET, Key="kinds/parts.bin", UploadId=upload, PartNumber=n, Body=data["parts"][o : o + 5 * MIB]
        )["ETag"]}
        for n, o in enumerate(range(0, len(data["parts"]), 5 * MIB), start=1)
    ]  # fmt: skip
    s3.complete_multipart_upload(
        Bucket=BUCKET, Key="kinds/parts.bin", UploadId=upload, MultipartUpload={"Parts": parts}
    )
    s3.put_object(Bucket=BUCKET, Key="kinds/small.txt", Body=b"small")
    head = s3.head_object(Bucket=BUCKET, Key="kinds/composite.bin", ChecksumMode="ENABLED")
    assert (head["ChecksumType"], head["ChecksumCRC32"].endswith("-3")) == ("COMPOSITE", True)
    real_head = tx.head_as_listed

    def no_checksum_for_md5_objects(prefix: Any, rel: str, **kwargs: Any) -> tuple[bool, Checksum | None]:
        as_listed, checksum = real_head(prefix, rel, **kwargs)
        return as_listed, None if rel in ("md5.bin", "parts.bin") else checksum

    read_after: list[str] = []
    real_matches = tx.matches_object

    def spy(path: Path, *args: Any, **kwargs: Any) -> bool:
        read_after.append(path.name)
        return real_matches(path, *args, **kwargs)

    monkeypatch.setattr(verified_copy, "head_as_listed", no_checksum_for_md5_objects)
    monkeypatch.setattr(tx, "matches_object", spy)
    report = download("kinds/", tmp_path / "d")

    assert (report.files_copied, report.verified, report.mismatches) == (5, True, [])
    assert report.checks == {
        "crc64nvme-in-flight": 1,
        "composite-crc32-in-flight": 1,
        "md5-etag-in-flight": 1,
        "multipart-etag-in-flight": 1,
        "md5-etag-after": 1,
    }
    assert read_after == ["small.txt"]  # no big file was read a second time
    want = {f"{name}.bin": md5(body) for name, body in data.items()}
    assert digest(tmp_path / "d") == want | {"small.txt": md5(b"small")}
    assert not list((tmp_path / "d").glob(PARTIAL_PREFIX + "*"))


def test_a_corrupted_byte_or_a_replaced_object_fails_the_download_and_nothing_is_placed(
    cloud: Sandbox,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One byte flipped on its way from S3 (the engine's read path, patched here) fails the in-flight CRC check: a
    mismatch, not changed in S3, the file not placed. An object replaced between two of its ranges fails the
    later range's IfMatch: reported as changed in S3 since the listing, not verified, not placed."""
    s3 = cloud.client("s3")
    body = os.urandom(12 * MIB)
    s3.put_object(Bucket=BUCKET, Key="bad/corrupt.bin", Body=body)
    s3.put_object(Bucket=BUCKET, Key="bad/ok.txt", Body=b"fine")
    real_read = verified_copy._read_exact
    flipped: list[int] = []

    def flip_one_byte(stream: Any, n: int) -> bytes:
        block = real_read(stream, n)
        if not flipped and block:
            flipped.append(1)
            return bytes([block[0] ^ 1]) + block[1:]
        return block

    with monkeypatch.context() as patch:
        patch.setattr(verified_copy, "_read_exact", flip_one_byte)
        corrupt = download("bad/", tmp_path / "d")
    assert (corrupt.mismatches, corrupt.changed, corrupt.verified) == (["corrupt.bin"], [], False)
    assert corrupt.checks == {"md5-etag-after": 1} and flipped == [1]
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["ok.txt"]  # no partial folder left either

    s3.put_object(Bucket=BUCKET, Key="moving/moving.bin", Body=body)
    real_get = verified_copy._get_range

    def replace_before_the_last_range(s3_: Any, bucket: str, job: Any, index: int, *rest: int) -> int:
        if index == len(job.md5s) - 1:  # one slot per range
            s3.put_object(Bucket=BUCKET, Key="moving/moving.bin", Body=os.urandom(12 * MIB))
        return real_get(s3_, bucket, job, index, *rest)

    monkeypatch.setattr(verified_copy, "_get_range", replace_before_the_last_range)
    moved = download("moving/", tmp_path / "m")
    assert (moved.mismatches, moved.changed, moved.verified, moved.checks) == (
        ["moving.bin"],
        ["moving.bin"],
        False,
        {},
    )
    assert not (tmp_path / "m" / "moving.bin").exists()
    with pytest.raises(TransferVerifyError, match=r"1 changed in S3 since the listing: moving\.bin"):
        raise_on_mismatch(moved)


def test_big_uploads_are_checked_by_s3_which_refuses_bytes_unlike_their_checksum(
    cloud: Sandbox,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A big file goes up as a FULL_OBJECT CRC64NVME multipart upload: S3 keeps the checksum we computed while
    reading it, and the verify step reads nothing again. A part whose bytes differ from the CRC sent with it is
    refused (BadDigest): the file is a mismatch, its upload aborted, no object written."""
    s3 = cloud.client("s3")
    src = tmp_path / "src"
    src.mkdir()
    big = os.urandom(12 * MIB + 5)
    (src / "big.bin").write_bytes(big)
    (src / "small.txt").write_bytes(b"small")
    md5_read: list[str] = []
    real_md5_range = local_files._md5_range

    def md5_spy(path: Path, offset: int, length: int) -> bytes:
        md5_read.append(path.name)
        return real_md5_range(path, offset, length)

    with monkeypatch.context() as patch:
        patch.setattr(local_files, "_md5_range", md5_spy)
        up = run_transfer(TransferRequest(src=str(src), dst=f"s3://{BUCKET}/up-big/", part_size_mib=5))
    assert (up.files_copied, up.verified, up.mismatches) == (2, True, [])
    assert up.checks == {"crc64nvme-by-s3": 1, "md5-etag": 1} and md5_read == ["small.txt"]
    head = s3.head_object(Bucket=BUCKET, Key="up-big/big.bin", ChecksumMode="ENABLED")
    assert (head["ChecksumType"], head["ChecksumCRC64NVME"], head["ETag"].endswith('-3"')) == (
        "FULL_OBJECT",
        crc64(big),
        True,
    )
    assert s3.get_object(Bucket=BUCKET, Key="up-big/big.bin")["Body"].read() == big

    real_crc = verified_copy._part_crc
    monkeypatch.setattr(verified_copy, "_part_crc", lambda data: real_crc(bytes([data[0] ^ 1]) + data[1:]))
    refused = run_transfer(TransferRequest(src=str(src), dst=f"s3://{BUCKET}/refused/", part_size_mib=5))
    assert (refused.mismatches, refused.verified, refused.checks) == (["big.bin"], False, {"md5-etag": 1})
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="refused/")["Contents"]]
    assert keys == ["refused/small.txt"]
    assert s3.list_multipart_uploads(Bucket=BUCKET, Prefix="refused/").get("Uploads", []) == []
    with pytest.raises(TransferVerifyError, match=r"big\.bin"):
        raise_on_mismatch(refused)


def test_the_sandbox_checks_sent_checksums_as_s3_does(cloud: Sandbox) -> None:  # noqa: F811
    """UploadPart with a CRC64NVME other than its bytes', and CompleteMultipartUpload of a FULL_OBJECT upload with
    a full-object CRC64NVME other than the parts': BadDigest, as on S3 (moto accepts both); a right one is
    answered with the checksum and its type."""
    s3 = cloud.client("s3")
    key = "sandbox/full.bin"
    parts = [os.urandom(5 * MIB), os.urandom(MIB)]
    upload = s3.create_multipart_upload(
        Bucket=BUCKET, Key=key, ChecksumAlgorithm="CRC64NVME", ChecksumType="FULL_OBJECT"
    )["UploadId"]
    with pytest.raises(ClientError, match="BadDigest"):
        s3.upload_part(
            Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=1, Body=parts[0], ChecksumCRC64NVME=crc64(parts[1])
        )
    sent = [
        {"PartNumber": n, "ChecksumCRC64NVME": crc64(part), "ETag": s3.upload_part(
            Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=n, Body=part, ChecksumCRC64NVME=crc64(part)
        )["ETag"]}
        for n, part in enumerate(parts, start=1)
    ]  # fmt: skip
    complete = {"Bucket": BUCKET, "Key": key, "UploadId": upload, "MultipartUpload": {"Parts": sent}}
    with pytest.raises(ClientError, match="BadDigest"):
        s3.complete_multipart_upload(**complete, ChecksumCRC64NVME=crc64(parts[0]), ChecksumType="FULL_OBJECT")
    done = s3.complete_multipart_upload(
        **complete, ChecksumCRC64NVME=crc64(b"".join(parts)), ChecksumType="FULL_OBJECT"
    )
    assert (done["ChecksumCRC64NVME"], done["ChecksumType"]) == (crc64(b"".join(parts)), "FULL_OBJECT")
