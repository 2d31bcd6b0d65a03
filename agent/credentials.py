"""AWS credentials for the agent's requests: the environment's keys, else the instance profile's (IMDSv2)."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass

from .errors import S3Error
from .host import parse_time
from .imds import Imds


@dataclass
class Credentials:
    access_key: str
    secret_key: str
    token: str | None = None
    expires_at: float | None = None  # epoch seconds


class CredentialProvider:
    """Environment variables first, else the instance profile's role credentials from IMDSv2 (refreshed)."""

    REFRESH_BEFORE = 300.0

    def __init__(self, imds: Imds | None = None, static: Credentials | None = None) -> None:
        self._imds = imds
        self._static = static
        self._cached: Credentials | None = None
        self._lock = threading.Lock()

    def get(self) -> Credentials:
        if self._static is not None:
            return self._static
        key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
        if key and secret:
            return Credentials(key, secret, os.environ.get("AWS_SESSION_TOKEN") or None)
        with self._lock:
            cached = self._cached
            fresh = cached is not None and (
                cached.expires_at is None or cached.expires_at - time.time() > self.REFRESH_BEFORE
            )
            if not fresh:
                self._cached = self._from_imds()
            assert self._cached is not None
            return self._cached

    def invalidate(self) -> None:
        with self._lock:
            self._cached = None

    def _from_imds(self) -> Credentials:
        imds = self._imds or Imds()
        roles = imds.get("meta-data/iam/security-credentials/")
        role = (roles or "").strip().splitlines()[0:1]
        if not role:
            raise S3Error(0, "NoCredentials", "no AWS_ACCESS_KEY_ID in the environment and no instance profile")
        document = imds.get(f"meta-data/iam/security-credentials/{role[0]}")
        data = json.loads(document or "{}")
        if data.get("Code", "Success") != "Success":
            raise S3Error(0, "NoCredentials", f"instance profile credentials: {data.get('Code')}")
        return Credentials(
            data["AccessKeyId"],
            data["SecretAccessKey"],
            data.get("Token"),
            parse_time(str(data.get("Expiration", ""))),
        )
