"""What the agent's tests share: one sandbox per test module, a fresh bucket per test, and the agent's own S3
client pointed at the sandbox."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from agent.credentials import CredentialProvider, Credentials
from agent.s3 import S3Client
from sandbox import Sandbox


@pytest.fixture(scope="module")
def cloud() -> Iterator[Sandbox]:
    with Sandbox(boot_delay=0.2) as sandbox:
        yield sandbox


_buckets = iter(range(10_000))


@pytest.fixture
def bucket(cloud: Sandbox) -> str:
    name = f"agent-test-{next(_buckets)}"
    cloud.client("s3").create_bucket(Bucket=name)
    return name


def client(cloud: Sandbox, **kwargs: Any) -> S3Client:
    creds = CredentialProvider(static=Credentials("sandbox-access-key", "sandbox-secret-key"))
    return S3Client(endpoint_url=cloud.endpoint_url, region=cloud.region, credentials=creds, **kwargs)
