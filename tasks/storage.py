"""S3: listings (count, bytes, per-key sizes), small JSON records, and staging objects."""

from __future__ import annotations

import json
from collections.abc import Collection
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from blocks.aws import load_account
from core.errors import AwsError, InvalidInputError, UsageError
from core.s3uri import S3Uri, parse_s3_uri
from tasks.aws import aws_task, translate


class PrefixListing(BaseModel):
    """What is under an S3 prefix: keys relative to the prefix with their sizes."""

    uri: str
    objects: dict[str, int] = Field(default_factory=dict)
    last_modified: datetime | None = None

    @property
    def count(self) -> int:
        return len(self.objects)

    @property
    def total_bytes(self) -> int:
        return sum(self.objects.values())


def _s3(account: str | None) -> Any:
    return load_account(account).client("s3")


@aws_task(name="list-s3-prefix", tags=["aws-s3"])
def list_prefix(uri: str, *, require_objects: bool = True, account: str | None = None) -> PrefixListing:
    """Every object under `uri` (paginated). A missing bucket or, with require_objects, an empty prefix is an
    input error naming the URI: nothing downstream should start on a source that is not there."""
    parsed = parse_s3_uri(uri, field="source")
    s3 = _s3(account)
    listing = PrefixListing(uri=str(parsed))
    try:
        with translate("ListObjectsV2"):
            pages = s3.get_paginator("list_objects_v2").paginate(Bucket=parsed.bucket, Prefix=parsed.prefix)
            for page in pages:
                for obj in page.get("Contents", []):
                    relative = obj["Key"][len(parsed.prefix) :]
                    if not relative or relative.endswith("/"):
                        continue  # folder markers made by consoles carry no data
                    listing.objects[relative] = int(obj["Size"])
                    modified = obj["LastModified"]
                    if listing.last_modified is None or modified > listing.last_modified:
                        listing.last_modified = modified
    except Exception as exc:
        if getattr(exc, "code", "") == "NoSuchBucket":
            raise InvalidInputError(
                "source", uri, "an existing bucket", fix=f"Check the bucket name; {parsed.bucket!r} does not exist."
            ) from exc
        raise
    if require_objects and not listing.objects:
        raise InvalidInputError("source", uri, "a prefix with at least one object", fix="Check the prefix.")
    return listing


@aws_task(name="put-json", tags=["aws-s3"])
def put_json(uri: str, payload: Any, *, account: str | None = None) -> str:
    """Write a small JSON document (job records, manifests, expected listings)."""
    parsed = parse_s3_uri(uri)
    if not parsed.key:
        raise UsageError(f"{uri} names a bucket, not an object")
    with translate("PutObject"):
        _s3(account).put_object(
            Bucket=parsed.bucket,
            Key=parsed.key,
            Body=json.dumps(payload, indent=2, default=str).encode(),
            ContentType="application/json",
        )
    return str(parsed)


@aws_task(name="get-json", tags=["aws-s3"])
def get_json(uri: str, *, account: str | None = None) -> Any:
    parsed = parse_s3_uri(uri)
    with translate("GetObject"):
        body = _s3(account).get_object(Bucket=parsed.bucket, Key=parsed.key)["Body"].read()
    return json.loads(body)


@aws_task(name="delete-prefix", tags=["aws-s3"])
def delete_prefix(uri: str, *, account: str | None = None) -> int:
    """Delete every object under a staging prefix (idempotent: an empty prefix deletes nothing)."""
    parsed = parse_s3_uri(uri)
    if not parsed.key:
        raise UsageError(f"refusing to delete a whole bucket ({uri}); name a prefix")
    s3 = _s3(account)
    deleted = 0
    with translate("ListObjectsV2"):
        pages = list(s3.get_paginator("list_objects_v2").paginate(Bucket=parsed.bucket, Prefix=parsed.prefix))
    for page in pages:
        keys = [o["Key"] for o in page.get("Contents", [])]
        delete_keys(s3, parsed.bucket, keys)
        deleted += len(keys)
    abort_uploads(s3, parsed.bucket, parsed.prefix)  # a killed copy's parts are staging too, and billed
    return deleted


def list_uploads(s3: Any, bucket: str, prefix: str) -> list[tuple[str, str, datetime]]:
    """(key, upload id, initiated) of every unfinished multipart upload under `prefix` (paginated)."""
    try:
        with translate("s3:ListBucketMultipartUploads"):
            pages = s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix)
            return [(u["Key"], u["UploadId"], u["Initiated"]) for page in pages for u in page.get("Uploads", [])]
    except AwsError as exc:
        if exc.code != "NoSuchUpload":  # some S3-compatible stores (rclone's) answer this when there are none
            raise
        return []


def abort_uploads(
    s3: Any,
    bucket: str,
    prefix: str,
    keys: Collection[str] | None = None,
    upload_ids: Collection[str] | None = None,
) -> int:
    """Abort the unfinished multipart uploads under `prefix` (only those of `keys`, and of `upload_ids`, when
    given); returns how many.

    A killed upload leaves its parts stored and billed, invisible to listings, until aborted or a lifecycle rule
    removes them. An unfinished upload is no object yet: aborting it loses no readable data. One finished or
    aborted meanwhile is skipped."""
    uploads = [
        (key, upload_id)
        for key, upload_id, _ in list_uploads(s3, bucket, prefix)
        if (keys is None or key in keys) and (upload_ids is None or upload_id in upload_ids)
    ]
    aborted = 0
    for key, upload_id in uploads:
        try:
            with translate("s3:AbortMultipartUpload"):
                s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        except AwsError as exc:
            if exc.code != "NoSuchUpload":
                raise
            continue
        aborted += 1
    return aborted


def delete_keys(s3: Any, bucket: str, keys: list[str]) -> None:
    """DeleteObjects in batches of 1,000. A quiet DeleteObjects answers 200 even when keys were refused: read its
    per-key Errors and raise, so a refused key is never reported as deleted (a missing key is not an error)."""
    for start in range(0, len(keys), 1000):
        batch = [{"Key": k} for k in keys[start : start + 1000]]
        with translate("s3:DeleteObjects"):
            answer = s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        errors = [e for e in answer.get("Errors", []) if e.get("Code") != "NoSuchKey"]
        if errors:
            first = errors[0]
            raise AwsError(
                "DeleteObjects",
                str(first.get("Code", "Unknown")),
                f"{len(errors)} of {len(batch)} objects in s3://{bucket} were not deleted, "
                f"e.g. {first.get('Key')}: {first.get('Message', '')}",
            )


def staging_uri(bucket: str, *parts: str) -> str:
    """Where trainctl stages transient objects: s3://<bucket>/trainctl/staging/<parts...>."""
    return str(S3Uri(bucket).join("trainctl", "staging", *parts))
