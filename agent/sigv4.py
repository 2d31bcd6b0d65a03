"""AWS Signature Version 4: the Authorization header of a request (S3 and the JSON APIs sign alike)."""

from __future__ import annotations

import hashlib
import hmac
import urllib.parse

from .credentials import Credentials

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def uri_encode(value: str, safe: str = "-_.~") -> str:
    """SigV4 URI encoding: every byte but unreserved characters, UTF-8, space as %20."""
    return urllib.parse.quote(value, safe=safe)


def canonical_query(query: dict[str, str]) -> str:
    return "&".join(f"{uri_encode(k)}={uri_encode(v)}" for k, v in sorted(query.items()))


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


def sigv4_authorization(
    *,
    method: str,
    canonical_uri: str,
    query: dict[str, str],
    headers: dict[str, str],
    payload_sha256: str,
    credentials: Credentials,
    region: str,
    service: str,
    amz_date: str,
) -> str:
    """The Authorization header value. `headers` (lower-case names) are all signed; they must include host,
    x-amz-date and, for S3, x-amz-content-sha256. `canonical_uri` is the path as sent (already URI-encoded)."""
    names = sorted(headers)
    canonical_headers = "".join(f"{n}:{' '.join(str(headers[n]).split())}\n" for n in names)
    signed = ";".join(names)
    canonical = "\n".join([method, canonical_uri, canonical_query(query), canonical_headers, signed, payload_sha256])
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode("utf-8")).hexdigest()])
    key = _hmac(("AWS4" + credentials.secret_key).encode("utf-8"), amz_date[:8])
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    return (
        f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, SignedHeaders={signed}, Signature={signature}"
    )
