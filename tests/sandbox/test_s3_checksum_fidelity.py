"""The sandbox's S3 keeps and answers checksums as a real S3 server does: the same cases run against SeaweedFS
(bench/seaweedfs.py, one `weed mini` for the module) and the sandbox, and their answers are compared field by field.

Where SeaweedFS differs from AWS the comparison leaves that field out and the sandbox is held to AWS's behaviour
instead (SEAWEEDFS_DIFFERS says which). Where the sandbox differed from both it was fixed (sandbox/s3.py).
"""

from __future__ import annotations

import base64
import hashlib
import io
import random
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from awscrt import checksums
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from bench.seaweedfs import seaweedfs
from sandbox import Sandbox

pytestmark = pytest.mark.sandbox

MIB = 1024 * 1024
BUCKET = "fidelity"
ALGORITHMS = ("CRC64NVME", "CRC32", "CRC32C", "SHA256")
SMALL = random.Random(18).randbytes(3000)
BIG = random.Random(19).randbytes(8 * MIB + 4096)  # boto3: parts of 8 MiB + 4 KiB; ours: 5 MiB + the rest
# What SeaweedFS 4.48 answers otherwise than AWS, so the comparison leaves it out (and checks the sandbox alone):
# - it gives no checksum type for a single PUT's checksum (PutObject, HeadObject, GetObject); AWS says FULL_OBJECT;
# - it adds no CRC64NVME to an object uploaded without a checksum (s5cmd's uploads); AWS gives every new object one.
SEAWEEDFS_DIFFERS = ("single-PUT ChecksumType", "no default CRC64NVME")

Answers = dict[str, Any]
Client = Callable[..., Any]


def crc64(data: bytes) -> str:
    return base64.b64encode(checksums.crc64nvme(data).to_bytes(8, "big")).decode()


def expected(data: bytes, algorithm: str) -> str:
    if algorithm == "SHA256":
        return base64.b64encode(hashlib.sha256(data).digest()).decode()
    if algorithm == "CRC64NVME":
        return crc64(data)
    crc = checksums.crc32c if algorithm == "CRC32C" else checksums.crc32
    return base64.b64encode(crc(data).to_bytes(4, "big")).decode()


def fields(answer: dict[str, Any]) -> dict[str, Any]:
    """What an answer says about the object's integrity: its checksums and their type, ETag, length and range."""
    keep = ("ETag", "ContentLength", "ContentRange")
    return {k: v for k, v in answer.items() if k.startswith("Checksum") or k in keep}


def read(s3: Any, key: str, **extra: Any) -> dict[str, Any]:
    """HeadObject and GetObject with ChecksumMode=ENABLED (the GET's body read whole): their fields."""
    got = s3.get_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED", **extra)
    got["Body"].read()
    return {"head": fields(s3.head_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")), "get": fields(got)}


def single_puts(s3: Any, plain: Any) -> Answers:
    answers: Answers = {}
    for algorithm in ALGORITHMS:
        put = s3.put_object(Bucket=BUCKET, Key=f"put-{algorithm}", Body=SMALL, ChecksumAlgorithm=algorithm)
        answers[f"put {algorithm}"] = {"put": fields(put), **read(s3, f"put-{algorithm}")}
    answers["put without checksum"] = {"put": fields(plain.put_object(Bucket=BUCKET, Key="plain", Body=SMALL))}
    answers["put without checksum"] |= read(s3, "plain")
    try:
        s3.put_object(Bucket=BUCKET, Key="wrong", Body=SMALL, ChecksumCRC32=expected(b"other", "CRC32"))
        answers["wrong checksum"] = "stored"
    except ClientError as refused:
        answers["wrong checksum"] = (
            refused.response["Error"]["Code"],
            refused.response["ResponseMetadata"]["HTTPStatusCode"],
        )
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="wrong").get("Contents", [])
    answers["wrong checksum stored"] = [o["Key"] for o in listed]
    return answers


def multiparts(s3: Any) -> Answers:
    # boto3's upload_file: 8 MiB parts, a CRC32 of each → a COMPOSITE checksum `…-2`, ETag `…-2`.
    config = TransferConfig(multipart_threshold=8 * MIB, multipart_chunksize=8 * MIB)
    s3.upload_fileobj(io.BytesIO(BIG), BUCKET, "boto3-multipart", Config=config)
    answers: Answers = {"boto3 multipart": read(s3, "boto3-multipart")}
    # A FULL_OBJECT CRC64NVME multipart upload (as AWS's CRT client and trainctl's uploads make).
    upload = s3.create_multipart_upload(
        Bucket=BUCKET, Key="full-object", ChecksumAlgorithm="CRC64NVME", ChecksumType="FULL_OBJECT"
    )
    parts = []
    for number, chunk in ((1, BIG[: 5 * MIB]), (2, BIG[5 * MIB :])):
        sent = s3.upload_part(
            Bucket=BUCKET, Key="full-object", UploadId=upload["UploadId"], PartNumber=number, Body=chunk,
            ChecksumAlgorithm="CRC64NVME",
        )  # fmt: skip
        parts.append({"PartNumber": number, "ETag": sent["ETag"], "ChecksumCRC64NVME": sent["ChecksumCRC64NVME"]})
    done = s3.complete_multipart_upload(
        Bucket=BUCKET, Key="full-object", UploadId=upload["UploadId"], MultipartUpload={"Parts": parts},
        ChecksumCRC64NVME=crc64(BIG), ChecksumType="FULL_OBJECT",
    )  # fmt: skip
    answers["full-object multipart"] = {
        "create": fields(upload),
        "parts": [fields(part) for part in parts],
        "complete": fields(done),
        **read(s3, "full-object"),
    }
    for key, data in (("put-CRC64NVME", SMALL), ("boto3-multipart", BIG), ("full-object", BIG)):
        ranged = s3.get_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED", Range="bytes=100-1099")
        answers[f"range of {key}"] = {"get": fields(ranged), "bytes": ranged["Body"].read() == data[100:1100]}
    return answers


def answers_of(client: Client) -> Answers:
    """Every case against one endpoint; `client(**config)` makes an S3 client for it (botocore Config options)."""
    s3 = client()
    s3.create_bucket(Bucket=BUCKET)
    plain = client(request_checksum_calculation="when_required")  # sends no checksum, as s5cmd
    return single_puts(s3, plain) | multiparts(s3)


def without_seaweedfs_differences(answers: Answers) -> Answers:
    """The sandbox's answers less what SeaweedFS is known to answer otherwise than AWS (SEAWEEDFS_DIFFERS)."""
    trimmed: Answers = {}
    for case, answer in answers.items():
        if isinstance(answer, dict) and case.startswith("put "):
            answer = {call: {k: v for k, v in got.items() if k != "ChecksumType"} for call, got in answer.items()}
        if case == "put without checksum":
            answer = {call: {k: v for k, v in got.items() if k != "ChecksumCRC64NVME"} for call, got in answer.items()}
        trimmed[case] = answer
    return trimmed


@pytest.fixture(scope="module")
def weed_answers() -> Iterator[Answers]:
    with seaweedfs() as env:

        def client(**extra: Any) -> Any:
            return boto3.client(
                "s3",
                endpoint_url=env["AWS_ENDPOINT_URL"],
                aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                aws_session_token=None,
                region_name=env["AWS_REGION"],
                config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, **extra),
            )

        yield answers_of(client)


@pytest.fixture(scope="module")
def sandbox_answers(sandbox_module: Sandbox) -> Answers:
    sandbox_module.reset()
    return answers_of(lambda **extra: sandbox_module.client("s3", **extra))


def test_the_sandbox_answers_every_checksum_case_as_seaweedfs_does(
    weed_answers: Answers, sandbox_answers: Answers
) -> None:
    ours = without_seaweedfs_differences(sandbox_answers)
    assert ours.keys() == weed_answers.keys()
    for case in weed_answers:
        assert ours[case] == weed_answers[case], case


def test_the_answers_are_s3s_checksums_of_the_bytes(sandbox_answers: Answers) -> None:
    """What both endpoints answered (the test above) is right, and where SeaweedFS differs the sandbox is AWS."""
    md5 = f'"{hashlib.md5(SMALL, usedforsecurity=False).hexdigest()}"'
    for algorithm in ALGORITHMS:
        answer = sandbox_answers[f"put {algorithm}"]
        want = {f"Checksum{algorithm}": expected(SMALL, algorithm), "ChecksumType": "FULL_OBJECT", "ETag": md5}
        assert answer["put"] == want, algorithm
        assert answer["head"] == answer["get"] == {**want, "ContentLength": len(SMALL)}, algorithm
    # AWS gives an upload without a checksum a full-object CRC64NVME (SeaweedFS gives none).
    plain = sandbox_answers["put without checksum"]
    assert plain["put"] == {"ETag": md5}
    assert plain["head"] == {
        "ChecksumCRC64NVME": crc64(SMALL),
        "ChecksumType": "FULL_OBJECT",
        "ETag": md5,
        "ContentLength": len(SMALL),
    }
    # A wrong checksum is refused and nothing is stored.
    assert sandbox_answers["wrong checksum"] == ("BadDigest", 400)
    assert sandbox_answers["wrong checksum stored"] == []

    part_crcs = b"".join(checksums.crc32(BIG[i : i + 8 * MIB]).to_bytes(4, "big") for i in (0, 8 * MIB))
    composite = f"{base64.b64encode(checksums.crc32(part_crcs).to_bytes(4, 'big')).decode()}-2"
    boto3_mp = sandbox_answers["boto3 multipart"]
    assert boto3_mp["head"] == boto3_mp["get"]
    assert boto3_mp["head"]["ChecksumCRC32"] == composite and boto3_mp["head"]["ChecksumType"] == "COMPOSITE"
    assert boto3_mp["head"]["ETag"].endswith('-2"') and boto3_mp["head"]["ContentLength"] == len(BIG)

    full = sandbox_answers["full-object multipart"]
    assert full["create"] == {"ChecksumAlgorithm": "CRC64NVME", "ChecksumType": "FULL_OBJECT"}
    assert [part["ChecksumCRC64NVME"] for part in full["parts"]] == [crc64(BIG[: 5 * MIB]), crc64(BIG[5 * MIB :])]
    whole = {"ChecksumCRC64NVME": crc64(BIG), "ChecksumType": "FULL_OBJECT"}
    assert full["complete"] == {**whole, "ETag": full["head"]["ETag"]} and full["head"]["ETag"].endswith('-2"')
    assert full["head"] == full["get"] == {**whole, "ETag": full["head"]["ETag"], "ContentLength": len(BIG)}

    for key, size in (("put-CRC64NVME", len(SMALL)), ("boto3-multipart", len(BIG)), ("full-object", len(BIG))):
        ranged = sandbox_answers[f"range of {key}"]
        assert not any(name.startswith("Checksum") for name in ranged["get"]), key
        assert ranged["get"]["ContentRange"] == f"bytes 100-1099/{size}" and ranged["get"]["ContentLength"] == 1000
        assert ranged["bytes"], key
