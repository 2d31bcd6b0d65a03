"""IMDSv2, the instance metadata service: instance id, region, role credentials, spot notices, rebalance."""

from __future__ import annotations

import os
import threading
import time
import urllib.error
import urllib.request

IMDS_DEFAULT = "http://169.254.169.254"


class Imds:
    """IMDSv2 (token first). The sandbox's endpoint has a path (`http://h:p/_imds/i-x/`): paths are joined to it."""

    TOKEN_TTL = 21600

    def __init__(self, endpoint: str | None = None, *, timeout: float = 2.0) -> None:
        base = endpoint or os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or IMDS_DEFAULT
        self.base = base.rstrip("/") + "/"
        self.timeout = timeout
        self._token: str | None = None
        self._token_expiry = 0.0
        self._lock = threading.Lock()
        # Never through a proxy: the metadata service is link-local.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def url(self, path: str) -> str:
        return self.base + path.lstrip("/")

    def token(self) -> str:
        with self._lock:
            if self._token is None or time.monotonic() > self._token_expiry - 60:
                request = urllib.request.Request(  # noqa: S310 (http(s) endpoints only)
                    self.url("latest/api/token"),
                    method="PUT",
                    headers={"X-aws-ec2-metadata-token-ttl-seconds": str(self.TOKEN_TTL)},
                )
                with self._opener.open(request, timeout=self.timeout) as answer:
                    self._token = answer.read().decode().strip()
                self._token_expiry = time.monotonic() + self.TOKEN_TTL
            return self._token

    def get(self, path: str) -> str | None:
        """GET latest/<path>; None on 404 (no such item, e.g. no spot notice)."""
        for attempt in range(2):
            request = urllib.request.Request(  # noqa: S310 (http(s) endpoints only)
                self.url("latest/" + path.lstrip("/")), headers={"X-aws-ec2-metadata-token": self.token()}
            )
            try:
                with self._opener.open(request, timeout=self.timeout) as answer:
                    return str(answer.read().decode())
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    return None
                if exc.code == 401 and attempt == 0:  # token expired or the service restarted: a new one
                    with self._lock:
                        self._token = None
                    continue
                raise
        return None
