"""A client of the AWS JSON 1.1 APIs the agent calls (SSM Parameter Store, Secrets Manager): SigV4-signed POSTs,
retried like the S3 client."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from .credentials import CredentialProvider
from .errors import AwsApiError
from .s3 import RETRY_CODES, NoRedirect, pause_before
from .sigv4 import sigv4_authorization

# botocore's per-service endpoint variables, then AWS_ENDPOINT_URL (the sandbox), then AWS itself.
_ENDPOINT_ENV = {"ssm": "AWS_ENDPOINT_URL_SSM", "secretsmanager": "AWS_ENDPOINT_URL_SECRETS_MANAGER"}
_TARGET_PREFIX = {"ssm": "AmazonSSM", "secretsmanager": "secretsmanager"}
_JSON_RETRY_CODES = RETRY_CODES | {"TooManyRequestsException", "InternalServerError", "InternalFailure"}


class AwsJsonClient:
    """POST to an AWS JSON 1.1 API (`X-Amz-Target: <prefix>.<Action>`), SigV4-signed, retried like S3Client."""

    def __init__(
        self,
        service: str,
        *,
        region: str,
        credentials: CredentialProvider,
        endpoint_url: str | None = None,
        attempts: int = 4,
        backoff: float = 0.25,
        timeout: float = 15.0,
    ) -> None:
        self.service = service
        self.region = region
        self.credentials = credentials
        if endpoint_url is None:
            endpoint_url = os.environ.get(_ENDPOINT_ENV[service]) or os.environ.get("AWS_ENDPOINT_URL") or ""
        suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
        self.endpoint = (endpoint_url or f"https://{service}.{region}.{suffix}").rstrip("/")
        self.attempts = attempts
        self.backoff = backoff
        self.timeout = timeout
        self._opener = urllib.request.build_opener(NoRedirect())

    def call(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps(payload).encode("utf-8")
        parts = urllib.parse.urlsplit(self.endpoint)
        path = parts.path or "/"
        last: AwsApiError | None = None
        for attempt in range(self.attempts):
            if attempt:
                pause_before(attempt, self.backoff)
            creds = self.credentials.get()
            amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            headers = {
                "host": parts.netloc,
                "x-amz-date": amz_date,
                "x-amz-target": f"{_TARGET_PREFIX[self.service]}.{action}",
                "content-type": "application/x-amz-json-1.1",
            }
            if creds.token:
                headers["x-amz-security-token"] = creds.token
            headers["authorization"] = sigv4_authorization(
                method="POST",
                canonical_uri=path,
                query={},
                headers=dict(headers),
                payload_sha256=hashlib.sha256(body).hexdigest(),
                credentials=creds,
                region=self.region,
                service=self.service,
                amz_date=amz_date,
            )
            request = urllib.request.Request(  # noqa: S310 (http(s) endpoints only)
                f"{parts.scheme}://{parts.netloc}{path}", data=body, method="POST", headers=headers
            )
            try:
                with self._opener.open(request, timeout=self.timeout) as answer:
                    return dict(json.loads(answer.read() or b"{}"))
            except urllib.error.HTTPError as exc:
                last = _json_error(exc)
                if exc.code >= 500 or exc.code == 429 or last.code in _JSON_RETRY_CODES:
                    continue
                if last.code in ("ExpiredTokenException", "ExpiredToken") and attempt == 0:
                    self.credentials.invalidate()
                    continue
                raise last from None
            except (OSError, http.client.HTTPException, ValueError) as exc:
                last = AwsApiError(0, "RequestFailed", f"{self.endpoint}: {exc!r}")
        assert last is not None
        raise last


def _json_error(exc: urllib.error.HTTPError) -> AwsApiError:
    """The error code (`__type`, maybe `prefix#Code`) and message of a JSON 1.1 error answer."""
    try:
        data = json.loads(exc.read() or b"{}")
    except ValueError:
        data = {}
    data = data if isinstance(data, dict) else {}
    code = str(data.get("__type") or exc.headers.get("x-amzn-ErrorType") or exc.code)
    message = str(data.get("message") or data.get("Message") or "")
    return AwsApiError(exc.code, code.rsplit("#", 1)[-1].split(":")[0], message)
