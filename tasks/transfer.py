"""The transfer's S3 side: listing a tree, checksums S3 keeps, whether a local file holds an object's bytes, verifying
an upload, deleting and aborting; and finding the instance of an instance leg. Local files are in
tasks/local_files.py, the copy engines in tasks/copy_engines.py, the SSM scripts in core/transfer.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.transfer_helper import multipart_etag
from core.errors import AwsError
from core.s3uri import S3Uri
from core.transfer import PARTIAL_LOCK as PARTIAL_LOCK  # re-exported: tests name it here
from core.transfer import (
    Checksum,
    etag_part_sizes,
    etag_parts,
    is_md5_etag,
    normalize_etag,
    part_sizes,
)
from core.transfer_checks import AFTER, UPLOAD_ETAG, checksum_name, etag_name
from tasks.aws import aws_task, translate
from tasks.local_files import composite_checksum, file_checksum, md5_file, parallel_filter, part_digests
from tasks.s3 import abort_uploads, client, delete_keys, existing_bucket, list_objects


@dataclass(frozen=True)
class S3Object:
    size: int
    etag: str


# -- listings ---------------------------------------------------------------------------------------------------


@aws_task(name="list-s3-tree", task_run_name="list {uri}", tags=["aws-s3"])
def list_s3_tree(uri: S3Uri, *, account: str | None = None, field: str = "source") -> dict[str, S3Object]:
    """Every object under the prefix (relative key → size, ETag): one ListObjectsV2 call per 1,000 objects.

    A missing bucket is an input error naming it; AccessDenied keeps AWS's code and names the permission."""
    found: dict[str, S3Object] = {}
    prefix = uri.prefix
    with existing_bucket(field, str(uri), uri.bucket):
        listed = list_objects(client(account), uri.bucket, prefix)
    for obj in listed:
        rel = obj["Key"][len(prefix) :]
        if rel and not rel.endswith("/"):  # folder markers made by consoles carry no data
            found[rel] = S3Object(int(obj["Size"]), normalize_etag(obj.get("ETag")))
    return found


def matches_etag(path: Path, etag: str, part_size: int | None) -> bool:
    """Does the file hold the bytes S3 has under `etag` (single-part MD5 or a multipart ETag; see core)?"""
    etag = normalize_etag(etag)
    if not is_md5_etag(etag):
        return False  # SSE-KMS/SSE-C ETags are not MD5s: unverifiable, so never "same"
    if "-" not in etag:
        return md5_file(path) == etag
    size = path.stat().st_size
    return any(
        multipart_etag(part_digests(path, size, part)) == etag for part in etag_part_sizes(size, etag, part_size)
    )


# Full-object checksums S3 keeps beside the ETag (S3 gives every new object a CRC64NVME), best first. A CRC costs
# a fraction of an MD5 pass (CRC64NVME 5.3 GB/s on this machine, MD5 ~0.55 GB/s), and unlike the ETag it is a
# checksum of the content also under SSE-KMS.
_CHECKSUMS = ("CRC64NVME", "CRC32C", "CRC32", "SHA256", "SHA1")


# HeadObject's answers when IfMatch names an ETag the object no longer has (412), or it is gone (404).
_CHANGED = {"412", "PreconditionFailed", "404", "NoSuchKey", "NotFound"}


def _head(prefix: S3Uri, rel: str, account: str | None, etag: str | None = None) -> dict[str, Any] | None:
    """HeadObject with checksums; None for an identity that may list and write but not read (403).

    `etag`: the ETag the plan listed. The answer is then that version's (IfMatch), or {} when the object changed
    or went since the listing: a checksum of other bytes must never vouch for a file."""
    extra = {"IfMatch": f'"{etag}"'} if etag else {}
    try:
        with translate("s3:GetObject"):
            head: dict[str, Any] = client(account).head_object(
                Bucket=prefix.bucket, Key=prefix.prefix + rel, ChecksumMode="ENABLED", **extra
            )
            return head
    except AwsError as exc:
        if exc.code in {"403", "AccessDenied", "Forbidden"}:
            return None
        if etag and exc.code in _CHANGED:
            return {}
        raise


def _checksum_of(head: Mapping[str, Any]) -> Checksum | None:
    """The checksum a HeadObject gives: of the whole object, or COMPOSITE (of a multipart upload's part checksums,
    `value-N`: said by ChecksumType or by the `-N`). Without a ChecksumType (older S3-compatible stores, moto) a
    multipart object's checksum is taken as COMPOSITE unless it is a CRC64NVME, which S3 never keeps so: boto3's
    multipart uploads get a composite CRC32, which some stores give without the `-N`. None: no checksum."""
    kind = head.get("ChecksumType")
    parts = etag_parts(str(head.get("ETag", "")))
    for algorithm in _CHECKSUMS:
        value = head.get(f"Checksum{algorithm}")
        if not value:
            continue
        if "-" in value:
            return Checksum(algorithm, value)
        if kind == "COMPOSITE" or (kind is None and parts and algorithm != "CRC64NVME"):
            return Checksum(algorithm, f"{value}-{parts}") if parts else None
        return Checksum(algorithm, value)
    return None


def head_as_listed(prefix: S3Uri, rel: str, *, account: str | None, etag: str) -> tuple[bool, Checksum | None]:
    """(whether the object still has the listed `etag`, its checksum): one HeadObject with IfMatch. An identity
    that may not read metadata gets (True, None): the ETag is all there is to check by then."""
    head = _head(prefix, rel, account, etag or None)
    if head is None:
        return True, None
    return (False, None) if head == {} else (True, _checksum_of(head))


def head_checksum(prefix: S3Uri, rel: str, *, account: str | None, etag: str | None = None) -> Checksum | None:
    """The object's checksum (HeadObject with ChecksumMode): the full-object one, else a COMPOSITE one; None when
    it has none or may not be read, or (with `etag`, the listed ETag) when the object changed since the listing."""
    head = _head(prefix, rel, account, etag)
    return None if head is None else _checksum_of(head)


@aws_task(name="changed-since-listing", task_run_name="changed-since-listing {prefix}", tags=["aws-s3"])
def changed_since_listing(prefix: S3Uri, etags: Mapping[str, str], *, account: str | None = None) -> list[str]:
    """Which of these objects (relative key → the ETag the plan listed) no longer have that ETag, or are gone: one
    HeadObject with IfMatch each, 16 at a time. Used to say why files failed verification."""
    rels = sorted(etags)
    with ThreadPoolExecutor(max_workers=16) as pool:
        heads = pool.map(lambda rel: _head(prefix, rel, account, etags[rel] or None), rels)
        return [rel for rel, head in zip(rels, heads, strict=True) if head == {}]


# Under these, S3's ETag is not an MD5 of the object's bytes (nor, for multipart, of its parts' MD5s).
_KMS = ("aws:kms", "aws:kms:dsse")


@aws_task(name="kms-checksums", task_run_name="kms-checksums {prefix}", tags=["aws-s3"])
def kms_checksums(
    prefix: S3Uri, rels: list[str], *, etags: Mapping[str, str], account: str | None = None
) -> dict[str, Checksum]:
    """For objects encrypted with KMS (SSE-KMS, DSSE-KMS), whose ETags are no MD5s: each one's checksum (of the
    whole object, else COMPOSITE; one HeadObject each, 16 at a time), of the version the listing saw (`etags`:
    relative key → listed ETag; an object changed since has none here, so its file cannot pass). Judged by the
    first object still as listed, as a bucket's default encryption covers all: {} when it is not KMS-encrypted
    (the ETags are checksums then), or when it may not be read."""
    heads: dict[str, dict[str, Any]] = {}
    for rel in rels:
        head = _head(prefix, rel, account, etags.get(rel))
        if head is None:
            return {}
        heads[rel] = head
        if head:  # not changed since the listing: it tells how the prefix is encrypted
            break
    if not heads or list(heads.values())[-1].get("ServerSideEncryption") not in _KMS:
        return {}
    rest = [rel for rel in rels if rel not in heads]
    with ThreadPoolExecutor(max_workers=16) as pool:
        more = pool.map(lambda rel: head_checksum(prefix, rel, account=account, etag=etags.get(rel)), rest)
        found = {rel: _checksum_of(head) for rel, head in heads.items()} | dict(zip(rest, more, strict=True))
    return {rel: checksum for rel, checksum in found.items() if checksum is not None}


def matches_object(
    path: Path,
    obj: S3Object,
    part_size: int,
    *,
    prefix: S3Uri | None = None,
    rel: str = "",
    account: str | None = None,
    checksum: Checksum | None = None,
    checked: dict[str, str] | None = None,
) -> bool:
    """Does the file hold the bytes of the object as listed (`obj`: its size and ETag)? Size first; then by
    `checksum` when the caller has the object's checksum (`kms_checksums`). Otherwise, with `prefix` (where the
    object is) given: a file of a part or more by the object's checksum when it has one (one HEAD instead of an
    MD5 pass), else by its ETag; a smaller one by its ETag, and by its checksum when the ETag does not match
    (SSE-KMS ETags are no MD5s; one HEAD per such file). A HEAD counts only while the object still has the listed
    ETag (IfMatch): the checksum of an object overwritten since never vouches for a file. `checked` gets
    rel → the name of the check that passed (core/transfer_checks.py)."""
    name = _object_check(path, obj, part_size, prefix, rel, account, checksum)
    if name is not None and checked is not None:
        checked[rel] = name
    return name is not None


def _object_check(
    path: Path, obj: S3Object, part_size: int, prefix: S3Uri | None, rel: str, account: str | None,
    checksum: Checksum | None,
) -> str | None:  # fmt: skip
    """`matches_object`'s answer as the name of the check that passed, None when none did."""
    if path.stat().st_size != obj.size:
        return None
    if checksum is not None:
        return checksum_name(checksum) + AFTER if matches_checksum(path, checksum, part_size) else None
    big = obj.size >= part_size
    if prefix is not None and big:
        by_checksum = _matches_checksum(path, prefix, rel, account, part_size, obj.etag)
        if by_checksum is not None:
            return by_checksum or None
    if matches_etag(path, obj.etag, part_size):
        return etag_name(obj.etag) + AFTER
    if prefix is None or big:
        return None
    return _matches_checksum(path, prefix, rel, account, part_size, obj.etag) or None


def matches_checksum(path: Path, checksum: Checksum, part_size: int) -> bool:
    """The file against an object's checksum; a COMPOSITE one is tried with every part size its count allows."""
    if not checksum.parts:
        return file_checksum(path, checksum.algorithm) == checksum.value
    candidates = part_sizes(path.stat().st_size, checksum.parts, part_size)
    return any(composite_checksum(path, checksum.algorithm, p) == checksum.value for p in candidates)


def _matches_checksum(
    path: Path, prefix: S3Uri, rel: str, account: str | None, part_size: int, etag: str
) -> str | None:
    """The file against the checksum of the object as listed with `etag` (`head_checksum`): the check's name when
    it matches, "" when not; None when the object has none, may not be read, or changed since the listing."""
    checksum = head_checksum(prefix, rel, account=account, etag=etag or None)
    if checksum is None:
        return None
    return checksum_name(checksum) + AFTER if matches_checksum(path, checksum, part_size) else ""


def same_as_s3(
    root: Path,
    rels: Iterable[str],
    objects: Mapping[str, S3Object],
    part_size: int,
    *,
    prefix: S3Uri | None = None,
    account: str | None = None,
    checksums: Mapping[str, Checksum] | None = None,
    checked: dict[str, str] | None = None,
) -> list[str]:
    """The rels whose local file holds the object's bytes (`matches_object`, with the object's checksum from
    `checksums` when there)."""
    known = checksums or {}
    return parallel_filter(
        lambda rel: matches_object(
            root / rel, objects[rel], part_size, prefix=prefix, rel=rel, account=account, checksum=known.get(rel),
            checked=checked,
        ),
        rels,
    )  # fmt: skip


@aws_task(name="delete-s3-objects", task_run_name="delete-objects {prefix}", tags=["aws-s3"])
def delete_s3_objects(prefix: S3Uri, rels: list[str], *, account: str | None = None) -> int:
    delete_keys(client(account), prefix.bucket, [prefix.prefix + rel for rel in rels])
    return len(rels)


@aws_task(name="abort-unfinished-uploads", task_run_name="abort-uploads {prefix}", tags=["aws-s3"])
def abort_unfinished_uploads(prefix: S3Uri, rels: list[str], *, account: str | None = None) -> int:
    """Abort unfinished multipart uploads of these files' keys: a killed run's (its parts are billed until
    aborted), or this run's after it failed. The keys are about to be (re)written by the transfer."""
    return abort_uploads(client(account), prefix.bucket, prefix.prefix, {prefix.prefix + rel for rel in rels})


@dataclass(frozen=True)
class UploadChecks:
    mismatches: list[str]
    checks: dict[str, str]  # rel → the check it passed (core/transfer_checks.py)


@aws_task(name="verify-s3-upload", task_run_name="verify-upload {dest}", tags=["aws-s3"])
def verify_upload(
    root: Path,
    dest: S3Uri,
    sizes: Mapping[str, int],
    *,
    part_size: int,
    expected: Mapping[str, str] | None = None,
    account: str | None = None,
) -> UploadChecks:
    """After an upload of these files (relative path → size): list the destination once and check each one's
    ETag against `expected` (ETags computed while uploading, `local_etag`). A file without an expected ETag, or
    whose ETag differs from it, is checked by `matches_object` (its checksum, else its ETag with every plausible
    part size). Under SSE-KMS no ETag matches: the small files' checksums are then fetched all at once
    (`kms_checksums`). Returns the files that failed, and the check each good one passed."""
    found = list_s3_tree.fn(dest, account=account, field="destination")
    expected = expected or {}
    present = [rel for rel, size in sizes.items() if rel in found and found[rel].size == size]
    unsettled = [rel for rel in present if expected.get(rel) != found[rel].etag]
    good = set(present) - set(unsettled)
    # Files of a part or more get one HEAD each in matches_object anyway (their checksum comes first there).
    small = [rel for rel in unsettled if sizes[rel] < part_size]
    checksums = kms_checksums.fn(dest, small, etags={rel: found[rel].etag for rel in small}, account=account)
    checked = dict.fromkeys(good, UPLOAD_ETAG)
    good |= set(
        same_as_s3(
            root, unsettled, found, part_size, prefix=dest, account=account, checksums=checksums, checked=checked
        )
    )
    return UploadChecks(sorted(rel for rel in sizes if rel not in good), checked)


# -- instances --------------------------------------------------------------------------------------------------
