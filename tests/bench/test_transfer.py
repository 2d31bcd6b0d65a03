"""bench/transfer.py: each checksum kind's download source carries the checksum that kind promises (uploaded to
SeaweedFS, the bench's default endpoint, which keeps what the client sent), and the tables give each client's rate,
the ratios and whether trainctl meets the targets."""

from __future__ import annotations

import base64
import random
from pathlib import Path
from typing import Any

import boto3
from awscrt import checksums
from botocore.config import Config

from bench import transfer
from bench.seaweedfs import seaweedfs

MIB = 1024 * 1024


def test_each_kinds_source_objects_carry_the_checksum_users_objects_of_that_kind_have(tmp_path: Path) -> None:
    big = random.Random(7).randbytes(9 * MIB)  # two parts of boto3's 8 MiB
    (tmp_path / "d").mkdir()
    (tmp_path / "big.bin").write_bytes(big)
    (tmp_path / "d" / "small.bin").write_bytes(b"small" * 100)
    with seaweedfs() as env:

        def client(**extra: Any) -> Any:
            return boto3.client(
                "s3",
                endpoint_url=env["AWS_ENDPOINT_URL"],
                aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                aws_session_token=None,
                region_name=env["AWS_REGION"],
                config=Config(**extra),
            )

        s3 = client()
        s3.create_bucket(Bucket=transfer.BUCKET)
        heads: dict[tuple[str, str], dict[str, Any]] = {}
        for kind in transfer.KINDS:
            transfer.upload_source(s3, client(request_checksum_calculation="when_required"), tmp_path, kind, "t")
            for name in ("big.bin", "d/small.bin"):
                key = transfer.source_prefix(kind, "t") + name
                head = s3.head_object(Bucket=transfer.BUCKET, Key=key, ChecksumMode="ENABLED")
                heads[(kind, name)] = {k: v for k, v in head.items() if k.startswith("Checksum") or k == "ETag"}
    crc64 = base64.b64encode(checksums.crc64nvme(big).to_bytes(8, "big")).decode()
    composite = heads[("composite-crc32", "big.bin")]
    assert composite["ChecksumCRC32"].endswith("-2") and composite["ChecksumType"] == "COMPOSITE"
    assert list(heads[("composite-crc32", "d/small.bin")]) == ["ChecksumCRC32", "ETag"]
    full = heads[("crc64nvme", "big.bin")]
    assert (full["ChecksumCRC64NVME"], full["ChecksumType"]) == (crc64, "FULL_OBJECT") and full["ETag"].endswith('-2"')
    assert list(heads[("crc64nvme", "d/small.bin")]) == ["ChecksumCRC64NVME", "ETag"]
    # No checksum at all: SeaweedFS keeps only the ETag (AWS would add a CRC64NVME).
    assert list(heads[("none", "big.bin")]) == list(heads[("none", "d/small.bin")]) == ["ETag"]
    assert heads[("none", "big.bin")]["ETag"] == full["ETag"]  # the same 8 MiB parts as boto3's


def test_the_tables_give_rates_ratios_verdicts_and_trainctls_checks() -> None:
    rates = {"trainctl": 100.0, "unverified": 120.0, "aws-cli": 40.0, "s5cmd": 200.0}
    results = {("1 x 8 MiB", case, tool): rate for case in ("upload", "download none") for tool, rate in rates.items()}
    results[("1 x 8 MiB", "upload", "s5cmd")] = 90.0
    checks = {("1 x 8 MiB", "download none"): transfer.checks_text({"md5-etag": 1})}
    lines = transfer.report_lines(results, checks)
    upload = lines.index(next(line for line in lines if line.startswith("upload (")))
    download = lines.index(next(line for line in lines if line.startswith("download none (")))
    assert upload < download
    assert lines[upload + 2].split()[4:13] == [
        *map(str, (100.0, 120.0, 40.0, 90.0)),
        "1.11x",
        "2.50x",
        "1.33x",
        "3.00x",
        "ok",
    ]
    assert lines[download + 2].endswith("MISSED: 0.50x s5cmd < 1.0x; trainctl's checks: md5-etag ×1")
    assert transfer.checks_text(None) == "" and lines[-1].startswith("MB/s = 10^6 bytes/s. Targets")
