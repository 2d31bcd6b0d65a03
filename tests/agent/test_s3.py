"""The agent's S3 client (agent/s3.py) in-process against the sandbox, and its SigV4 signing (agent/sigv4.py)
against AWS's documented example and botocore."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from agent.credentials import CredentialProvider, Credentials
from agent.s3 import MiB, S3Client
from agent.sigv4 import EMPTY_SHA256, canonical_query, sigv4_authorization
from sandbox import Sandbox
from tests.agent.conftest import client

pytestmark = pytest.mark.sandbox


def test_s3_client_put_get_head_list_with_unicode_keys(cloud: Sandbox, bucket: str) -> None:
    s3 = client(cloud)
    keys = ["données/ünï cødé+1.txt", "日本語/キー.bin", "a b/c%20d?e=f&g", "plain/x.json", "tilde~/semi;colon"]
    for i, key in enumerate(keys):
        s3.put_object(bucket, key, f"body {i}".encode())
    for i, key in enumerate(keys):
        assert s3.get_object(bucket, key) == f"body {i}".encode()
        head = s3.head_object(bucket, key)
        # The ETag, not the size: the sandbox's middleware answers HEAD with Content-Length 0 (boto3 sees 0 too).
        assert head is not None and head.etag.strip('"') == hashlib.md5(f"body {i}".encode()).hexdigest()  # noqa: S324
    assert s3.head_object(bucket, "missing") is None
    assert s3.get_json(bucket, "missing") is None
    # boto3 sees the same keys (the encoding round-trips).
    boto_keys = {o["Key"] for o in cloud.client("s3").list_objects_v2(Bucket=bucket)["Contents"]}
    assert boto_keys == set(keys)
    listed = list(s3.list_objects(bucket, "", page_size=2))  # three pages
    assert sorted(o.key for o in listed) == sorted(keys)
    assert [o.key for o in s3.list_objects(bucket, "日本語/")] == ["日本語/キー.bin"]
    assert sorted(s3.list_prefixes(bucket, "")) == sorted({k.split("/")[0] + "/" for k in keys})


def test_s3_client_multipart_upload(cloud: Sandbox, bucket: str, tmp_path: Path) -> None:
    s3 = client(cloud, part_size=5 * MiB, multipart_threshold=5 * MiB)
    data = os.urandom(12 * MiB + 123)
    source = tmp_path / "big file.bin"
    source.write_bytes(data)
    calls: list[dict[str, str]] = []
    original = s3._request

    def recording(method: str, bucket_: str, key: str = "", **kwargs: Any) -> Any:
        calls.append({"method": method, **(kwargs.get("query") or {})})
        return original(method, bucket_, key, **kwargs)

    s3._request = recording  # type: ignore[method-assign,assignment]
    size, sha = s3.put_file(bucket, "ckpt/big file.bin", source)
    assert (size, sha) == (len(data), hashlib.sha256(data).hexdigest())
    assert sum(1 for c in calls if "partNumber" in c) == 3
    assert calls[0] == {"method": "POST", "uploads": ""} and "uploadId" in calls[-1]
    head = s3.head_object(bucket, "ckpt/big file.bin")
    assert head is not None and head.etag.strip('"').endswith("-3")  # a 3-part object
    assert [o.size for o in s3.list_objects(bucket, "ckpt/")] == [len(data)]
    target = tmp_path / "back.bin"
    assert s3.download_file(bucket, "ckpt/big file.bin", target) == (len(data), hashlib.sha256(data).hexdigest())
    assert target.read_bytes() == data


def test_s3_client_retries_throttling(cloud: Sandbox, bucket: str) -> None:
    # Half of all calls throttled: with 8 attempts a request gave up 1 time in 256 (~3% a run: a flaky CI);
    # with 16, 1 in 65,536. The backoff is short so the many retries cost little.
    s3 = client(cloud, attempts=16, backoff=0.001)
    cloud.throttle(0.5, ["s3"])
    try:
        for i in range(6):
            s3.put_object(bucket, f"t/{i}", b"x")
        assert len(list(s3.list_objects(bucket, "t/"))) == 6
    finally:
        cloud.throttle(0.0)


def test_sigv4_matches_the_aws_documented_example() -> None:
    # AWS's S3 SigV4 example "GET Object" (examplebucket/test.txt, Range bytes=0-9, 2013-05-24).
    creds = Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    auth = sigv4_authorization(
        method="GET",
        canonical_uri="/test.txt",
        query={},
        headers={
            "host": "examplebucket.s3.amazonaws.com",
            "range": "bytes=0-9",
            "x-amz-content-sha256": EMPTY_SHA256,
            "x-amz-date": "20130524T000000Z",
        },
        payload_sha256=EMPTY_SHA256,
        credentials=creds,
        region="us-east-1",
        service="s3",
        amz_date="20130524T000000Z",
    )
    assert auth.endswith("Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
    assert "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date" in auth


def test_sigv4_matches_botocore_for_unicode_keys_queries_and_session_tokens() -> None:
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials as BotoCredentials

    creds = Credentials("AKIDEXAMPLE", "secret/key+x", "session-token")
    s3 = S3Client(region="eu-west-1", credentials=CredentialProvider(static=creds))
    cases: tuple[tuple[str, dict[str, str]], ...] = (
        ("données/ü cødé+1.txt", {}),
        ("a b/日本~x;y", {"partNumber": "2", "uploadId": "x/y+z= w"}),
    )
    for key, query in cases:
        origin, host, path = s3._target("my-bucket", key)
        assert host == "my-bucket.s3.eu-west-1.amazonaws.com"
        url = origin + path + ("?" + canonical_query(query) if query else "")
        body = b"payload"
        sha = hashlib.sha256(body).hexdigest()
        headers = {"x-amz-content-sha256": sha, "content-type": "application/octet-stream"}
        request = AWSRequest(method="PUT", url=url, data=body, headers=headers)
        S3SigV4Auth(BotoCredentials("AKIDEXAMPLE", "secret/key+x", "session-token"), "s3", "eu-west-1").add_auth(
            request
        )
        amz_date = request.headers["X-Amz-Date"]  # botocore signs at the current time: sign ours at the same one
        ours = sigv4_authorization(
            method="PUT",
            canonical_uri=path,
            query=query,
            headers={**headers, "host": host, "x-amz-date": amz_date, "x-amz-security-token": "session-token"},
            payload_sha256=sha,
            credentials=creds,
            region="eu-west-1",
            service="s3",
            amz_date=amz_date,
        )
        assert ours == request.headers["Authorization"], key
