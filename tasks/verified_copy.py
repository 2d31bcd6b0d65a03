"""Big files (a part or more) between local disk and S3, checked while the bytes pass, never read a second time.

Download: parallel ranged GETs (IfMatch the listed ETag: an object replaced during the download fails its ranges
and is reported as changed, not verified), each written into the partial file with pwrite; the checksum S3 keeps
is computed as the bytes arrive (core/transfer_checks.py says which and how) and compared once the last range is
in. Upload: our own multipart upload with a FULL_OBJECT CRC64NVME: each part carries its CRC64NVME, computed from
the same read that sends it, and CompleteMultipartUpload the full-object CRC combined from them; S3 checks both
and refuses a mismatch (BadDigest), so no HEAD or re-read follows.

All ranges and parts of all files share one pool of `workers` threads (bounded, so s5cmd, copying the small
files at the same time, keeps its share of the machine). CRCs are awscrt's C functions (GB/s, GIL released);
MD5 is hashlib's (GIL released above 2 KiB).
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from awscrt import checksums
from botocore.exceptions import ClientError

from agent.transfer_helper import composite_of, multipart_etag
from core.s3uri import S3Uri
from core.transfer import Checksum, TransferError, normalize_etag
from core.transfer_checks import BLOCK, IN_FLIGHT, InflightCheck, inflight_check, range_size_for, split
from tasks.aws import translate
from tasks.s3 import client
from tasks.transfer import head_as_listed

Progress = Callable[[int, int], None]  # (files done, bytes done) since the last call

_CRC: dict[str, tuple[Callable[[bytes | memoryview, int], int], Callable[[int, int, int], int], int]] = {
    "CRC64NVME": (checksums.crc64nvme, checksums.combine_crc64nvme, 8),
    "CRC32": (checksums.crc32, checksums.combine_crc32, 4),
    "CRC32C": (checksums.crc32c, checksums.combine_crc32c, 4),
}
# Bytes read, written and hashed per call: each call hands the GIL over a few times, which costs far more than
# the work on a loaded machine (measured on 2 cores at load 20: 1 MiB reads spent most of their time waiting for
# it); a multiple of BLOCK.
_READ = 8 * BLOCK
# S3's answers to a GET whose IfMatch names an ETag the object no longer has, or to a GET of an object gone since.
_CHANGED = {"PreconditionFailed", "412", "NoSuchKey", "404"}


def _b64(crc: int, width: int) -> str:
    return base64.b64encode(crc.to_bytes(width, "big")).decode()


def _read_exact(body: Any, n: int) -> bytes:
    """Up to `n` bytes of a streaming body (fewer only at its end)."""
    data: bytes = body.read(n)
    if len(data) == n or not data:
        return data
    pieces, got = [data], len(data)
    while got < n:
        more: bytes = body.read(n - got)
        if not more:
            break
        pieces.append(more)
        got += len(more)
    return b"".join(pieces)


@dataclass(frozen=True)
class Verdict:
    """How a big file's download went: `check` names the in-flight check; `ok` None when it could not decide
    (the landed file is then checked the usual way); `changed` when S3 had other bytes than the listed ones."""

    check: str
    ok: bool | None
    changed: bool = False


# -- download ----------------------------------------------------------------------------------------------------


class _Ordered:
    """MD5 over ranges that complete out of order: each range's blocks wait until the ones before are hashed (by
    whichever thread finds the next one ready, outside the lock). A range may start only within `window` ranges of
    the next one to hash, which bounds the memory held."""

    def __init__(self, window: int) -> None:
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.next, self.window, self.draining = 0, window, False
        self.waiting: dict[int, list[bytes]] = {}
        self.turn = threading.Condition()

    def wait_turn(self, index: int) -> None:
        with self.turn:
            self.turn.wait_for(lambda: index < self.next + self.window)

    def put(self, index: int, blocks: list[bytes]) -> None:
        with self.turn:
            self.waiting[index] = blocks
            if self.draining:
                return
            self.draining = True
        while True:
            with self.turn:
                ready = self.waiting.pop(self.next, None)
                if ready is None:
                    self.draining = False
                    return
            for block in ready:
                self.md5.update(block)
            with self.turn:
                self.next += 1
                self.turn.notify_all()


@dataclass
class _Download:
    """One big file in flight: where it goes, what it must be, and what its ranges have computed so far."""

    rel: str
    key: str
    etag: str
    size: int
    path: Path
    check: InflightCheck | None = None
    fd: int = -1
    left: int = 0
    crcs: list[int] = field(default_factory=list)  # per BLOCK (crc, composite)
    md5s: list[list[bytes]] = field(default_factory=list)  # per range, its parts' MD5s (multipart-md5)
    ordered: _Ordered | None = None
    changed: bool = False
    error: BaseException | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def failed(self) -> bool:
        return self.changed or self.error is not None

    def verdict(self) -> bool | None:
        """Does what arrived equal what S3 keeps? None: the in-flight check cannot say (see module doc)."""
        check = self.check
        if check is None:
            return None
        if check.kind == "md5":
            assert self.ordered is not None
            return self.ordered.md5.hexdigest() == check.expected
        if check.kind == "multipart-md5":  # another part size may be the uploader's: then checked after landing
            return True if multipart_etag([d for digests in self.md5s for d in digests]) == check.expected else None
        _, combine, width = _CRC[check.algorithm]
        if check.kind == "crc":
            return _b64(_combined(self.crcs, self.size, combine), width) == check.expected
        for part in check.parts:
            per = part // BLOCK
            digests = [
                _combined(self.crcs[i : i + per], min(part, self.size - i * BLOCK), combine).to_bytes(width, "big")
                for i in range(0, len(self.crcs), per)
            ]
            if composite_of(digests, check.algorithm) == check.expected:
                return True
        return False


def _combined(crcs: list[int], length: int, combine: Callable[[int, int, int], int]) -> int:
    """The CRC of consecutive BLOCKs (the last may be short) from their own CRCs; `length`: their total size."""
    total = crcs[0]
    for i, crc in enumerate(crcs[1:], start=1):
        total = combine(total, crc, min(BLOCK, length - i * BLOCK))
    return total


def _get_range(s3: Any, bucket: str, job: _Download, index: int, offset: int, length: int) -> int:
    """GET one range of the object as listed (IfMatch), writing it at its offset and digesting it as it comes."""
    check, ordered = job.check, job.ordered
    if ordered is not None:
        ordered.wait_turn(index)
    kept: list[bytes] = []
    try:
        if job.failed:
            return 0
        extra = {"Range": f"bytes={offset}-{offset + length - 1}"} if length else {}
        with translate("s3:GetObject"):
            body = s3.get_object(Bucket=bucket, Key=job.key, IfMatch=f'"{job.etag}"', **extra)["Body"]
        md5 = hashlib.md5(usedforsecurity=False) if check is not None and check.kind == "multipart-md5" else None
        part = check.parts[0] if md5 is not None and check is not None else 0  # a range is whole parts then
        crc = _CRC[check.algorithm][0] if check is not None and check.kind in ("crc", "composite") else None
        done, digests = 0, []
        while done < length:
            want = min(_READ, length - done)
            chunk = _read_exact(body, min(want, part - (offset + done) % part) if part else want)
            if not chunk:
                raise TransferError(f"s3://{bucket}/{job.key}: the range at {offset} ended after {done} bytes")
            os.pwrite(job.fd, chunk, offset + done)
            if crc is not None:  # one CRC per BLOCK (ranges start on a BLOCK): combined per part or whole later
                view = memoryview(chunk)
                for at in range(0, len(chunk), BLOCK):
                    job.crcs[(offset + done + at) // BLOCK] = crc(view[at : at + BLOCK], 0)
            elif md5 is not None:  # one MD5 per part: a chunk never crosses a part's end
                md5.update(chunk)
                if (offset + done + len(chunk)) % part == 0 or done + len(chunk) == length:
                    digests.append(md5.digest())
                    md5 = hashlib.md5(usedforsecurity=False)
            elif ordered is not None:
                kept.append(chunk)
            done += len(chunk)
        if md5 is not None:
            job.md5s[index] = digests
        return done
    finally:
        if ordered is not None:
            ordered.put(index, [] if job.failed else kept)  # a failed range still lets the ones behind it end


def _start(prefix: S3Uri, job: _Download, part_size: int, known: Checksum | None, account: str | None) -> bool:
    """HEAD the object as listed (its checksum), choose the check, open the partial file. False: it changed."""
    if known is None:
        as_listed, known = head_as_listed(prefix, job.rel, account=account, etag=job.etag)
        if not as_listed:
            job.changed = True
            return False
    job.check = inflight_check(job.size, job.etag, known, part_size)
    job.path.parent.mkdir(parents=True, exist_ok=True)
    job.fd = os.open(job.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    return True


def download(
    prefix: S3Uri,
    files: list[tuple[str, str, int, Path]],
    *,
    account: str | None,
    part_size: int,
    workers: int,
    progress: Progress,
    landed: Callable[[str], None],
    verdicts: dict[str, Verdict],
    checksums_known: dict[str, Checksum] | None = None,
    largest_range: int = 16 * BLOCK,
) -> None:
    """Download each (relative key, listed ETag, size, local path) under `prefix`, checked in flight. Each file's
    verdict goes into `verdicts`, then `landed(rel)` is called (a failed file's partial file is removed first). An
    object changed since the listing is a failed verdict with `changed`; any other failure is raised once all files
    are done."""
    s3, known = client(account), checksums_known or {}
    errors: list[BaseException] = []
    finished = threading.Semaphore(0)

    def finish(job: _Download) -> None:
        try:
            if job.fd >= 0:
                os.close(job.fd)
            ok = False if job.failed else job.verdict()
            if ok is False:
                job.path.unlink(missing_ok=True)  # never placed, whatever `verify` says
            if job.error is not None and not job.changed:
                errors.append(job.error)
            name = job.check.name if job.check is not None else "none" + IN_FLIGHT
            verdicts[job.rel] = Verdict(name, ok, job.changed)
            progress(1, 0)
            landed(job.rel)
        finally:
            finished.release()

    def run_range(job: _Download, index: int, offset: int, length: int) -> None:
        try:
            progress(0, _get_range(s3, prefix.bucket, job, index, offset, length))
        except BaseException as exc:  # recorded per file; the other files go on
            job.changed |= getattr(exc, "code", "") in _CHANGED
            job.error = job.error or exc
        with job.lock:
            job.left -= 1
            last = job.left == 0
        if last:
            finish(job)

    def begin(job: _Download) -> None:
        try:
            started = _start(prefix, job, part_size, known.get(job.rel), account)
        except BaseException as exc:
            job.error, started = exc, False
        if not started:
            finish(job)
            return
        step = range_size_for(job.size, workers, largest_range)
        ranges = split(job.size, job.check.range_size(step) if job.check else step)
        job.left, job.crcs, job.md5s = len(ranges), [0] * -(-job.size // BLOCK), [[] for _ in ranges]
        if job.check is not None and job.check.kind == "md5":
            job.ordered = _Ordered(window=workers)  # at most `workers` ranges held, in flight or waiting
        for index, (offset, length) in enumerate(ranges):
            pool.submit(run_range, job, index, offset, length)

    jobs = [_Download(rel, prefix.prefix + rel, etag, size, path) for rel, etag, size, path in files]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="trainctl-get") as pool:
        for job in jobs:
            pool.submit(begin, job)
        for _ in jobs:  # ranges are submitted from the pool itself: it must not shut down before the last file
            finished.acquire()
    if errors:
        raise TransferError(f"{len(errors)} big file(s) failed to download: {errors[0]}", fix=_fix(errors[0]))


def _fix(exc: BaseException) -> str:
    return getattr(exc, "fix", "") or "Run the transfer again (finished files are not moved twice)"


# -- upload ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Uploaded:
    """An upload's outcome: the ETag S3 gave the object, or why S3 refused it (`refused`: BadDigest, or a
    checksum in the answer other than ours)."""

    etag: str = ""
    refused: str = ""


@contextmanager
def _aborted_on_failure(s3: Any, bucket: str, key: str, upload_id: str) -> Iterator[None]:
    try:
        yield
    except BaseException:
        with suppress(ClientError):  # the flow's abort_unfinished_uploads sweeps what is left
            s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        raise


def _send_part(s3: Any, target: S3Uri, upload_id: str, path: Path, number: int, offset: int, length: int) -> dict:
    """Read one part, CRC64NVME it from that same read, and send both: S3 refuses the part if they differ."""
    with path.open("rb") as f:
        data = os.pread(f.fileno(), length, offset)
    crc = _part_crc(data)
    with translate("s3:PutObject"):
        answer = s3.upload_part(
            Bucket=target.bucket, Key=target.key, UploadId=upload_id, PartNumber=number, Body=data,
            ChecksumCRC64NVME=_b64(crc, 8),
        )  # fmt: skip
    return {"PartNumber": number, "ETag": answer["ETag"], "ChecksumCRC64NVME": _b64(crc, 8), "crc": crc, "n": length}


def _part_crc(data: bytes) -> int:
    return checksums.crc64nvme(data)


def _upload_one(s3: Any, pool: ThreadPoolExecutor, path: Path, target: S3Uri, size: int, part: int) -> Uploaded:
    with translate("s3:PutObject"):
        upload_id = s3.create_multipart_upload(
            Bucket=target.bucket, Key=target.key, ChecksumAlgorithm="CRC64NVME", ChecksumType="FULL_OBJECT"
        )["UploadId"]
    with _aborted_on_failure(s3, target.bucket, target.key, upload_id):
        offsets = list(range(0, size, part)) or [0]
        futures = [
            pool.submit(_send_part, s3, target, upload_id, path, i, offset, min(part, size - offset))
            for i, offset in enumerate(offsets, start=1)
        ]
        parts = [future.result() for future in futures]
        whole = parts[0]["crc"]
        for p in parts[1:]:
            whole = checksums.combine_crc64nvme(whole, p["crc"], p["n"])
        listed = [{k: p[k] for k in ("PartNumber", "ETag", "ChecksumCRC64NVME")} for p in parts]
        with translate("s3:PutObject"):
            done = s3.complete_multipart_upload(
                Bucket=target.bucket, Key=target.key, UploadId=upload_id, MultipartUpload={"Parts": listed},
                ChecksumCRC64NVME=_b64(whole, 8), ChecksumType="FULL_OBJECT",
            )  # fmt: skip
    if done.get("ChecksumCRC64NVME") != _b64(whole, 8):
        return Uploaded(refused=f"S3 answered CRC64NVME {done.get('ChecksumCRC64NVME')}, ours is {_b64(whole, 8)}")
    return Uploaded(etag=normalize_etag(done["ETag"]))


def upload(
    files: list[tuple[str, Path, S3Uri, int]],
    *,
    account: str | None,
    part_size: int,
    workers: int,
    progress: Progress,
) -> dict[str, Uploaded]:
    """Upload each (name, local path, destination, size) as a FULL_OBJECT CRC64NVME multipart upload (see the
    module doc); files go side by side, their parts through one pool of `workers`. A refused upload (BadDigest)
    is aborted and returned as refused; any other failure aborts that upload and is raised once all are done."""
    s3 = client(account)
    results: dict[str, Uploaded] = {}
    errors: list[BaseException] = []
    with (
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="trainctl-part") as parts,
        ThreadPoolExecutor(max_workers=max(1, min(len(files), workers)), thread_name_prefix="trainctl-put") as each,
    ):

        def one(name: str, path: Path, target: S3Uri, size: int) -> None:
            try:
                results[name] = _upload_one(s3, parts, path, target, size, part_size)
            except BaseException as exc:
                if getattr(exc, "code", "") in ("BadDigest", "InvalidDigest", "InvalidRequest"):
                    results[name] = Uploaded(refused=f"S3 refused it: {exc}")
                else:
                    errors.append(exc)
            progress(1, size)

        for item in files:
            each.submit(one, *item)
    if errors:
        raise TransferError(f"{len(errors)} big file(s) failed to upload: {errors[0]}", fix=_fix(errors[0]))
    return results
