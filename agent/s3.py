"""A small S3 client over urllib: PUT/GET/HEAD object, ListObjectsV2, multipart upload; SigV4-signed; retried with
jittered exponential backoff; path style on a custom endpoint (the sandbox), virtual-host style on AWS."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import random
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .credentials import CredentialProvider
from .errors import S3Error
from .host import log
from .sigv4 import canonical_query, sigv4_authorization, uri_encode

MiB = 1024 * 1024
MULTIPART_THRESHOLD = 64 * MiB
PART_SIZE = 64 * MiB
MIN_PART_SIZE = 5 * MiB  # S3's minimum for every part but the last
RETRY_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
}


def pause_before(attempt: int, backoff: float) -> None:
    """Jittered exponential backoff before a retry, at most ~8 s."""
    time.sleep(min(8.0, backoff * 2**attempt) * (0.5 + random.random()))


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect from AWS means a wrong region/endpoint; following it would break the signature."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@dataclass
class S3Object:
    key: str
    size: int
    etag: str = ""


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child_text(elem: ET.Element, name: str) -> str:
    for child in elem:
        if _local(child.tag) == name:
            return child.text or ""
    return ""


class S3Client:
    """A small S3 client: PUT/GET/HEAD object, ListObjectsV2, multipart upload; SigV4-signed; retried."""

    def __init__(
        self,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        credentials: CredentialProvider | None = None,
        part_size: int = PART_SIZE,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        attempts: int = 5,
        backoff: float = 0.25,
        timeout: float = 60.0,
    ) -> None:
        if endpoint_url is None:
            endpoint_url = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""
        self.endpoint = endpoint_url.rstrip("/")
        self.region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        self.credentials = credentials or CredentialProvider()
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes")
        self.part_size = part_size
        self.multipart_threshold = multipart_threshold
        self.attempts = attempts
        self.backoff = backoff
        self.timeout = timeout
        self._opener = urllib.request.build_opener(NoRedirect())
        self._bucket_regions: dict[str, str] = {}  # learnt from x-amz-bucket-region when a bucket lives elsewhere

    def region_of(self, bucket: str) -> str:
        return self._bucket_regions.get(bucket, self.region)

    # -- addressing and signing --------------------------------------------------------------------------------
    def _target(self, bucket: str, key: str) -> tuple[str, str, str]:
        """(scheme://host, host, path): path style on a custom endpoint, virtual-host style on AWS."""
        quoted = uri_encode(key, safe="/-_.~")
        if self.endpoint:
            parts = urllib.parse.urlsplit(self.endpoint)
            base_path = parts.path.rstrip("/")
            path = f"{base_path}/{uri_encode(bucket)}" + (f"/{quoted}" if key else "")
            return f"{parts.scheme}://{parts.netloc}", parts.netloc, path
        if "." in bucket:  # a dotted bucket breaks the wildcard certificate: path style on the regional host
            host = f"s3.{self.region_of(bucket)}.amazonaws.com"
            return f"https://{host}", host, f"/{bucket}/{quoted}" if key else f"/{bucket}"
        host = f"{bucket}.s3.{self.region_of(bucket)}.amazonaws.com"
        return f"https://{host}", host, f"/{quoted}"

    def _request(
        self,
        method: str,
        bucket: str,
        key: str = "",
        *,
        query: dict[str, str] | None = None,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        stream: bool = False,
    ) -> Any:
        """Send one signed request, retrying 5xx/throttling/connection errors with backoff. Returns the open
        response when `stream`, else (status, headers, body). Raises S3Error (404 included)."""
        query = dict(query or {})
        payload_sha = hashlib.sha256(body).hexdigest()
        last: Exception | None = None
        for attempt in range(self.attempts):
            if attempt:
                pause_before(attempt, self.backoff)
            request = self._signed(method, bucket, key, query, body, headers or {}, payload_sha)
            try:
                answer = self._opener.open(request, timeout=self.timeout)
            except urllib.error.HTTPError as exc:
                last = self._refusal(exc, method, bucket, attempt)
                continue
            except (OSError, http.client.HTTPException) as exc:  # URLError, resets, socket.timeout (3.9)
                last = exc
                continue
            if stream:
                return answer
            with answer:
                data = answer.read()
            if method == "POST" and b"<Error>" in data[:512]:  # CompleteMultipartUpload fails inside a 200
                code, message = _error_of(data, 200)
                last = S3Error(200, code, message)
                if code in RETRY_CODES:
                    continue
                raise last
            return answer.status, answer.headers, data
        if isinstance(last, S3Error):
            raise last
        raise S3Error(0, "RequestFailed", f"{method} s3://{bucket}/{key} failed {self.attempts} times: {last!r}")

    def _signed(
        self,
        method: str,
        bucket: str,
        key: str,
        query: dict[str, str],
        body: bytes,
        headers: dict[str, str],
        payload_sha: str,
    ) -> urllib.request.Request:
        """The request, signed now (with the credentials of now, for the bucket's region as known now)."""
        origin, host, path = self._target(bucket, key)
        creds = self.credentials.get()
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        signed = {k.lower(): v for k, v in headers.items()}
        signed.update({"host": host, "x-amz-date": amz_date, "x-amz-content-sha256": payload_sha})
        if method in ("PUT", "POST"):
            # Without a content type urllib sends a form type, and a server may parse the body as a form.
            signed.setdefault("content-type", "application/octet-stream")
        if creds.token:
            signed["x-amz-security-token"] = creds.token
        auth = sigv4_authorization(
            method=method,
            canonical_uri=path,
            query=query,
            headers=signed,
            payload_sha256=payload_sha,
            credentials=creds,
            region=self.region_of(bucket),
            service="s3",
            amz_date=amz_date,
        )
        url = origin + path + ("?" + canonical_query(query) if query else "")
        send = dict(signed)
        send["authorization"] = auth
        return urllib.request.Request(  # noqa: S310 (http(s) endpoints only)
            url, data=body if method in ("PUT", "POST") else None, method=method, headers=send
        )

    def _refusal(self, exc: urllib.error.HTTPError, method: str, bucket: str, attempt: int) -> S3Error:
        """The error of a refused request when another attempt may succeed (raised when none can): a bucket in
        another region (then signed for it), 5xx and throttling, an expired token (then fetched again)."""
        error_body = b"" if method == "HEAD" else exc.read()
        code, message = _error_of(error_body, exc.code)
        err = S3Error(exc.code, code, message)
        elsewhere = exc.headers.get("x-amz-bucket-region") if exc.headers else None
        if elsewhere and elsewhere != self.region_of(bucket) and attempt == 0:
            # A bucket in another region (301 / AuthorizationHeaderMalformed): sign for its region.
            log.info("bucket %s is in %s", bucket, elsewhere)
            self._bucket_regions[bucket] = elsewhere
            return err
        if exc.code >= 500 or exc.code == 429 or code in RETRY_CODES:
            return err
        if code in ("ExpiredToken", "InvalidToken", "TokenRefreshRequired") and attempt == 0:
            self.credentials.invalidate()
            return err
        raise err from None

    # -- objects -----------------------------------------------------------------------------------------------
    def put_object(self, bucket: str, key: str, data: bytes, *, content_type: str | None = None) -> str:
        headers = {"content-type": content_type} if content_type else {}
        _, answer_headers, _ = self._request("PUT", bucket, key, body=data, headers=headers)
        return str(answer_headers.get("ETag", ""))

    def put_json(self, bucket: str, key: str, document: Any) -> None:
        data = json.dumps(document, indent=2, sort_keys=True).encode("utf-8")
        self.put_object(bucket, key, data, content_type="application/json")

    def get_object(self, bucket: str, key: str) -> bytes:
        _, _, data = self._request("GET", bucket, key)
        return bytes(data)

    def get_json(self, bucket: str, key: str) -> Any | None:
        """The parsed object, or None when it does not exist."""
        try:
            return json.loads(self.get_object(bucket, key))
        except S3Error as exc:
            if exc.status == 404:
                return None
            raise

    def head_object(self, bucket: str, key: str) -> S3Object | None:
        try:
            _, headers, _ = self._request("HEAD", bucket, key)
        except S3Error as exc:
            if exc.status == 404:
                return None
            raise
        return S3Object(key, int(headers.get("Content-Length", 0)), str(headers.get("ETag", "")))

    def list_objects(self, bucket: str, prefix: str = "", *, page_size: int = 1000) -> Iterator[S3Object]:
        for objects, _ in self._list_pages(bucket, prefix, "", page_size):
            yield from objects

    def list_prefixes(self, bucket: str, prefix: str = "", delimiter: str = "/") -> list[str]:
        """The CommonPrefixes (sub-folders) right under `prefix`."""
        found: list[str] = []
        for _, prefixes in self._list_pages(bucket, prefix, delimiter, 1000):
            found.extend(prefixes)
        return found

    def _list_pages(
        self, bucket: str, prefix: str, delimiter: str, page_size: int
    ) -> Iterator[tuple[list[S3Object], list[str]]]:
        token = ""
        while True:
            query = {"list-type": "2", "prefix": prefix, "max-keys": str(page_size)}
            if delimiter:
                query["delimiter"] = delimiter
            if token:
                query["continuation-token"] = token
            _, _, data = self._request("GET", bucket, "", query=query)
            root = _xml(data)
            objects: list[S3Object] = []
            prefixes: list[str] = []
            for child in root:
                name = _local(child.tag)
                if name == "Contents":
                    objects.append(
                        S3Object(
                            _child_text(child, "Key"), int(_child_text(child, "Size") or 0), _child_text(child, "ETag")
                        )
                    )
                elif name == "CommonPrefixes":
                    prefixes.append(_child_text(child, "Prefix"))
            yield objects, prefixes
            token = _child_text(root, "NextContinuationToken")
            if _child_text(root, "IsTruncated").lower() != "true" or not token:
                return

    # -- files -------------------------------------------------------------------------------------------------
    def put_file(self, bucket: str, key: str, path: Path, *, content_type: str | None = None) -> tuple[int, str]:
        """Upload a file (multipart above the threshold); returns (size, sha256) of the bytes uploaded."""
        size = path.stat().st_size
        if size <= self.multipart_threshold:
            data = path.read_bytes()
            self.put_object(bucket, key, data, content_type=content_type)
            return len(data), hashlib.sha256(data).hexdigest()
        return self._multipart(bucket, key, path, size)

    def _multipart(self, bucket: str, key: str, path: Path, size: int) -> tuple[int, str]:
        _, _, data = self._request("POST", bucket, key, query={"uploads": ""})
        upload_id = _child_text(_xml(data), "UploadId")
        if not upload_id:
            raise S3Error(200, "NoUploadId", f"CreateMultipartUpload for {key} returned no UploadId")
        digest = hashlib.sha256()
        parts: list[tuple[int, str]] = []
        sent = 0
        try:
            with path.open("rb") as source:
                number = 1
                while sent < size:
                    chunk = source.read(min(self.part_size, size - sent))
                    if not chunk:
                        break  # the file shrank while we read it: upload what we read
                    _, headers, _ = self._request(
                        "PUT", bucket, key, query={"partNumber": str(number), "uploadId": upload_id}, body=chunk
                    )
                    parts.append((number, str(headers.get("ETag", ""))))
                    digest.update(chunk)
                    sent += len(chunk)
                    number += 1
            body = "<CompleteMultipartUpload>" + "".join(
                f"<Part><PartNumber>{n}</PartNumber><ETag>{_xml_escape(etag)}</ETag></Part>" for n, etag in parts
            )
            body += "</CompleteMultipartUpload>"
            self._request("POST", bucket, key, query={"uploadId": upload_id}, body=body.encode())
        except BaseException:
            with contextlib.suppress(Exception):  # do not leave billed parts behind
                self._request("DELETE", bucket, key, query={"uploadId": upload_id})
            raise
        return sent, digest.hexdigest()

    def download_file(self, bucket: str, key: str, target: Path) -> tuple[int, str]:
        """Stream an object to `target` (via a temp file + rename); returns (size, sha256)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.download.tmp")
        for attempt in range(self.attempts):
            digest, size = hashlib.sha256(), 0
            try:
                with self._request("GET", bucket, key, stream=True) as answer, tmp.open("wb") as out:
                    while True:
                        chunk = answer.read(1024 * 1024)
                        if not chunk:
                            break
                        out.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
            except (OSError, http.client.HTTPException) as exc:  # a connection cut mid-body: start again
                if attempt + 1 >= self.attempts:
                    raise S3Error(0, "DownloadFailed", f"s3://{bucket}/{key}: {exc!r}") from exc
                continue
            os.replace(tmp, target)
            return size, digest.hexdigest()
        raise S3Error(0, "DownloadFailed", f"s3://{bucket}/{key}")


def _xml(data: bytes) -> ET.Element:
    # S3's own answers over our signed connection; expat resolves no external entities (defusedxml is not std lib).
    return ET.fromstring(data)  # noqa: S314


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _error_of(body: bytes, status: int) -> tuple[str, str]:
    try:
        root = _xml(body)
        return _child_text(root, "Code") or str(status), _child_text(root, "Message")
    except ET.ParseError:
        return {404: "NotFound", 403: "Forbidden"}.get(status, str(status)), body[:200].decode(errors="replace")
