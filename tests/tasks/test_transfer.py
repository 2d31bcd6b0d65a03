"""local ↔ S3 against the sandbox's S3 (moto server), through the plain functions (no Prefect API needed):
byte-identical trees with both engines, resume counts, verify catching a corrupted object, bad input refused
with nothing left under a final name."""

from __future__ import annotations

import hashlib
import io
import os
import random
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from blocks.aws import clear_client_cache, load_account
from core import tags as t
from core.errors import InvalidInputError, UsageError
from core.s3uri import S3Uri
from core.transfer import (
    INSTANCE_HELPER,
    MIB,
    PARTIAL_LOCK,
    PARTIAL_PREFIX,
    Checksum,
    PathEscapeError,
    TransferError,
    TransferRequest,
    TransferVerifyError,
    expectation,
    normalize_etag,
)
from flows.transfer import raise_on_mismatch, run_transfer
from sandbox import Sandbox
from tasks import copy_engines, local_files
from tasks import transfer as tx
from tasks.ec2_instances import LaunchRequest, launch_instance, resolve_instance
from tasks.s3 import delete_prefix, put_json
from tasks.ssm import wait_online

pytestmark = pytest.mark.sandbox
BUCKET = "tx-data"


@pytest.fixture(scope="module")
def cloud() -> Iterator[Sandbox]:
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    with Sandbox(boot_delay=0.2) as sandbox:
        os.environ.update(sandbox.env)
        clear_client_cache()
        sandbox.client("s3").create_bucket(Bucket=BUCKET)
        yield sandbox
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    clear_client_cache()


def make_tree(root: Path, n: int = 40, big_mib: int = 3) -> dict[str, str]:
    """Nested folders, an empty file, unicode and spaced names, one file of a few MB: rel → md5."""
    rng = random.Random(n)
    files = {"big/shard.bin": os.urandom(big_mib * 1024 * 1024), "empty.txt": b""}
    for i in range(n - 2):
        name = f"train/c{i % 4}/{'ünïcödé ' if i % 5 == 0 else ''}img {i:03d}.jpg"
        files[name] = rng.randbytes(rng.randint(1, 3000))
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return {rel: md5(data) for rel, data in files.items()}


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): md5(p.read_bytes()) for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("engine", ["s5cmd", "python"])
def test_tree_round_trip_is_byte_identical_and_a_rerun_moves_nothing(
    cloud: Sandbox, tmp_path: Path, engine: str
) -> None:
    # 5 MiB parts: the 3 MiB file is one part with s5cmd and boto3 alike; the 12 MiB one is multipart.
    expected = make_tree(tmp_path / "src")
    (tmp_path / "src" / "big" / "multi.bin").write_bytes(os.urandom(12 * 1024 * 1024))
    expected = digest(tmp_path / "src")
    up = run_transfer(
        TransferRequest(src=str(tmp_path / "src"), dst=f"s3://{BUCKET}/{engine}/", engine=engine, part_size_mib=5)
    )
    assert (up.files_copied, up.verified, up.mismatches) == (41, True, [])
    etag = cloud.client("s3").head_object(Bucket=BUCKET, Key=f"{engine}/big/multi.bin")["ETag"]
    assert etag.strip('"').endswith("-3")  # multipart: the ETag arithmetic was exercised
    down = run_transfer(TransferRequest(src=f"s3://{BUCKET}/{engine}/", dst=str(tmp_path / "dst"), engine=engine))
    assert (down.files_copied, down.verified) == (41, True)
    assert digest(tmp_path / "dst") == expected
    again = run_transfer(TransferRequest(src=f"s3://{BUCKET}/{engine}/", dst=str(tmp_path / "dst"), engine=engine))
    assert (again.files_copied, again.files_skipped) == (0, 41)


def test_the_python_engine_reports_each_file_as_it_lands(cloud: Sandbox, tmp_path: Path) -> None:
    """Without s5cmd: small files through s3fs, files of a part or more through boto3; every file reported once
    (progress and `landed`, which places downloaded files as they come)."""
    make_tree(tmp_path / "src", n=12, big_mib=6)
    files = sorted(p for p in (tmp_path / "src").rglob("*") if p.is_file())
    rels = [p.relative_to(tmp_path / "src").as_posix() for p in files]
    for upload in (True, False):
        landed: list[int] = []
        moved = [0, 0]

        def progress(n: int, nbytes: int, moved: list[int] = moved) -> None:
            moved[0] += n
            moved[1] += nbytes

        remote = [f"s3://{BUCKET}/py/{rel}" for rel in rels]
        local = [str(p) if upload else str(tmp_path / "down" / rel) for p, rel in zip(files, rels, strict=True)]
        pairs = [
            (a, b, p.stat().st_size)
            for a, b, p in zip(local if upload else remote, remote if upload else local, files, strict=True)
        ]
        copy_engines.copy_pairs(
            pairs,
            engine="python",
            account=None,
            concurrency=8,
            part_mib=5,
            upload=upload,
            progress=progress,
            landed=landed.append,
        )
        assert sorted(landed) == list(range(len(files))) and moved == [len(files), sum(p[2] for p in pairs)]
    assert digest(tmp_path / "down") == digest(tmp_path / "src")


def test_resume_after_losing_half_moves_only_the_rest(cloud: Sandbox, tmp_path: Path) -> None:
    make_tree(tmp_path / "src")
    src, uri = str(tmp_path / "src"), f"s3://{BUCKET}/resume/"
    run_transfer(TransferRequest(src=src, dst=uri))
    s3 = cloud.client("s3")
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="resume/")["Contents"])
    for key in keys[::2]:
        s3.delete_object(Bucket=BUCKET, Key=key)
    # Same size, other bytes: found by checksum, not by size.
    changed = tmp_path / "src" / keys[3].removeprefix("resume/")  # a kept, non-empty one
    changed.write_bytes(bytes(b ^ 0xFF for b in changed.read_bytes()))
    again = run_transfer(TransferRequest(src=src, dst=uri))
    assert again.files_copied == len(keys[::2]) + 1 and again.files_skipped == len(keys) - again.files_copied
    # The download side: delete half locally, re-run, count.
    run_transfer(TransferRequest(src=uri, dst=str(tmp_path / "dst")))
    gone = sorted((tmp_path / "dst").rglob("*.jpg"))[::2]
    for path in gone:
        path.unlink()
    back = run_transfer(TransferRequest(src=uri, dst=str(tmp_path / "dst")))
    assert back.files_copied == len(gone) and digest(tmp_path / "dst") == digest(tmp_path / "src")


def test_dry_run_lists_and_delete_needs_the_flag(cloud: Sandbox, tmp_path: Path) -> None:
    make_tree(tmp_path / "src", n=6)
    uri = f"s3://{BUCKET}/sync/"
    cloud.client("s3").put_object(Bucket=BUCKET, Key="sync/stale.txt", Body=b"old")
    dry = run_transfer(TransferRequest(src=str(tmp_path / "src"), dst=uri, dry_run=True, delete=True))
    assert len(dry.would_copy) == 6 and dry.would_delete == ["stale.txt"] and dry.files_copied == 0
    kept = run_transfer(TransferRequest(src=str(tmp_path / "src"), dst=uri, include=["train/*"]))
    assert kept.files_copied == 4 and kept.files_deleted == 0
    synced = run_transfer(TransferRequest(src=str(tmp_path / "src"), dst=uri, delete=True))
    assert (synced.files_copied, synced.files_skipped, synced.files_deleted) == (2, 4, 1)


def test_an_upload_moves_exactly_the_planned_files(
    cloud: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exactly the planned files go up, each under its own name (glob characters stay plain characters): not a
    file added to the folder after the scan (no engine lists the folder again), a symlink, a killed run's partial
    folder or a filtered-out file."""
    s3 = cloud.client("s3")
    src = tmp_path / "src"
    (src / "a [1]").mkdir(parents=True)
    (src / "a [1]" / "x*?{y}.bin").write_bytes(b"glob")
    (src / ".hidden").write_bytes(b"dot")
    real_copy = copy_engines.copy_pairs

    def copy_after_a_late_file(pairs: list[tuple[str, str, int]], **kwargs: Any) -> None:
        (src / "late.bin").write_bytes(b"written after the scan")  # the plan never saw it
        real_copy(pairs, **kwargs)

    monkeypatch.setattr(copy_engines, "copy_pairs", copy_after_a_late_file)
    whole = run_transfer(TransferRequest(src=str(src), dst=f"s3://{BUCKET}/whole/", engine="s5cmd"))
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="whole/")["Contents"]}
    assert keys == {"whole/a [1]/x*?{y}.bin", "whole/.hidden"} and (whole.files_copied, whole.verified) == (2, True)
    monkeypatch.undo()
    (src / "late.bin").unlink()

    (src / "skip.tmp").write_bytes(b"excluded")
    (tmp_path / "outside.txt").write_bytes(b"secret")
    (src / "link.txt").symlink_to(tmp_path / "outside.txt")
    (src / "linked-dir").symlink_to(tmp_path, target_is_directory=True)
    (src / f"{PARTIAL_PREFIX}old").mkdir()
    (src / f"{PARTIAL_PREFIX}old" / "half.bin").write_bytes(b"half")
    for exclude in ([], ["*.tmp"]):
        prefix = f"exact{len(exclude)}/"
        report = run_transfer(
            TransferRequest(src=str(src), dst=f"s3://{BUCKET}/{prefix}", engine="s5cmd", exclude=exclude)
        )
        keys = {o["Key"].removeprefix(prefix) for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]}
        assert keys == {"a [1]/x*?{y}.bin", ".hidden"} | ({"skip.tmp"} if not exclude else set())
        assert report.files_copied == len(keys) and report.verified


RACE_LITERAL = "-rf *'q\" ünï.bin"  # unchanged by the race: a name copied literally


def race_source(s3: Any, prefix: str) -> None:
    for rel, data in {"same.bin": b"A" * 1000, "grow.bin": b"B" * 1000, RACE_LITERAL: b"C" * 10}.items():
        s3.put_object(Bucket=BUCKET, Key=prefix + rel, Body=data)


def change_after_listing(s3: Any, prefix: str) -> None:
    """Keys with '..' appear under the prefix; one object gets other bytes of the same size, one a new size."""
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}../../escape-race", Body=b"escaped")
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}../escape-race2", Body=b"escaped")
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}same.bin", Body=b"Z" * 1000)
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}grow.bin", Body=b"Y" * 2000)


def assert_changed_objects_named(report: Any) -> None:
    assert report.mismatches == report.changed == ["grow.bin", "same.bin"] and not report.verified
    with pytest.raises(TransferVerifyError, match=r"2 changed in S3 since the listing: grow\.bin, same\.bin"):
        raise_on_mismatch(report)


@pytest.mark.parametrize("engine", ["s5cmd", "python"])
def test_a_download_copies_what_it_listed_or_says_the_source_changed(
    cloud: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: str
) -> None:
    """S3 changes after the listing, before the copy (`change_after_listing`). Nothing lands outside the
    destination, the new keys are not copied, and the changed objects fail verification as changed in S3 since
    the listing: their files are not placed (a file that was there before stays as it was). Names with quotes,
    '*', spaces and a leading dash are copied literally."""
    s3 = cloud.client("s3")
    prefix = f"race-{engine}/"
    race_source(s3, prefix)
    dst = tmp_path / "deep" / "er" / "dst"  # a '..' resolved from its partial folder still lands under tmp_path
    dst.mkdir(parents=True)
    (dst / "same.bin").write_bytes(b"stale local copy")
    real_copy = copy_engines.copy_pairs

    def change_s3_then_copy(pairs: list[tuple[str, str, int]], **kwargs: Any) -> None:
        change_after_listing(s3, prefix)
        real_copy(pairs, **kwargs)

    monkeypatch.setattr(copy_engines, "copy_pairs", change_s3_then_copy)
    report = run_transfer(TransferRequest(src=f"s3://{BUCKET}/{prefix}", dst=str(dst), engine=engine))

    assert_changed_objects_named(report)
    on_disk = {p.relative_to(tmp_path).as_posix(): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert on_disk == {f"deep/er/dst/{RACE_LITERAL}": b"C" * 10, "deep/er/dst/same.bin": b"stale local copy"}


def test_a_download_to_an_instance_places_only_what_it_listed(cloud: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same race with an instance as the destination: S3 changes once the manifest (the plan) is written,
    before the instance copies; the instance places only the listed objects that are still as listed."""
    s3 = cloud.client("s3")
    prefix = "race-instance/"
    race_source(s3, prefix)
    request = LaunchRequest(name="race", role=t.Role.TRAIN, idempotency_key="tx-race", instance_type="t3.micro")
    instance = launch_instance.fn(request)
    wait_online.fn(instance.id)
    data = Path(cloud.runtime.instance_root(instance.id)) / "data"
    (data / "race").mkdir(parents=True)
    (data / "race" / "same.bin").write_bytes(b"stale local copy")
    real_put = put_json.fn

    def put_then_change(uri: str, payload: Any, **kwargs: Any) -> str:
        written = real_put(uri, payload, **kwargs)
        if uri.endswith("manifest.json"):
            change_after_listing(s3, prefix)
        return written

    monkeypatch.setattr(put_json, "fn", put_then_change)
    report = run_transfer(TransferRequest(src=f"s3://{BUCKET}/{prefix}", dst=f"{instance.id}:/data/race"))

    assert_changed_objects_named(report)
    on_disk = {p.relative_to(data).as_posix(): p.read_bytes() for p in data.rglob("*") if p.is_file()}
    assert on_disk == {f"race/{RACE_LITERAL}": b"C" * 10, "race/same.bin": b"stale local copy"}
    assert list(data.parent.rglob("escape-race*")) == []
    cloud.client("ec2").terminate_instances(InstanceIds=[instance.id])


def test_a_corrupted_object_is_caught_by_verify(
    cloud: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tree(tmp_path / "src", n=5)
    uri = f"s3://{BUCKET}/corrupt/"
    s3 = cloud.client("s3")
    real_copy = copy_engines.copy_pairs

    def copy_then_corrupt(pairs: list[tuple[str, str, int]], **kwargs: object) -> None:
        real_copy(pairs, **kwargs)  # type: ignore[arg-type]
        # The object is overwritten after the copy and before verify: same size, other bytes.
        body = s3.get_object(Bucket=BUCKET, Key="corrupt/big/shard.bin")["Body"].read()
        s3.put_object(Bucket=BUCKET, Key="corrupt/big/shard.bin", Body=bytes([body[0] ^ 1]) + body[1:])

    monkeypatch.setattr(copy_engines, "copy_pairs", copy_then_corrupt)
    report = run_transfer(TransferRequest(src=str(tmp_path / "src"), dst=uri))
    assert report.mismatches == ["big/shard.bin"] and not report.verified
    with pytest.raises(TransferVerifyError, match=r"big/shard\.bin"):
        raise_on_mismatch(report)
    monkeypatch.undo()
    # Downloading a corrupted object: caught too, and nothing lands under its final name.
    s3.put_object(Bucket=BUCKET, Key="corrupt2/a.bin", Body=b"abc")
    monkeypatch.setattr(tx, "matches_object", lambda *a, **k: False)
    down = run_transfer(TransferRequest(src=f"s3://{BUCKET}/corrupt2/", dst=str(tmp_path / "d")))
    assert down.mismatches == ["a.bin"] and not (tmp_path / "d" / "a.bin").exists()
    assert not list((tmp_path / "d").glob(PARTIAL_PREFIX + "*"))


def test_full_object_checksums_check_big_files_and_what_etags_cannot(
    cloud: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file of a part or more is checked by the object's CRC64NVME as its bytes arrive (one HEAD, no MD5 pass, no
    second read: tests/tasks/test_transfer_inflight.py); a small one whose ETag is no MD5 of its bytes (as under
    SSE-KMS) by its checksum; a wrong checksum is a mismatch."""
    s3 = cloud.client("s3")
    s3.put_object(Bucket=BUCKET, Key="ck/big.bin", Body=os.urandom(6 * 1024 * 1024), ChecksumAlgorithm="CRC64NVME")
    s3.put_object(Bucket=BUCKET, Key="ck/small.bin", Body=b"small file", ChecksumAlgorithm="CRC32C")
    assert s3.head_object(Bucket=BUCKET, Key="ck/big.bin", ChecksumMode="ENABLED")["ChecksumCRC64NVME"]
    hashed: list[str] = []
    real_etag = tx.matches_etag

    def spy(path: Path, etag: str, part_size: int | None) -> bool:
        hashed.append(path.name)
        return real_etag(path, etag, part_size)

    def fetch(dst: str) -> Any:
        return run_transfer(TransferRequest(src=f"s3://{BUCKET}/ck/", dst=str(tmp_path / dst), part_size_mib=5))

    monkeypatch.setattr(tx, "matches_etag", spy)
    down = fetch("d1")
    assert (down.files_copied, down.verified) == (2, True) and hashed == ["small.bin"]
    assert down.checks == {"crc64nvme-in-flight": 1, "md5-etag-after": 1}

    # Uploading: the small file's ETag is computed while the copy runs; the big one is never MD5-hashed (S3 checks
    # the CRC64NVME it is uploaded with).
    md5_read: list[str] = []
    real_md5_range = local_files._md5_range

    def md5_spy(path: Path, offset: int, length: int) -> bytes:
        md5_read.append(path.name)
        return real_md5_range(path, offset, length)

    with monkeypatch.context() as patch:
        patch.setattr(local_files, "_md5_range", md5_spy)
        up = run_transfer(TransferRequest(src=str(tmp_path / "d1"), dst=f"s3://{BUCKET}/up/", part_size_mib=5))
    assert (up.files_copied, up.verified) == (2, True) and md5_read == ["small.bin"]
    assert up.checks == {"crc64nvme-by-s3": 1, "md5-etag": 1}

    # An identity that may not read object metadata: the ETags decide, as before checksums were used (the big
    # file's MD5 computed as it arrives).
    def forbidden(**request: object) -> None:
        raise ClientError({"Error": {"Code": "403", "Message": "Forbidden"}}, "HeadObject")

    with monkeypatch.context() as patch:
        patch.setattr(load_account(None).client("s3"), "head_object", forbidden)
        blind = fetch("d0")
        assert blind.verified and sorted(hashed) == ["small.bin", "small.bin"]
        assert blind.checks == {"md5-etag-in-flight": 1, "md5-etag-after": 1}
    monkeypatch.setattr(tx, "matches_etag", lambda *a: False)  # ETags that are no MD5s: the checksums decide
    assert fetch("d2").verified and digest(tmp_path / "d2") == digest(tmp_path / "d1")
    monkeypatch.setattr(tx, "file_checksum", lambda path, algorithm: "AAAAAAAAAAA=")
    bad = fetch("d3")  # the big file's CRC, computed in flight, is not the one patched here
    assert bad.mismatches == ["small.bin"] and not (tmp_path / "d3" / "small.bin").exists()
    assert bad.checks == {"crc64nvme-in-flight": 1}


def test_kms_objects_uploaded_in_parts_by_boto3_are_checked_by_their_composite_checksum(
    cloud: Sandbox, tmp_path: Path
) -> None:
    """boto3 and aws-cli upload big files with a CRC32 per part: S3 keeps a COMPOSITE checksum (of the parts'
    CRCs). Under SSE-KMS the ETag is no MD5 either, so that checksum is what verifies the download, and only the
    right bytes pass. The part size is inferred from the count: 3 parts of 17 MiB are 6 MiB here (8 MiB, a common
    size, also makes 3 parts, but other ones)."""
    from boto3.s3.transfer import TransferConfig

    s3 = cloud.client("s3")
    s3.create_bucket(Bucket="tx-kms-parts")
    rule = {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms"}}
    s3.put_bucket_encryption(Bucket="tx-kms-parts", ServerSideEncryptionConfiguration={"Rules": [rule]})
    data = os.urandom(17 * 1024 * 1024)
    config = TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=6 * MIB)
    s3.upload_fileobj(io.BytesIO(data), "tx-kms-parts", "ds/shard.bin", Config=config)
    head = s3.head_object(Bucket="tx-kms-parts", Key="ds/shard.bin", ChecksumMode="ENABLED")
    assert head["ChecksumType"] == "COMPOSITE" and head["ETag"].endswith('-3"')
    down = run_transfer(TransferRequest(src="s3://tx-kms-parts/ds/", dst=str(tmp_path / "d"), part_size_mib=5))
    assert (down.files_copied, down.verified, down.mismatches) == (1, True, [])
    assert (tmp_path / "d" / "shard.bin").read_bytes() == data
    # The same object, one byte changed on disk: the composite check says so.
    corrupt = bytearray(data)
    corrupt[7 * MIB] ^= 1
    (tmp_path / "bad.bin").write_bytes(corrupt)
    prefix, obj = S3Uri("tx-kms-parts", "ds/"), tx.S3Object(len(data), normalize_etag(head["ETag"]))
    assert not tx.matches_object(tmp_path / "bad.bin", obj, 5 * MIB, prefix=prefix, rel="shard.bin")
    assert tx.matches_object(tmp_path / "d" / "shard.bin", obj, 5 * MIB, prefix=prefix, rel="shard.bin")


def unfinished_uploads(s3: Any, prefix: str) -> set[str]:
    return {u["Key"] for u in s3.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads", [])}


def start_upload(s3: Any, key: str) -> None:
    """A killed upload's leftovers: an unfinished multipart upload with one part stored."""
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    s3.upload_part(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=1, Body=b"x" * 1024)


def test_unfinished_uploads_of_a_killed_run_or_a_failed_one_are_aborted(
    cloud: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tree(tmp_path / "src", n=5)
    s3 = cloud.client("s3")
    start_upload(s3, "mpu/big/shard.bin")  # a file this run copies again
    start_upload(s3, "mpu/gone.bin")  # not in the source: not this run's business
    report = run_transfer(TransferRequest(src=str(tmp_path / "src"), dst=f"s3://{BUCKET}/mpu/"))
    assert report.uploads_aborted == 1 and report.verified
    assert unfinished_uploads(s3, "mpu/") == {"mpu/gone.bin"}

    # A run that fails half-way aborts its own unfinished uploads before it reports the error.
    def copy_then_fail(pairs: list[tuple[str, str, int]], **kwargs: object) -> None:
        start_upload(s3, "failed/big/shard.bin")
        raise TransferError("s5cmd failed on 1 file(s): connection reset")

    monkeypatch.setattr(copy_engines, "copy_pairs", copy_then_fail)
    with pytest.raises(TransferError, match="connection reset"):
        run_transfer(TransferRequest(src=str(tmp_path / "src"), dst=f"s3://{BUCKET}/failed/"))
    assert unfinished_uploads(s3, "failed/") == set()

    # Staging prefixes are entirely trainctl's: removing one aborts every unfinished upload under it too.
    s3.put_object(Bucket=BUCKET, Key="stage/x/files/a.bin", Body=b"a")
    start_upload(s3, "stage/x/files/big.bin")
    assert delete_prefix.fn(f"s3://{BUCKET}/stage/x/") == 1
    assert unfinished_uploads(s3, "stage/") == set()


def test_bad_input_is_refused_before_anything_moves(
    cloud: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3 = cloud.client("s3")
    with pytest.raises(InvalidInputError, match="existing local"):
        run_transfer(TransferRequest(src=str(tmp_path / "missing"), dst=f"s3://{BUCKET}/x/"))
    with pytest.raises(InvalidInputError, match="does not exist"):
        run_transfer(TransferRequest(src="s3://no-such-bucket-here/x/", dst=str(tmp_path / "d")))
    with pytest.raises(TransferError, match="no objects"):
        run_transfer(TransferRequest(src=f"s3://{BUCKET}/nothing-here/", dst=str(tmp_path / "d")))
    s3.put_object(Bucket=BUCKET, Key="evil/ok.txt", Body=b"ok")
    s3.put_object(Bucket=BUCKET, Key="evil//etc/passwd", Body=b"root")
    with pytest.raises(PathEscapeError, match="etc/passwd"):
        run_transfer(TransferRequest(src=f"s3://{BUCKET}/evil/", dst=str(tmp_path / "d")))
    assert not (tmp_path / "d").exists()
    # A local name the instance could not take as a path: refused before the instance is even looked up.
    (tmp_path / "win").mkdir()
    (tmp_path / "win" / "a\\b.txt").write_bytes(b"x")
    with pytest.raises(PathEscapeError, match=r"a\\\\b\.txt"):
        run_transfer(
            TransferRequest(src=str(tmp_path / "win"), dst="i-0123456789abcdef0:/data", staging=f"s3://{BUCKET}/st")
        )
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix="st/").get("KeyCount", 0) == 0
    monkeypatch.setattr(local_files, "free_bytes", lambda path: 10)
    s3.put_object(Bucket=BUCKET, Key="space/a.bin", Body=b"x" * 1000)
    with pytest.raises(TransferError, match="not enough space"):
        run_transfer(TransferRequest(src=f"s3://{BUCKET}/space/", dst=str(tmp_path / "d")))
    assert not (tmp_path / "d").exists()


def test_archives_with_escaping_members_or_links_are_refused(tmp_path: Path) -> None:
    for name, kind in (("../escape.txt", tarfile.REGTYPE), ("/abs.txt", tarfile.REGTYPE), ("link", tarfile.SYMTYPE)):
        archive = tmp_path / "bad.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            info = tarfile.TarInfo(name)
            info.type, info.size = kind, 0 if kind == tarfile.SYMTYPE else 3
            info.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else ""
            tar.addfile(info, io.BytesIO(b"bad") if kind == tarfile.REGTYPE else None)
        with pytest.raises(UsageError):  # PathEscapeError, or TransferError for the link
            local_files.unpack(archive, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_instances_must_exist_run_and_be_managed(cloud: Sandbox) -> None:
    from core.transfer import parse_location

    ec2 = cloud.client("ec2")
    image = ec2.describe_images()["Images"][0]["ImageId"]
    stray = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="t3.micro")["Instances"][0]
    with pytest.raises(UsageError, match="not created by trainctl"):
        resolve_instance.fn(parse_location(f"{stray['InstanceId']}:/data"))
    tags = [{"ResourceType": "instance", "Tags": [{"Key": t.MANAGED, "Value": "true"}, {"Key": t.JOB, "Value": "j1"}]}]
    managed = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="t3.micro", TagSpecifications=tags)
    iid = managed["Instances"][0]["InstanceId"]
    assert resolve_instance.fn(parse_location("job:j1:/data")).id == iid
    ec2.stop_instances(InstanceIds=[iid])
    with pytest.raises(UsageError, match=r"stopped|stopping"):
        resolve_instance.fn(parse_location(f"{iid}:/data"))
    with pytest.raises(UsageError, match="no running trainctl-managed instance"):
        resolve_instance.fn(parse_location("job:j1:/data"))


# A transfer in its own process that kills itself — and s5cmd with it, the whole process group, SIGKILL: no
# cleanup runs — once the engine has reported `kill_after` finished files: a real `kill -9` half-way, at a
# point the test chooses rather than a race against a timer.
_KILLED_RUN = """
import os, signal, sys
from core.transfer import TransferRequest
from flows.transfer import run_transfer
from tasks import copy_engines

kill_after, request = int(sys.argv[1]), TransferRequest.model_validate_json(sys.argv[2])
real_copy = copy_engines.copy_pairs

def copy_pairs(pairs, *, progress, **options):
    done = 0
    def counting(files, nbytes):
        nonlocal done
        progress(files, nbytes)
        done += files
        if done >= kill_after:
            os.killpg(0, signal.SIGKILL)
    real_copy(pairs, progress=counting, **options)

copy_engines.copy_pairs = copy_pairs
run_transfer(request)
"""


def killed_half_way(cloud: Sandbox, request: TransferRequest, kill_after: int) -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_RUN, str(kill_after), request.model_dump_json()],
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, **cloud.env},
        start_new_session=True,  # its own process group: the kill takes s5cmd along, and nothing else
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -9, f"the transfer was not killed (exit {proc.returncode}): {proc.stderr[-2000:]}"


def settled_listing(prefix: S3Uri, quiet_s: float = 1.0, timeout_s: float = 15.0) -> dict[str, tx.S3Object]:
    """The S3 listing once it has not changed for `quiet_s` (uploads in flight at a kill may still land)."""
    deadline = time.monotonic() + timeout_s
    listing = dict(tx.list_s3_tree.fn(prefix))
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        again = dict(tx.list_s3_tree.fn(prefix))
        if again == listing:
            break
        listing = again
    return listing


def test_killed_half_way_and_rerun_moves_only_the_rest(cloud: Sandbox, tmp_path: Path) -> None:
    src, uri, dst = tmp_path / "src", f"s3://{BUCKET}/killed/", tmp_path / "dst"
    make_tree(src, n=400, big_mib=3)
    for i in range(2):  # multipart objects (5 MiB parts): an interrupted multipart upload must not show up
        (src / "big" / f"multi{i}.bin").write_bytes(os.urandom(7 * 1024 * 1024))
    want, total = digest(src), 402
    options = {"engine": "s5cmd", "part_size_mib": 5}

    # local → S3, killed after 150 files (16 workers: few in flight at the kill).
    killed_half_way(cloud, TransferRequest(src=str(src), dst=uri, concurrency=16, **options), kill_after=150)
    # Requests whose bodies reached the (in-process) server before the kill still complete: count what landed
    # once the listing has stopped changing, as the re-run will see it.
    landed = settled_listing(S3Uri(BUCKET, "killed"))
    assert 150 <= len(landed) < total
    # Nothing partial under a final name: every object there is the whole source file.
    assert sorted(tx.same_as_s3(src, landed, landed, 5 * 1024 * 1024)) == sorted(landed)
    up = run_transfer(TransferRequest(src=str(src), dst=uri, **options))
    assert (up.files_copied, up.files_skipped, up.verified) == (total - len(landed), len(landed), True)

    # S3 → local, killed after 150 files.
    killed_half_way(cloud, TransferRequest(src=uri, dst=str(dst), concurrency=16, **options), kill_after=150)
    placed = local_files.scan_local(dst)
    assert 0 < len(placed) < total
    assert {rel: want[rel] for rel in placed} == {rel: md5((dst / rel).read_bytes()) for rel in placed}
    assert list(dst.glob(PARTIAL_PREFIX + "*")), "the killed run's partial folder should be left behind"
    down = run_transfer(TransferRequest(src=uri, dst=str(dst), **options))
    # The rest moved once: copied now, or found complete in the killed run's partial folder (checked, placed).
    assert (down.files_copied + down.files_resumed, down.files_skipped) == (total - len(placed), len(placed))
    assert down.verified and not list(dst.glob(PARTIAL_PREFIX + "*"))
    assert digest(dst) == want
    print(
        f"up: {len(landed)} landed before the kill, {up.files_copied} copied by the re-run; down: {len(placed)} "
        f"placed before the kill, {down.files_copied} copied + {down.files_resumed} resumed by the re-run"
    )


def test_s5cmd_uploads_walk_a_folder_of_links_to_exactly_the_planned_files(tmp_path: Path) -> None:
    """The folder s5cmd's one `cp` walks on an upload: a link per planned file under its key's relative name
    (glob characters kept), nothing else of the source folder; destinations outside one S3 prefix get none."""
    src = tmp_path / "src"
    for rel in ("a/x*?[1].bin", "a/b/y.bin", "z.bin", "unplanned.bin"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(rel.encode())
    planned = ["a/x*?[1].bin", "a/b/y.bin", "z.bin"]
    pairs = [(f"{src}/{rel}", f"s3://b/up/{rel}", 1) for rel in planned]
    prefix = copy_engines._common_prefix(pairs)
    assert prefix == "s3://b/up/"
    assert copy_engines._common_prefix(pairs[:2]) == "s3://b/up/a/"
    assert copy_engines._common_prefix([(f"{src}/z.bin", str(tmp_path / "z.bin"), 1)]) is None
    links = copy_engines._upload_links(tmp_path / "links", pairs, prefix)
    found = {p.relative_to(links).as_posix(): p.read_bytes() for p in links.rglob("*") if not p.is_dir()}
    assert found == {rel: rel.encode() for rel in planned}
    assert all((links / rel).is_symlink() for rel in planned)


def test_scratch_folders_of_killed_processes_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    """A kill -9 leaves an upload's folder of links behind (on /dev/shm it holds memory until reboot): the next
    copy removes every scratch folder whose process is gone, and keeps those of live processes and others' files."""
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    dead = tmp_path / f"trainctl-s5cmd-{dead_pid}-abc"
    live = tmp_path / f"trainctl-s5cmd-{os.getppid()}-def"
    other = tmp_path / "trainctl-s5cmd-notes"
    for folder in (dead / "links", live / "links", other):
        folder.mkdir(parents=True)
    (dead / "links" / "a.bin").symlink_to(tmp_path / "nowhere")
    copy_engines._remove_orphaned_scratch(str(tmp_path))
    assert not dead.exists()
    assert live.is_dir() and other.is_dir()


def test_landed_files_are_checked_once_each_in_batches_and_a_big_one_at_once() -> None:
    """A download checks and places what lands in batches (64 files or 4 MiB): a file reported twice is checked
    once, a big file goes as soon as it lands, and what is left goes when the engine is done."""
    from concurrent.futures import Future, ThreadPoolExecutor

    from flows.transfer import _LandedBatches

    class Inline(ThreadPoolExecutor):  # runs each batch at once, so the test sees when it was handed out
        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
            done: Future[Any] = Future()
            done.set_result(fn(*args, **kwargs))
            return done

    sizes = {f"s{i:03d}": 10 * 1024 for i in range(130)} | {"big": 8 * MIB}
    checked: list[list[str]] = []

    def check(batch: list[str]) -> list[str]:
        checked.append(list(batch))
        return [rel for rel in batch if rel != "s000"]  # s000 fails its check: not placed

    with Inline(max_workers=1) as pool:
        batches = _LandedBatches(pool, check, sizes)
        for i in range(129):
            batches.landed(f"s{i:03d}")
        batches.landed("s005")  # reported again: not checked again
        batches.landed("big")
        assert [len(b) for b in checked] == [64, 64, 2] and checked[-1] == ["s128", "big"]
        batches.landed("s129")
        placed = batches.placed()
    assert checked[-1] == ["s129"] and sorted(r for b in checked for r in b) == sorted(sizes)
    assert placed == set(sizes) - {"s000"} and batches.seen == set(sizes)


def test_partial_folders_of_live_runs_are_left_alone(tmp_path: Path) -> None:
    with local_files.partial_folder(tmp_path, "live") as live:
        (tmp_path / f"{PARTIAL_PREFIX}dead").mkdir()
        (tmp_path / f"{PARTIAL_PREFIX}dead" / PARTIAL_LOCK).touch()  # its run was killed: the lock is free
        with local_files.stale_partials(tmp_path) as stale:
            assert stale == [tmp_path / f"{PARTIAL_PREFIX}dead"]
        assert live.is_dir() and not (tmp_path / f"{PARTIAL_PREFIX}dead").exists()
    assert not live.exists()


@pytest.mark.parametrize("awscrt", [True, False], ids=["awscrt", "plain-python"])
def test_the_instance_helper_checks_every_s3_checksum_algorithm(tmp_path: Path, awscrt: bool) -> None:
    """On the instance, a KMS object is checked by its checksum: each algorithm S3 keeps, computed as trainctl
    computes it here; without awscrt on the instance (plain Python CRCs) too. A wrong value is a mismatch."""
    import json

    files = {"empty": b"", "digits": b"123456789", "blob": random.Random(7).randbytes(300_000)}
    for name, data in files.items():
        (tmp_path / "root" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "root" / name).write_bytes(data)
    # The published check value of CRC-64/NVME over "123456789" (so the reference itself is right).
    assert local_files.file_checksum(tmp_path / "root" / "digits", "CRC64NVME") == "rosUhgp5mIg="
    expect = {}
    for algorithm in ("CRC64NVME", "CRC32C", "CRC32", "SHA256", "SHA1"):
        for name, data in files.items():
            value = local_files.file_checksum(tmp_path / "root" / name, algorithm)
            expect[f"{algorithm}/{name}"] = (name, expectation(len(data), checksum=Checksum(algorithm, value)))
    expect["wrong"] = ("blob", expectation(300_000, checksum=Checksum("CRC64NVME", "AAAAAAAAAAA=")))
    # COMPOSITE checksums (boto3's multipart uploads) of 3 parts of 100,000 bytes (the transfer's part size).
    for algorithm in ("CRC32", "CRC32C", "SHA256"):
        value = local_files.composite_checksum(tmp_path / "root" / "blob", algorithm, 100_000)
        assert value.endswith("-3")
        want = expectation(300_000, checksum=Checksum(algorithm, value), part_size=100_000)
        expect[f"composite/{algorithm}"] = ("blob", want)
    wrong = expectation(300_000, checksum=Checksum("CRC32", "AAAAAA==-3"), part_size=100_000)
    expect["composite/wrong"] = ("blob", wrong)
    # `check` takes rel → expectation: each expectation gets its own copy of the file it names.
    for key, (name, _) in expect.items():
        (tmp_path / "root" / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "root" / key).write_bytes(files[name])
    (tmp_path / "expect.json").write_text(json.dumps({key: want for key, (_, want) in expect.items()}))
    env = {**os.environ}
    if not awscrt:  # a package named awscrt that fails to import shadows the real one
        (tmp_path / "hide" / "awscrt").mkdir(parents=True)
        (tmp_path / "hide" / "awscrt" / "__init__.py").write_text("raise ImportError('not on this instance')\n")
        env["PYTHONPATH"] = str(tmp_path / "hide")

    def helper(*args: str) -> str:
        run = subprocess.run(
            [sys.executable, "-", *args], input=INSTANCE_HELPER, capture_output=True, text=True, env=env, check=True
        )
        return run.stdout

    checked = json.loads(helper("check", str(tmp_path / "root"), str(tmp_path / "expect.json")))
    assert checked["mismatches"] == ["composite/wrong", "wrong"]
    # The scan tells the flow whether these CRCs run at C speed (it warns about a long wait when they do not).
    helper("scan", str(tmp_path / "root"), str(tmp_path / "scan.json"), "dst")
    assert json.loads((tmp_path / "scan.json").read_text())["fast_crc"] is awscrt


def test_a_long_check_in_plain_python_on_the_instance_is_announced(capsys: pytest.CaptureFixture[str]) -> None:
    from flows.transfer import _warn_if_checked_slowly

    remote = "i-0123456789abcdef0"
    big = {"a": expectation(200 * MIB, checksum=Checksum("CRC64NVME", "x")), "b": expectation(100 * MIB, md5="m")}
    big["c"] = expectation(100 * MIB, checksum=Checksum("CRC32C", "y"))
    _warn_if_checked_slowly(remote, True, big)
    _warn_if_checked_slowly(remote, False, {"a": big["a"], "b": big["b"]})  # 200 MiB: no warning
    assert capsys.readouterr().out == ""
    _warn_if_checked_slowly(remote, False, big)  # 300 MiB by CRC (the MD5 one is fast anyway)
    said = capsys.readouterr().out
    assert "i-0123456789abcdef0 has no awscrt" in said and "300.0 MiB" in said and "about 1 min" in said


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        ({"ETag": '"abc"', "ChecksumCRC32": "M9N4nA=="}, "M9N4nA=="),  # a single PUT's: of the whole object
        ({"ETag": '"abc-3"', "ChecksumCRC64NVME": "rosUhgp5mIg="}, "rosUhgp5mIg="),  # never composite
        ({"ETag": '"abc-3"', "ChecksumType": "FULL_OBJECT", "ChecksumCRC32": "M9N4nA=="}, "M9N4nA=="),
        ({"ETag": '"abc-3"', "ChecksumType": "COMPOSITE", "ChecksumCRC32": "M9N4nA==-3"}, "M9N4nA==-3"),
        ({"ETag": '"abc-3"', "ChecksumType": "COMPOSITE", "ChecksumCRC32": "M9N4nA=="}, "M9N4nA==-3"),
        ({"ETag": '"abc-3"', "ChecksumCRC32C": "M9N4nA==-3"}, "M9N4nA==-3"),  # composite by its `-N`
        ({"ETag": '"abc-3"', "ChecksumCRC32": "M9N4nA=="}, "M9N4nA==-3"),  # no type, no `-N` (moto): N from ETag
        ({"ETag": '"abc"', "ChecksumType": "COMPOSITE", "ChecksumCRC32": "M9N4nA=="}, None),  # parts unknown
        ({"ETag": '"abc"'}, None),
    ],
)
def test_a_checksum_is_of_the_whole_object_or_composite_by_its_type_or_part_count(
    head: dict[str, str], expected: str | None
) -> None:
    found = tx._checksum_of(head)
    assert (found.value if found else None) == expected
    assert found is None or found.parts == (3 if expected and expected.endswith("-3") else 0)
