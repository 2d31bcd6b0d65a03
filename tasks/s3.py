"""S3, in one place: listings (one paginator helper), JSON documents, deletions, unfinished multipart uploads.

Operations are named by their IAM action (`s3:ListBucket`, `s3:PutObject`) so an access-denied error names the
permission to grant (tasks/aws.py translate).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from blocks.aws import load_account
from core.errors import AwsError, InvalidInputError, UsageError
from core.s3uri import S3Uri, parse_s3_uri
from tasks.aws import aws_task, translate

# What S3 answers for an object that is not there: NoSuchKey to a GET, a bare 404 / NotFound to a HEAD.
MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
# S3's answers to a conditional write that lost: 412 (the ETag or existence check failed) and 409 (another
# conditional write to the key was in flight). With IfMatch, a key deleted meanwhile answers NoSuchKey.
LOST_RACE_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})


class PrefixListing(BaseModel):
    """What is under an S3 prefix: keys relative to the prefix with their sizes."""

    uri: str
    objects: dict[str, int] = Field(default_factory=dict)
    etags: dict[str, str] = Field(default_factory=dict, description="key → ETag (without quotes)")
    last_modified: datetime | None = None

    @property
    def count(self) -> int:
        return len(self.objects)

    @property
    def total_bytes(self) -> int:
        return sum(self.objects.values())


def client(account: str | None) -> Any:
    return load_account(account).client("s3")


def is_missing(exc: BaseException) -> bool:
    """Did S3 answer that the object does not exist?"""
    return getattr(exc, "code", "") in MISSING_CODES


# -- listings ---------------------------------------------------------------------------------------------------


def _pages(s3: Any, bucket: str, prefix: str, delimiter: str | None) -> Iterator[dict[str, Any]]:
    """Every page of ListObjectsV2 (1,000 keys each): the one listing loop of the tasks."""
    extra = {"Delimiter": delimiter} if delimiter else {}
    with translate("s3:ListBucket"):
        yield from s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, **extra)


def list_objects(s3: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    """Every object under `prefix` as ListObjectsV2 gives it (Key, Size, LastModified, ETag), all pages read."""
    return [obj for page in _pages(s3, bucket, prefix, None) for obj in page.get("Contents", [])]


def list_common_prefixes(s3: Any, bucket: str, prefix: str, delimiter: str = "/") -> list[str]:
    """The "folders" right under `prefix` (full prefixes, ending in `delimiter`), all pages read."""
    return [
        common["Prefix"] for page in _pages(s3, bucket, prefix, delimiter) for common in page.get("CommonPrefixes", [])
    ]


@contextmanager
def existing_bucket(field: str, uri: str, bucket: str) -> Iterator[None]:
    """A missing bucket as an input error naming `field`: nothing downstream should start on a source that is not
    there."""
    try:
        yield
    except AwsError as exc:
        if exc.code == "NoSuchBucket":
            raise InvalidInputError(
                field, uri, "an existing bucket", fix=f"Check the bucket name; {bucket!r} does not exist."
            ) from exc
        raise


@aws_task(name="list-s3-prefix", task_run_name="list {uri}", tags=["aws-s3"])
def list_prefix(uri: str, *, require_objects: bool = True, account: str | None = None) -> PrefixListing:
    """Every object under `uri` (paginated). A missing bucket or, with require_objects, an empty prefix is an
    input error naming the URI."""
    parsed = parse_s3_uri(uri, field="source")
    listing = PrefixListing(uri=str(parsed))
    with existing_bucket("source", uri, parsed.bucket):
        found = list_objects(client(account), parsed.bucket, parsed.prefix)
    for obj in found:
        relative = obj["Key"][len(parsed.prefix) :]
        if not relative or relative.endswith("/"):
            continue  # folder markers made by consoles carry no data
        listing.objects[relative] = int(obj["Size"])
        listing.etags[relative] = str(obj.get("ETag", "")).strip('"')
        modified = obj["LastModified"]
        if listing.last_modified is None or modified > listing.last_modified:
            listing.last_modified = modified
    if require_objects and not listing.objects:
        raise InvalidInputError("source", uri, "a prefix with at least one object", fix="Check the prefix.")
    return listing


# -- buckets and single objects -------------------------------------------------------------------------------


@aws_task(name="check-bucket", task_run_name="check-bucket {bucket}", tags=["aws-s3"])
def check_bucket(bucket: str, *, account: str | None = None) -> None:
    """The job's bucket exists and is reachable (checked before anything is launched)."""
    try:
        with translate("s3:ListBucket"):  # the IAM action HeadBucket needs
            client(account).head_bucket(Bucket=bucket)
    except Exception as exc:
        if getattr(exc, "code", "") in {"404", "NoSuchBucket", "NotFound"}:
            raise InvalidInputError(
                "bucket", bucket, "an existing bucket", fix=f"Create it first: aws s3 mb s3://{bucket}"
            ) from exc
        raise


@aws_task(name="upload-file", task_run_name="put {uri}", tags=["aws-s3"])
def upload_file(path: str, uri: str, *, account: str | None = None) -> str:
    parsed = parse_s3_uri(uri)
    with translate("s3:PutObject"):
        client(account).upload_file(path, parsed.bucket, parsed.key)
    return str(parsed)


@aws_task(name="copy-staged", task_run_name="copy {source_prefix} → {dest_prefix}", tags=["aws-s3"])
def copy_staged(source_prefix: str, dest_prefix: str, names: list[str], *, account: str | None = None) -> None:
    """Copy the named objects from one staging prefix to another inside S3 (no download): a resume ships an
    earlier attempt's code without the user's code folder."""
    s3 = client(account)
    for name in names:
        source, dest = parse_s3_uri(source_prefix + name), parse_s3_uri(dest_prefix + name)
        with translate("s3:PutObject"):  # CopyObject: s3:GetObject on the source, s3:PutObject here
            s3.copy_object(Bucket=dest.bucket, Key=dest.key, CopySource={"Bucket": source.bucket, "Key": source.key})


def put_conditional(s3: Any, bucket: str, key: str, body: bytes, *, expected_etag: str | None) -> str:
    """PutObject only if the object is still as read (`expected_etag`; None: only if there is none yet), so one
    writer wins a race and no update is lost. Returns the new ETag; the refusal is raised as S3 answers it."""
    condition = {"IfNoneMatch": "*"} if expected_etag is None else {"IfMatch": expected_etag}
    with translate("s3:PutObject"):
        put = s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json", **condition)
    return str(put["ETag"])


# -- JSON documents -------------------------------------------------------------------------------------------


@aws_task(name="put-json", task_run_name="put {uri}", tags=["aws-s3"])
def put_json(uri: str, payload: Any, *, account: str | None = None) -> str:
    """Write a small JSON document (job records, manifests, a transfer's lists) at `uri`; returns the URI."""
    parsed = parse_s3_uri(uri)
    if not parsed.key:
        raise UsageError(f"{uri} names a bucket, not an object")
    with translate("s3:PutObject"):
        client(account).put_object(
            Bucket=parsed.bucket,
            Key=parsed.key,
            Body=json.dumps(payload, indent=2, default=str).encode(),
            ContentType="application/json",
        )
    return str(parsed)


@aws_task(name="get-json", task_run_name="get {uri}", tags=["aws-s3"])
def get_json(uri: str, *, missing_ok: bool = False, account: str | None = None) -> Any:
    """The JSON document at `uri`. A missing object raises, or with `missing_ok` reads as None. A body that is not
    JSON raises ValueError (a half-written or foreign document: the caller decides)."""
    parsed = parse_s3_uri(uri)
    try:
        with translate("s3:GetObject"):
            body = client(account).get_object(Bucket=parsed.bucket, Key=parsed.key)["Body"].read()
    except AwsError as exc:
        if missing_ok and is_missing(exc):
            return None
        raise
    return json.loads(body)


def get_tagged(uri: str, *, account: str | None = None) -> tuple[bytes | None, str | None]:
    """The object at `uri` and its ETag, for a conditional write after it; (None, None) when there is none."""
    parsed = parse_s3_uri(uri)
    try:
        with translate("s3:GetObject"):
            got = client(account).get_object(Bucket=parsed.bucket, Key=parsed.key)
            return got["Body"].read(), str(got["ETag"])
    except AwsError as exc:
        if is_missing(exc):
            return None, None
        raise


def put_json_if(uri: str, payload: Any, *, expected_etag: str | None, account: str | None = None) -> str | None:
    """Write `payload` at `uri` only if the object is still the one read (`expected_etag`; None: only if there is
    none yet). Returns the new ETag, or None when another writer changed it first (nothing was written)."""
    parsed = parse_s3_uri(uri)
    body = json.dumps(payload, indent=2, default=str).encode()
    try:
        return put_conditional(client(account), parsed.bucket, parsed.key, body, expected_etag=expected_etag)
    except AwsError as exc:
        if exc.code in LOST_RACE_CODES or (expected_etag is not None and is_missing(exc)):
            return None
        raise


# -- deletions and unfinished uploads -----------------------------------------------------------------------------


@aws_task(name="delete-prefix", task_run_name="delete {uri}", tags=["aws-s3"])
def delete_prefix(uri: str, *, account: str | None = None) -> int:
    """Delete every object under a staging prefix (idempotent: an empty prefix deletes nothing)."""
    parsed = parse_s3_uri(uri)
    if not parsed.key:
        raise UsageError(f"refusing to delete a whole bucket ({uri}); name a prefix")
    s3 = client(account)
    keys = [obj["Key"] for obj in list_objects(s3, parsed.bucket, parsed.prefix)]  # all listed before deleting
    delete_keys(s3, parsed.bucket, keys)
    abort_uploads(s3, parsed.bucket, parsed.prefix)  # a killed copy's parts are staging too, and billed
    return len(keys)


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
        with translate("s3:DeleteObject"):  # the IAM action DeleteObjects needs
            answer = s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        errors = [e for e in answer.get("Errors", []) if e.get("Code") != "NoSuchKey"]
        if errors:
            first = errors[0]
            raise AwsError(
                "s3:DeleteObject",
                str(first.get("Code", "Unknown")),
                f"{len(errors)} of {len(batch)} objects in s3://{bucket} were not deleted, "
                f"e.g. {first.get('Key')}: {first.get('Message', '')}",
            )


@aws_task(name="delete-objects", task_run_name="delete-objects s3://{bucket}", tags=["aws-s3"])
def delete_objects(
    bucket: str, keys: list[str], *, not_after: datetime, account: str | None = None
) -> dict[str, list[str]]:
    """Teardown's delete: exactly `keys`, skipping any object modified after `not_after` (rewritten since the
    plan: its recency must be judged again). Missing keys count as deleted. Returns {"deleted": [...],
    "skipped": [...]}."""
    s3 = client(account)
    current: dict[str, datetime] = {}
    # A key's folder is its listing prefix; a key without a folder is listed by its own name.
    prefixes = sorted({k.rsplit("/", 1)[0] + "/" if "/" in k else k for k in keys})
    for prefix in prefixes:
        current.update((obj["Key"], obj["LastModified"]) for obj in list_objects(s3, bucket, prefix))
    wanted = set(keys)
    skipped = sorted(k for k in wanted if k in current and current[k] > not_after)
    deletable = sorted(k for k in wanted if k in current and k not in skipped)
    delete_keys(s3, bucket, deletable)
    return {"deleted": sorted(wanted - set(skipped)), "skipped": skipped}


@aws_task(name="abort-upload", task_run_name="abort-upload s3://{bucket}/{key}", tags=["aws-s3"])
def abort_upload(bucket: str, key: str, upload_id: str, *, account: str | None = None) -> bool:
    """Abort one unfinished multipart upload (its stored parts go). False when it was completed or aborted since."""
    s3 = client(account)
    return abort_uploads(s3, bucket, key, keys={key}, upload_ids={upload_id}) > 0


def staging_uri(bucket: str, *parts: str) -> str:
    """Where trainctl stages transient objects: s3://<bucket>/trainctl/staging/<parts...>."""
    return str(S3Uri(bucket).join("trainctl", "staging", *parts))
