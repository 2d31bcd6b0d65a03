"""S3 as AWS behaves where moto 5.2.5 differs, for the checks trainctl's transfer relies on:

- Every new object has a full-object checksum. AWS computes a CRC64NVME for any upload that brings none
  (since 2024-12), multipart uploads included; moto stores none, so an s5cmd upload (which sends no checksum)
  could only ever be checked by its ETag here.
- An object encrypted with SSE-KMS or DSSE-KMS has an ETag that is not the MD5 of its bytes (its parts' neither,
  so a multipart ETag is no MD5 of part MD5s); moto gives every object its MD5. Code that trusts such an ETag as
  a checksum reports every KMS object as corrupt on AWS while passing here.
- A bucket's default encryption applies to multipart uploads too (moto applies it to single PUTs only).
- HeadObject with ChecksumMode says what the checksum covers (x-amz-checksum-type) and gives a COMPOSITE one
  (of the parts' checksums: boto3's multipart uploads) as `value-N`; moto's HEAD gives neither (its GET does),
  so a checksum of parts looked like one of the whole object.
- Conditional writes are atomic: moto checks PutObject's IfNoneMatch/IfMatch and then writes, unlocked, so two
  writers could both pass the check; writes to one object (PUT, POST, DELETE) run one at a time here, so of N
  concurrent IfNoneMatch="*" puts exactly one succeeds, as on S3. CompleteMultipartUpload honours IfMatch (412 when
  the object's ETag differs, 404 NoSuchKey when there is none); moto checks only its IfNoneMatch.
- A PUT's checksum is checked: one that does not match the bytes is refused (400 BadDigest) and nothing is
  stored; moto stored the object with the wrong checksum. A checksum sent as its header alone (boto3's
  `ChecksumCRC32=...`, with no ChecksumAlgorithm) is the object's checksum, as on S3 (moto kept only one named by
  x-amz-sdk-checksum-algorithm). PutObject answers the type of a checksum it was sent (always FULL_OBJECT), and
  GetObject with ChecksumMode says the type too.
- CompleteMultipartUpload answers the object's checksum and its type (FULL_OBJECT, or COMPOSITE as `value-N`).
- UploadPart refuses a part whose sent checksum differs from its bytes, and CompleteMultipartUpload of a
  FULL_OBJECT upload one whose full-object checksum differs from the parts' (400 BadDigest, nothing stored);
  moto checks neither.

moto's classes are patched once per process (the backends are process-global anyway); private moto API is
allowed only inside sandbox/.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from moto.core.responses import ActionResult
from moto.s3 import exceptions, models, responses

from sandbox.protocol import AwsRequest

_KMS = frozenset({"aws:kms", "aws:kms:dsse"})
ALGORITHMS = ("CRC64NVME", "CRC32", "CRC32C", "SHA1", "SHA256")
_installed = False


def install(sandbox: Any = None) -> None:
    global _installed
    if sandbox is not None:
        sandbox.serialise("s3", lambda req: object_written(req, sandbox.host))
    if _installed:
        return
    _installed = True
    _kms_etags()
    _default_checksums()
    _bucket_encryption_for_multipart()
    _head_checksum_type()
    _complete_if_match()
    _put_checksum_checked()
    _checked_parts()
    _checked_full_object()  # before the answer's checksum is added, so it wraps this check
    _complete_answers_checksum()


def object_written(req: AwsRequest, endpoint_host: str) -> str | None:
    """`bucket/key` of the object a request writes (PUT, POST, DELETE on a key), else None."""
    if req.method not in ("PUT", "POST", "DELETE"):
        return None
    host = req.headers.get("host", "").rsplit(":", 1)[0]
    path = unquote(req.path).lstrip("/")
    if host.endswith((f".{endpoint_host}", ".localhost")):  # virtual-hosted style: the bucket is in the host
        bucket, key = host.split(".", 1)[0], path
    else:
        bucket, _, key = path.partition("/")
    return f"{bucket}/{key}" if bucket and key else None


def _complete_if_match() -> None:
    post = responses.S3Response._key_response_post

    def post_if_match(
        self: Any, request: Any, body: bytes, bucket_name: str, query: dict[str, Any], key_name: str
    ) -> Any:
        if_match = self.headers.get("If-Match")
        if query.get("uploadId") and if_match:
            current = self.backend.get_object(bucket_name, key_name)
            if current is None:
                raise exceptions.MissingKey(key=key_name)
            if if_match.replace('"', "") != current.etag.replace('"', ""):  # S3 ignores the quotes, as moto's PUT
                raise exceptions.PreconditionFailed("If-Match")
        return post(self, request, body, bucket_name, query, key_name)

    responses.S3Response._key_response_post = post_if_match  # type: ignore[method-assign]


def _checked_parts() -> None:
    upload_part = responses.S3Response.upload_part

    def check_then_upload(self: Any) -> Any:
        sent = sent_checksum(self.headers, self.raw_body)
        if sent and checksum_of(self.body or b"", sent[0]) != sent[1]:
            raise BadDigest(sent[0])
        return upload_part(self)

    responses.S3Response.upload_part = check_then_upload  # type: ignore[method-assign]


def _checked_full_object() -> None:
    post = responses.S3Response._key_response_post

    def complete_checked(
        self: Any, request: Any, body: bytes, bucket_name: str, query: dict[str, Any], key_name: str
    ) -> Any:
        upload_id = (query.get("uploadId") or [None])[0]
        upload = self.backend.get_bucket(bucket_name).multiparts.get(upload_id) if upload_id else None
        sent = sent_checksum(request.headers, b"") if upload is not None else None
        if upload is not None and sent and upload.metadata.get("x-amz-checksum-type") == "FULL_OBJECT":
            parts = b"".join(upload.parts[n].value for n, _ in self._complete_multipart_body(body) if n in upload.parts)
            if checksum_of(parts, sent[0]) != sent[1]:
                raise BadDigest(sent[0])
        return post(self, request, body, bucket_name, query, key_name)

    responses.S3Response._key_response_post = complete_checked  # type: ignore[method-assign]


def kms_etag(content_etag: str) -> str:
    """A stand-in for AWS's ETag of a KMS-encrypted object: 32 hex digits, stable, and not the content's MD5."""
    return hashlib.md5(b"sse-kms:" + content_etag.encode(), usedforsecurity=False).hexdigest()


def _kms_etags() -> None:
    content_etag = vars(models.FakeKey)["etag"].fget

    def etag(self: Any) -> str:
        value: str = content_etag(self)
        if self.encryption in _KMS and "-" not in value:  # a multipart ETag is built from its parts' (patched) ones
            return f'"{kms_etag(value.strip(chr(34)))}"'
        return value

    models.FakeKey.etag = property(etag)  # type: ignore[assignment,method-assign]


def _crc64nvme(value: bytes) -> str:
    from awscrt import checksums

    return base64.b64encode(checksums.crc64nvme(value).to_bytes(8, "big")).decode()


def _default_checksums() -> None:
    put_object = models.S3Backend.put_object
    complete = models.S3Backend.complete_multipart_upload

    def put_with_checksum(self: Any, *args: Any, **kwargs: Any) -> Any:
        key = put_object(self, *args, **kwargs)
        # A multipart upload's checksum is set by complete_multipart_upload below; a checksum the client sent is
        # set by moto's response handler after this returns (and replaces this one).
        if kwargs.get("multipart") is None and not kwargs.get("checksum_value") and key.checksum_algorithm is None:
            key.checksum_algorithm, key.checksum_type = "CRC64NVME", "FULL_OBJECT"
            key.checksum_value = _crc64nvme(key.value)
        return key

    def complete_with_checksum(self: Any, *args: Any, **kwargs: Any) -> Any:
        key = complete(self, *args, **kwargs)
        # moto computed a full-object CRC64NVME when the upload named no algorithm, then left the name unset.
        if key is not None and key.checksum_algorithm is None and key.checksum_type == "FULL_OBJECT":
            key.checksum_algorithm = "CRC64NVME"
        return key

    models.S3Backend.put_object = put_with_checksum  # type: ignore[method-assign]
    models.S3Backend.complete_multipart_upload = complete_with_checksum  # type: ignore[method-assign]


def _bucket_encryption_for_multipart() -> None:
    create = models.S3Backend.create_multipart_upload

    def create_encrypted(
        self: Any, bucket_name: str, key_name: str, metadata: Any, storage_type: str, tags: Any, acl: Any,
        sse_encryption: str | None, kms_key_id: str | None,
    ) -> Any:  # fmt: skip
        default = (self.get_bucket(bucket_name).encryption or {}).get("Rule", {})
        default = default.get("ApplyServerSideEncryptionByDefault", {})
        return create(
            self,
            bucket_name,
            key_name,
            metadata,
            storage_type,
            tags,
            acl,
            sse_encryption or default.get("SSEAlgorithm"),
            kms_key_id or default.get("KMSMasterKeyID"),
        )

    models.S3Backend.create_multipart_upload = create_encrypted  # type: ignore[method-assign]


def _head_checksum_type() -> None:
    head = responses.S3Response.head_object

    def head_with_checksum_type(
        self: Any, bucket_name: str, query: dict[str, Any], key_name: str, headers: dict[str, Any]
    ) -> Any:
        status, response_headers, body = head(self, bucket_name, query, key_name, headers)
        if status != 200 or headers.get("x-amz-checksum-mode") != "ENABLED":
            return status, response_headers, body
        key = self.backend.head_object(bucket_name, key_name, version_id=query.get("versionId", [None])[0])
        if key is None or not key.checksum_algorithm:
            return status, response_headers, body
        kind = key.checksum_type or ("FULL_OBJECT" if key.multipart is None else None)
        if kind is not None:
            response_headers["x-amz-checksum-type"] = kind
        if kind == "COMPOSITE":
            header = f"x-amz-checksum-{key.checksum_algorithm.lower()}"
            response_headers[header] = f"{key.checksum_value}-{key.checksum_parts}"
        return status, response_headers, body

    responses.S3Response.head_object = head_with_checksum_type  # type: ignore[method-assign]


class BadDigest(exceptions.S3ClientError):
    code = "BadDigest"

    def __init__(self, algorithm: str) -> None:
        super().__init__(f"The {algorithm} you specified did not match the calculated checksum.")


def checksum_of(data: bytes, algorithm: str) -> str:
    """`data`'s checksum in S3's form (base64 of the big-endian digest); moto's own falls back to CRC32 for CRC32C."""
    from awscrt import checksums

    if algorithm in ("SHA1", "SHA256"):
        digest = hashlib.new(algorithm.lower(), data, usedforsecurity=False).digest()
    elif algorithm == "CRC64NVME":
        digest = checksums.crc64nvme(data).to_bytes(8, "big")
    else:
        digest = (checksums.crc32c if algorithm == "CRC32C" else checksums.crc32)(data).to_bytes(4, "big")
    return base64.b64encode(digest).decode()


def sent_checksum(headers: Mapping[str, str], raw_body: bytes) -> tuple[str, str] | None:
    """(algorithm, value) of the checksum a request sent: its x-amz-checksum-* header, or the trailer of an
    aws-chunked body (announced by x-amz-trailer); None when it sent none."""
    for algorithm in ALGORITHMS:
        if value := headers.get(f"x-amz-checksum-{algorithm.lower()}"):
            return algorithm, value
    trailer = headers.get("x-amz-trailer", "").lower()
    algorithm = trailer.removeprefix("x-amz-checksum-").upper()
    if algorithm in ALGORITHMS and isinstance(raw_body, bytes):
        found = re.search(rb"x-amz-checksum-" + algorithm.lower().encode() + rb":\s*([A-Za-z0-9+/=]+)", raw_body)
        if found:
            return algorithm, found.group(1).decode()
    return None


def _put_checksum_checked() -> None:
    put = responses.S3Response.put_object

    def put_checked(self: Any) -> Any:
        sent = sent_checksum(self.headers, self.raw_body)
        if sent is not None and checksum_of(self.body or b"", sent[0]) != sent[1]:
            raise BadDigest(sent[0])
        status, headers, body = put(self)
        key = self.backend.get_object(self.bucket_name, self.parse_key_name())
        if key is not None and key.checksum_algorithm:
            key.checksum_type = "FULL_OBJECT"  # a single PUT's checksum is of the whole object; GET says so then
        if key is not None and sent is not None:
            key.checksum_algorithm, key.checksum_value = sent
            headers[f"x-amz-checksum-{sent[0].lower()}"] = sent[1]
            headers["x-amz-checksum-type"] = "FULL_OBJECT"
        return status, headers, body

    responses.S3Response.put_object = put_checked  # type: ignore[method-assign]


def _complete_answers_checksum() -> None:
    post = responses.S3Response._key_response_post

    def post_with_checksum(
        self: Any, request: Any, body: bytes, bucket_name: str, query: dict[str, Any], key_name: str
    ) -> Any:
        status, headers, answer = post(self, request, body, bucket_name, query, key_name)
        key = self.backend.get_object(bucket_name, key_name) if query.get("uploadId") and status == 200 else None
        if key is None or not key.checksum_algorithm or not key.checksum_type:
            return status, headers, answer
        value = key.checksum_value
        if key.checksum_type == "COMPOSITE":
            value = f"{value}-{key.checksum_parts}"
        result = {
            "Location": f"http://{bucket_name}.s3.amazonaws.com/{key.name}",
            "Bucket": bucket_name,
            "Key": key.name,
            "ETag": key.etag,
            f"Checksum{key.checksum_algorithm}": value,
            "ChecksumType": key.checksum_type,
        }
        _, _, answer = self.serialized(ActionResult(result))
        return status, headers, answer

    responses.S3Response._key_response_post = post_with_checksum  # type: ignore[method-assign]
