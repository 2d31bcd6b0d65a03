"""bench/seaweedfs.py: `weed mini` answers S3 on 127.0.0.1 with the keys it was given and refuses others, keeps
everything in its own folder, and leaves nothing behind: the folder, its sockets and its ports are gone after."""

from __future__ import annotations

import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from bench.seaweedfs import GRPC_OFFSET, seaweedfs


def _client(env: dict[str, str], key: str, secret: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        aws_session_token=None,
        region_name=env["AWS_REGION"],
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
    )


def test_weed_mini_enforces_its_keys_and_leaves_no_folder_socket_or_listener(monkeypatch: pytest.MonkeyPatch) -> None:
    # Its mkdtemp folder lands in one of ours: a short path, as its sockets' paths are limited to 107 bytes.
    tmp_path = Path(tempfile.mkdtemp(prefix="weed-test-"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    try:
        _check_weed_mini(tmp_path)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def _check_weed_mini(tmp_path: Path) -> None:
    with seaweedfs(key="AKIDFIDELITY", secret="fidelity-secret") as env:
        assert env["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
        port = int(env["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])
        s3 = _client(env, "AKIDFIDELITY", "fidelity-secret")
        s3.create_bucket(Bucket="keys")
        s3.put_object(Bucket="keys", Key="k", Body=b"kept")
        for key, secret, refusal in (
            ("AKIDFIDELITY", "wrong-secret", "SignatureDoesNotMatch"),
            ("AKIDOTHER", "fidelity-secret", "InvalidAccessKeyId"),
        ):
            with pytest.raises(ClientError) as refused:
                _client(env, key, secret).get_object(Bucket="keys", Key="k")
            assert refused.value.response["Error"]["Code"] == refusal
        (folder,) = tmp_path.iterdir()
        assert (folder / "data").is_dir() and any(folder.glob("weed*.INFO*"))  # its logs too (TMPDIR)
        assert s3.get_object(Bucket="keys", Key="k")["Body"].read() == b"kept"
    assert list(tmp_path.iterdir()) == []
    assert not Path(f"/tmp/seaweedfs-s3-grpc-{port + GRPC_OFFSET}.sock").exists()
    with pytest.raises(ConnectionRefusedError):  # nothing listens there any more: the process is gone
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
