"""transfer: move a folder between local disk, S3 and instances — resumable, verified, fast.

Runbook, every direction: check both ends → list both sides → plan (core: copy what is missing or changed by
size + checksum, skip the same, delete only with `delete`) → refuse before moving anything if the destination
lacks space or a name would escape it → (dry run stops here) → copy → verify checksums → place/delete → report.

Instance legs go through S3 and SSM only (no SSH, no open ports): the instance lists itself with a small stdlib
Python helper, the bytes travel through a staging prefix (the job's, `s3://B/trainctl/jobs/JOB/staging/…`, or
`--staging`), and the staging objects are deleted afterwards, failure or not. S3 ↔ instance needs no data
staging: the instance reads or writes the S3 side directly (s5cmd when the AMI has it, else the aws CLI).

IAM: the caller needs s3:ListBucket/GetObject/PutObject/DeleteObject on the buckets involved (and
s3:ListBucketMultipartUploads/AbortMultipartUpload to abort a killed run's unfinished uploads), plus
ec2:DescribeInstances and ssm:SendCommand/GetCommandInvocation/DescribeInstanceInformation for instance legs;
the instance profile needs the same S3 actions on the staging prefix and the S3 side.
"""

from __future__ import annotations

import contextvars
import json
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar, cast

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext

from core import progress
from core.errors import TrainctlError
from core.progress import BytesMoved, Finished, Publisher, Subscriber
from core.s3uri import S3Uri
from core.transfer import (
    PARTIAL_PREFIX,
    PLAIN_PYTHON_CRC_BYTES_PER_S,
    Kind,
    Location,
    SyncPlan,
    TransferError,
    TransferReport,
    TransferRequest,
    TransferVerifyError,
    check_all_safe,
    check_free_space,
    equal_size,
    expectation,
    human_bytes,
    plain_python_crc_bytes,
    plan_sync,
    receive_script,
    scan_script,
    send_script,
)
from core.transfer import check_script as instance_check_script
from flows.reporting import artifact_key, log, markdown_report, progress_artifact
from tasks import copy_engines, local_files
from tasks import transfer as tx
from tasks.s3 import delete_prefix, get_json, put_json
from tasks.ssm import run_command, wait_online

T = TypeVar("T")


class Tracker:
    """Counts files and bytes moved and publishes where the copy stands (`BytesMoved`, throttled to two a second),
    from whichever thread the engine reports on."""

    def __init__(self, subscribers: Iterable[Subscriber]) -> None:
        self.publisher = Publisher(subscribers, on_error=log)
        self.event = BytesMoved("planning", 0, 0, 0, 0)
        self._lock = threading.Lock()
        self._last = 0.0
        self._context = contextvars.copy_context()  # Prefect's run context, for reports from worker threads

    def start(self, phase: str, files: int, nbytes: int) -> None:
        self.event = BytesMoved(phase, 0, files, 0, nbytes)
        self._emit(force=True)

    def phase(self, phase: str) -> None:
        self.event = replace(self.event, phase=phase)
        self._emit(force=True)

    def __call__(self, files: int, nbytes: int) -> None:
        with self._lock:
            now = self.event
            self.event = replace(now, files_done=now.files_done + files, bytes_done=now.bytes_done + nbytes)
        self._emit()

    def finish(self) -> None:
        e = self.event
        summary = (
            f"done: {e.files_done}/{e.files_total} files, {human_bytes(e.bytes_done)}/{human_bytes(e.bytes_total)}"
        )
        self._context.copy().run(self.publisher.publish, Finished(summary))

    def _emit(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < 0.5:
            return
        self._last = now
        self._context.copy().run(self.publisher.publish, self.event)


def _call(task: Any, *args: Any, **kwargs: Any) -> Any:
    """A task run inside a flow (retries, UI), the plain function outside one (bench, tests, no Prefect API)."""
    if FlowRunContext.get() is not None:
        return task(*args, **kwargs)
    return task.fn(*args, **kwargs)


@dataclass
class Job:
    """One transfer in progress: the request, both ends, and the report being filled."""

    request: TransferRequest
    src: Location
    dst: Location
    report: TransferReport
    tracker: Tracker
    engine: str

    @property
    def account(self) -> str | None:
        return self.request.account

    @property
    def part(self) -> int:
        return self.request.part_size_mib * 1024 * 1024

    def filtered(self, files: dict[str, int]) -> dict[str, int]:
        return self.request.filters().apply(files)

    def planned(self, plan: SyncPlan, src: dict[str, int]) -> bool:
        """Record the plan; True when the transfer should go on (not a dry run)."""
        r = self.report
        r.files_source, r.bytes_source = len(src), sum(src.values())
        r.files_skipped = len(plan.skip)
        if self.request.dry_run:
            r.would_copy, r.would_delete = plan.copy, plan.delete
            return False
        self.tracker.start("copying", len(plan.copy), plan.copy_bytes)
        return True

    def copy(
        self,
        pairs: list[tuple[str, str, int]],
        *,
        upload: bool,
        landed: Callable[[int], None] | None = None,
    ) -> None:
        copy_engines.copy_pairs(
            pairs,
            engine=self.engine,
            account=self.account,
            concurrency=self.request.concurrency,
            part_mib=self.request.part_size_mib,
            upload=upload,
            progress=self.tracker,
            landed=landed,
        )


def _sizes(objects: dict[str, tx.S3Object]) -> dict[str, int]:
    return {rel: o.size for rel, o in objects.items()}


def _etags(objects: dict[str, tx.S3Object], rels: list[str]) -> dict[str, str]:
    """The listed ETags of these objects: a HEAD made later counts only while the object still has it."""
    return {rel: objects[rel].etag for rel in rels}


def _key_uri(prefix: S3Uri, rel: str) -> str:
    return f"s3://{prefix.bucket}/{prefix.prefix}{rel}"


# -- local ↔ S3 -------------------------------------------------------------------------------------------------


def _local_to_s3(job: Job) -> None:
    source = local_files.local_source(job.src)
    root, src = source.root, job.filtered(source.files)
    dest = cast(S3Uri, job.dst.s3)
    objects = _call(tx.list_s3_tree, dest, account=job.account, field="destination")
    dst = job.filtered(_sizes(objects))
    candidates = equal_size(src, dst)
    checksums = _call(tx.kms_checksums, dest, candidates, etags=_etags(objects, candidates), account=job.account)
    same = tx.same_as_s3(root, candidates, objects, job.part, prefix=dest, account=job.account, checksums=checksums)
    plan = plan_sync(src, dst, same, delete=job.request.delete)
    if not job.planned(plan, src):
        return
    with ThreadPoolExecutor(max_workers=2) as pool:
        # The ETags S3 should end up with, computed by two threads while s5cmd uploads (reads and MD5 release the
        # GIL), so checking the small files is one listing and never reads them a second time. Files of a part or
        # more are checked afterwards by the CRC64NVME S3 gives every new object (one HEAD and a CRC pass, ~10x
        # cheaper than the MD5 pass it replaces), by their ETag only if the object has no such checksum.
        small = [rel for rel in plan.copy if src[rel] < job.part]
        halves = (small[::2], small[1::2]) if job.request.verify else ()
        etags = [pool.submit(local_files.local_etags, root, half, job.part) for half in halves]
        folder, prefix = str(root), _key_uri(dest, "")  # plain strings: 10,000 Path joins cost 0.3 s
        pairs = [(f"{folder}/{rel}", prefix + rel, src[rel]) for rel in plan.copy]
        with _aborting_unfinished_uploads(job, dest, plan.copy):
            job.copy(pairs, upload=True)
        expected = {rel: etag for future in etags for rel, etag in future.result().items()}
    job.report.files_copied, job.report.bytes_copied = len(plan.copy), plan.copy_bytes
    if job.request.verify:
        job.tracker.phase("verifying")
        copied = {rel: src[rel] for rel in plan.copy}
        job.report.mismatches = _call(
            tx.verify_upload, root, dest, copied, part_size=job.part, expected=expected, account=job.account
        )
        job.report.verified = not job.report.mismatches
    if plan.delete and not job.report.mismatches:
        job.report.files_deleted = _call(tx.delete_s3_objects, dest, plan.delete, account=job.account)


@contextmanager
def _aborting_unfinished_uploads(job: Job, prefix: S3Uri, rels: list[str]) -> Iterator[None]:
    """Around an upload of `rels` into `prefix`: abort a killed earlier run's unfinished multipart uploads of those
    keys first, and this run's own if the copy fails. Best effort: an error is logged, never fatal."""

    def abort() -> None:
        try:
            job.report.uploads_aborted += _call(tx.abort_unfinished_uploads, prefix, rels, account=job.account)
        except TrainctlError as exc:
            log(
                f"unfinished multipart uploads under {prefix} were not checked/aborted ({exc}); S3 bills their "
                "parts until a lifecycle rule removes them (needs s3:ListBucketMultipartUploads, "
                "s3:AbortMultipartUpload)"
            )

    if rels:
        abort()
    try:
        yield
    except Exception:
        if rels:
            abort()
        raise


def _s3_source(job: Job) -> tuple[S3Uri, dict[str, tx.S3Object], dict[str, int]]:
    """The S3 source listed and filtered: missing bucket/prefix refused, escaping keys refused."""
    source = cast(S3Uri, job.src.s3)
    objects = _call(tx.list_s3_tree, source, account=job.account)
    if not objects:
        raise TransferError(f"source {source} has no objects", fix="Check the bucket and prefix (aws s3 ls)")
    src = job.filtered(_sizes(objects))
    check_all_safe(src, what="S3 object", shown=_key_uri(source, ""))
    return source, objects, src


def _download(
    job: Job,
    root: Path,
    rels: list[str],
    sizes: dict[str, int],
    fetch: Callable[[list[str], Path, Callable[[str], None]], None],
    good: Callable[[Path, str], bool],
) -> None:
    """Fetch into this run's partial folder; each file is checked and moved to its final name as soon as it lands
    (`fetch` calls `landed(rel)`), so a run killed half-way keeps every finished file and a re-run moves only the
    rest. Files a killed run left complete in its partial folder are checked and placed first, not copied again.
    """
    root.mkdir(parents=True, exist_ok=True)
    todo = _recover_partials(job, root, rels, sizes, good)

    def settle(partial: Path, rel: str) -> bool:
        path = partial / rel
        ok = path.is_file() and path.stat().st_size == sizes[rel] and (not job.request.verify or good(partial, rel))
        if ok:
            local_files.place(partial, root, [rel])
        return ok

    # Checking overlaps the copy: hashlib and file reads release the GIL, so 4 threads keep up with s5cmd.
    partial_folder = local_files.partial_folder(root, job.request.transfer_id)
    with partial_folder as partial, ThreadPoolExecutor(max_workers=4) as pool:
        pending: dict[str, Future[bool]] = {}
        try:

            def landed(rel: str) -> None:
                if rel not in pending:
                    pending[rel] = pool.submit(settle, partial, rel)

            fetch(todo, partial, landed)
        finally:
            # Even when the copy failed part-way, what did land is checked and placed before the folder goes.
            placed = {rel for rel, future in pending.items() if future.result()}
        # Files no engine event named (one archive unpacked, or an event missed): checked now.
        rest = [r for r in todo if r not in pending]
        placed |= set(local_files.parallel_filter(lambda rel: settle(partial, rel), rest))
    job.report.mismatches += sorted(set(todo) - placed)
    job.report.files_copied += len(placed)
    job.report.bytes_copied += sum(sizes[rel] for rel in placed)
    job.report.verified = job.request.verify and not job.report.mismatches


def _recover_partials(
    job: Job, root: Path, rels: list[str], sizes: dict[str, int], good: Callable[[Path, str], bool]
) -> list[str]:
    """Take complete files from partial folders that killed runs left in `root` (always checksummed, whatever
    `verify` says: a killed run proves nothing), place them, remove those folders. Returns what is still to copy."""
    todo = dict.fromkeys(rels)
    with local_files.stale_partials(root) as stale:
        for folder in stale:

            def complete(rel: str, folder: Path = folder) -> bool:
                path = folder / rel
                return path.is_file() and path.stat().st_size == sizes[rel] and good(folder, rel)

            found = local_files.parallel_filter(complete, todo)
            local_files.place(folder, root, found)
            for rel in found:
                del todo[rel]
            job.report.files_resumed += len(found)
            job.report.bytes_resumed += sum(sizes[rel] for rel in found)
        if stale:
            log(
                f"{len(stale)} partial folder(s) of killed runs in {root}: {job.report.files_resumed} complete file(s) "
                "placed from them, the folders removed"
            )
    return list(todo)


def _local_destination(job: Job) -> tuple[Path, dict[str, int]]:
    root = local_files.local_destination(job.dst)
    return root, job.filtered(local_files.scan_local(root)) if root.is_dir() else {}


def _s3_to_local(job: Job) -> None:
    source, objects, src = _s3_source(job)
    root, dst = _local_destination(job)
    candidates = equal_size(src, dst)
    # Under SSE-KMS every file is checked by its object's checksum: fetched here for all of them, 16 at a time,
    # instead of one HeadObject in each file's check.
    checked = list(src) if job.request.verify and not job.request.dry_run else candidates
    checksums = _call(tx.kms_checksums, source, checked, etags=_etags(objects, checked), account=job.account)
    same = tx.same_as_s3(root, candidates, objects, job.part, prefix=source, account=job.account, checksums=checksums)
    plan = plan_sync(src, dst, same, delete=job.request.delete)
    check_free_space(plan.copy_bytes, local_files.free_bytes(root), str(root))
    if not job.planned(plan, src):
        return

    def fetch(rels: list[str], partial: Path, landed: Callable[[str], None]) -> None:
        pairs = [(_key_uri(source, rel), str(partial / rel), src[rel]) for rel in rels]
        job.copy(pairs, upload=False, landed=lambda i: landed(rels[i]))

    def good(partial: Path, rel: str) -> bool:
        obj, checksum = objects[rel], checksums.get(rel)
        return tx.matches_object(
            partial / rel, obj, job.part, prefix=source, rel=rel, account=job.account, checksum=checksum
        )

    _download(job, root, plan.copy, src, fetch, good)
    _name_changed(job, source, objects)
    if plan.delete and not job.report.mismatches:
        job.report.files_deleted = local_files.delete_local(root, plan.delete)


def _name_changed(job: Job, source: S3Uri, objects: dict[str, tx.S3Object]) -> None:
    """Of the files that failed verification, those whose object changed in S3 since the listing (the copy took
    the new bytes, or a new size): said as such, so nobody looks for a broken disk."""
    if job.report.mismatches:
        etags = _etags(objects, job.report.mismatches)
        job.report.changed = _call(tx.changed_since_listing, source, etags, account=job.account)


# -- instance legs ----------------------------------------------------------------------------------------------


@dataclass
class Remote:
    """The instance end of a transfer and its staging prefix."""

    instance_id: str
    path: str
    staging: S3Uri

    def uri(self, name: str) -> S3Uri:
        return self.staging.join(name)


def _remote(job: Job, location: Location, fallback_bucket: str | None) -> Remote:
    instance = _call(tx.resolve_instance, location, account=job.account)
    _call(wait_online, instance.id, timeout_s=120, account=job.account)
    staging = job.request.staging_prefix(location.job or instance.job, fallback_bucket)
    job.report.instance_id, job.report.staging = instance.id, str(staging) + "/"
    return Remote(instance.id, location.path, staging)


def _ssm(job: Job, remote: Remote, script: list[str], what: str) -> str:
    result = _call(run_command, remote.instance_id, script, what=what, timeout_s=6 * 3600, account=job.account)
    return str(result.stdout)


def _scan(job: Job, remote: Remote, *, mode: str, expect: dict[str, Any] | None) -> dict[str, Any]:
    expect_uri = None
    if expect is not None:
        _call(put_json, str(remote.uri("expect.json")), expect, account=job.account)
        expect_uri = str(remote.uri("expect.json"))
    out = remote.uri("scan.json")
    _ssm(job, remote, scan_script(remote.path, str(out), mode=mode, expect_uri=expect_uri), f"list {remote.path}")  # type: ignore[arg-type]
    scan: dict[str, Any] = _call(get_json, str(out), account=job.account)
    if scan["exists"] and not scan["is_dir"]:
        raise TransferError(f"{remote.instance_id}:{remote.path} is a file, not a folder")
    if mode == "src" and not scan["exists"]:
        raise TransferError(f"source {remote.instance_id}:{remote.path} does not exist", fix="Check the path")
    return scan


# Above this, the wait for checksums computed in plain Python on the instance is worth a warning (~50 s).
_SLOW_CHECK_WARN_BYTES = 256 * 1024 * 1024


def _warn_if_checked_slowly(remote: Remote, scan: dict[str, Any], expect: dict[str, dict[str, object]]) -> None:
    """KMS objects are checked on the instance by their CRC64NVME/CRC32C: GB/s with awscrt, ~5 MB/s without."""
    nbytes = 0 if scan.get("fast_crc", True) else plain_python_crc_bytes(expect)
    if nbytes >= _SLOW_CHECK_WARN_BYTES:
        minutes = nbytes / PLAIN_PYTHON_CRC_BYTES_PER_S / 60
        log(
            f"{remote.instance_id} has no awscrt for python3: checking {human_bytes(nbytes)} of KMS-encrypted "
            f"objects by their CRC in plain Python takes about {minutes:.0f} min. `python3 -m pip install awscrt` "
            "on the instance (or an AMI that has it) makes it seconds; --no-verify skips the check after the copy",
            level=logging.WARNING,
        )


def _with_staging(job: Job, remote: Remote, body: Callable[[], None]) -> None:
    """Run the leg, then delete every staging object whatever happened (a failure keeps its own error)."""
    try:
        body()
    finally:
        try:
            job.report.staging_objects_removed = delete_prefix.fn(str(remote.staging) + "/", account=job.account)
        except Exception as exc:
            log(f"could not remove staging {remote.staging}/: {exc}; delete it by hand")


def _apply_result(job: Job, stdout: str, plan: SyncPlan, sizes: dict[str, int]) -> None:
    result = json.loads(stdout.strip().splitlines()[-1])
    bad = set(result["mismatches"])
    job.report.mismatches = sorted(bad)
    job.report.files_copied = result["placed"]
    job.report.bytes_copied = sum(sizes[rel] for rel in plan.copy if rel not in bad)
    job.report.files_deleted = result["deleted"]
    job.report.verified = job.request.verify and not bad


def _local_to_instance(job: Job) -> None:
    source = local_files.local_source(job.src)
    root, src = source.root, job.filtered(source.files)
    check_all_safe(src, what="local file", shown=f"{root}/")  # each becomes a path on the instance
    remote = _remote(job, job.dst, None)

    def body() -> None:
        md5s = local_files.md5_many(root, src)
        expect = {rel: expectation(size, md5=md5s[rel]) for rel, size in src.items()}
        scan = _scan(job, remote, mode="dst", expect=expect)
        dst = job.filtered({rel: v[0] for rel, v in scan["files"].items()})
        plan = plan_sync(src, dst, scan["match"], delete=job.request.delete)
        check_free_space(plan.copy_bytes * (2 if job.request.compress else 1), scan["free"], str(job.dst))
        if not job.planned(plan, src):
            return
        archive_uri, files_prefix = None, None
        if job.request.compress and plan.copy:
            archive_uri = remote.uri("bundle.tar.gz")
            with tempfile.TemporaryDirectory(prefix="trainctl-transfer-") as tmp:
                bundle = Path(tmp, "bundle.tar.gz")
                local_files.pack(root, plan.copy, bundle)
                copy_engines.put_file(bundle, archive_uri, account=job.account)
            job.tracker(len(plan.copy), plan.copy_bytes)
        else:
            files = remote.uri("files")
            pairs = [(str(root / rel), _key_uri(files, rel), src[rel]) for rel in plan.copy]
            job.copy(pairs, upload=True)
            files_prefix = f"s3://{files.bucket}/{files.prefix}"
        manifest = {"files": {r: expect[r] for r in plan.copy}, "delete": plan.delete, "verify": job.request.verify}
        _call(put_json, str(remote.uri("manifest.json")), manifest, account=job.account)
        job.tracker.phase("placing on the instance")
        script = receive_script(
            remote.path,
            f"{PARTIAL_PREFIX}{job.request.transfer_id}",
            str(remote.uri("manifest.json")),
            files_prefix=files_prefix,
            archive_uri=str(archive_uri) if archive_uri else None,
            part_mib=job.request.part_size_mib,
        )
        _apply_result(job, _ssm(job, remote, script, "receive files"), plan, src)

    _with_staging(job, remote, body)


def _instance_to_local(job: Job) -> None:
    remote = _remote(job, job.src, None)
    root, dst = _local_destination(job)

    def body() -> None:
        scan = _scan(job, remote, mode="src", expect=None)
        src = job.filtered({rel: v[0] for rel, v in scan["files"].items()})
        check_all_safe(src, what="instance file")
        md5s = {rel: scan["files"][rel][1] for rel in src}
        candidates = equal_size(src, dst)
        same = local_files.parallel_filter(lambda rel: local_files.md5_file(root / rel) == md5s[rel], candidates)
        plan = plan_sync(src, dst, same, delete=job.request.delete)
        check_free_space(plan.copy_bytes * (2 if job.request.compress else 1), local_files.free_bytes(root), str(root))
        if not job.planned(plan, src) or not plan.copy:
            _finish_local_delete(job, root, plan)
            return
        _call(put_json, str(remote.uri("select.json")), plan.copy, account=job.account)
        archive = remote.uri("bundle.tar.gz") if job.request.compress else None
        job.tracker.phase("sending from the instance")
        script = send_script(
            remote.path,
            str(remote.uri("select.json")),
            to_prefix=str(remote.uri("files")) + "/",
            archive_uri=str(archive) if archive else None,
            gz=True,
            part_mib=job.request.part_size_mib,
        )
        _ssm(job, remote, script, "send files")
        files = remote.uri("files")

        def fetch(rels: list[str], partial: Path, landed: Callable[[str], None]) -> None:
            if archive is None:
                pairs = [(_key_uri(files, rel), str(partial / rel), src[rel]) for rel in rels]
                job.copy(pairs, upload=False, landed=lambda i: landed(rels[i]))
                return
            # One archive holds every file: unpacked whole, then checked (no per-file events).
            bundle = partial / f"{PARTIAL_PREFIX}bundle.tar.gz"  # a name no copied file can have
            try:
                copy_engines.get_file(archive, bundle, account=job.account)
                local_files.unpack(bundle, partial)
            finally:
                bundle.unlink(missing_ok=True)
            job.tracker(len(plan.copy), plan.copy_bytes)

        def good(partial: Path, rel: str) -> bool:
            return local_files.md5_file(partial / rel) == md5s[rel]

        root.mkdir(parents=True, exist_ok=True)
        _download(job, root, plan.copy, src, fetch, good)
        _finish_local_delete(job, root, plan)

    _with_staging(job, remote, body)


def _finish_local_delete(job: Job, root: Path, plan: SyncPlan) -> None:
    if plan.delete and not job.request.dry_run and not job.report.mismatches:
        job.report.files_deleted = local_files.delete_local(root, plan.delete)


def _s3_to_instance(job: Job) -> None:
    source, objects, src = _s3_source(job)
    remote = _remote(job, job.dst, source.bucket)

    def body() -> None:
        expect = _object_expectations(job, source, objects, list(src))
        scan = _scan(job, remote, mode="dst", expect=expect)
        dst = job.filtered({rel: v[0] for rel, v in scan["files"].items()})
        plan = plan_sync(src, dst, scan["match"], delete=job.request.delete)
        check_free_space(plan.copy_bytes, scan["free"], str(job.dst))
        if not job.planned(plan, src):
            return
        files = {r: expect[r] for r in plan.copy}
        if job.request.verify:
            _warn_if_checked_slowly(remote, scan, files)
        manifest = {"files": files, "delete": plan.delete, "verify": job.request.verify}
        _call(put_json, str(remote.uri("manifest.json")), manifest, account=job.account)
        job.tracker.phase("instance reading S3")
        script = receive_script(
            remote.path,
            f"{PARTIAL_PREFIX}{job.request.transfer_id}",
            str(remote.uri("manifest.json")),
            files_prefix=f"s3://{source.bucket}/{source.prefix}",
            archive_uri=None,
            part_mib=job.request.part_size_mib,
        )
        _apply_result(job, _ssm(job, remote, script, "receive files"), plan, src)
        _name_changed(job, source, objects)

    _with_staging(job, remote, body)


def _object_expectations(
    job: Job, prefix: S3Uri, objects: dict[str, tx.S3Object], rels: list[str]
) -> dict[str, dict[str, object]]:
    """What an instance file must be to equal each object: its ETag, or, for KMS-encrypted objects (whose ETags
    are no MD5s), its checksum."""
    checksums = _call(tx.kms_checksums, prefix, rels, etags=_etags(objects, rels), account=job.account)
    return {
        rel: expectation(objects[rel].size, etag=objects[rel].etag, part_size=job.part, checksum=checksums.get(rel))
        for rel in rels
    }


def _instance_to_s3(job: Job) -> None:
    dest = cast(S3Uri, job.dst.s3)
    objects = _call(tx.list_s3_tree, dest, account=job.account, field="destination")
    remote = _remote(job, job.src, dest.bucket)

    def body() -> None:
        dst = job.filtered(_sizes(objects))
        expect = _object_expectations(job, dest, objects, list(dst))
        scan = _scan(job, remote, mode="src", expect=expect)
        src = job.filtered({rel: v[0] for rel, v in scan["files"].items()})
        plan = plan_sync(src, dst, scan["match"], delete=job.request.delete)
        if not job.planned(plan, src):
            return
        if plan.copy:
            _call(put_json, str(remote.uri("select.json")), plan.copy, account=job.account)
            job.tracker.phase("instance writing S3")
            script = send_script(
                remote.path,
                str(remote.uri("select.json")),
                to_prefix=f"s3://{dest.bucket}/{dest.prefix}",
                archive_uri=None,
                gz=False,
                part_mib=job.request.part_size_mib,
            )
            with _aborting_unfinished_uploads(job, dest, plan.copy):
                _ssm(job, remote, script, "send files")
        job.report.files_copied, job.report.bytes_copied = len(plan.copy), plan.copy_bytes
        if job.request.verify and plan.copy:
            job.tracker.phase("verifying")
            found = _call(tx.list_s3_tree, dest, account=job.account, field="destination")
            missing = [rel for rel in plan.copy if rel not in found or found[rel].size != src[rel]]
            present = [rel for rel in plan.copy if rel not in missing]
            want = _object_expectations(job, dest, found, present)
            # A single-part MD5 ETag is compared with the MD5 the scan took; the instance checks the rest (a
            # multipart ETag, or a KMS object's checksum) against its files.
            single = [rel for rel in present if "etag" in want[rel] and "-" not in found[rel].etag]
            bad = {rel for rel in single if found[rel].etag != scan["files"][rel][1]}
            remote_check = {rel: want[rel] for rel in present if rel not in single}
            if remote_check:
                _warn_if_checked_slowly(remote, scan, remote_check)
                _call(put_json, str(remote.uri("check.json")), remote_check, account=job.account)
                out = _ssm(job, remote, instance_check_script(remote.path, str(remote.uri("check.json"))), "verify")
                bad |= set(json.loads(out.strip().splitlines()[-1])["mismatches"])
            job.report.mismatches = sorted(bad | set(missing))
            job.report.verified = not job.report.mismatches
        if plan.delete and not job.report.mismatches:
            job.report.files_deleted = _call(tx.delete_s3_objects, dest, plan.delete, account=job.account)

    _with_staging(job, remote, body)


DIRECTIONS: dict[tuple[Kind, Kind], Callable[[Job], None]] = {
    (Kind.LOCAL, Kind.S3): _local_to_s3,
    (Kind.S3, Kind.LOCAL): _s3_to_local,
    (Kind.LOCAL, Kind.INSTANCE): _local_to_instance,
    (Kind.INSTANCE, Kind.LOCAL): _instance_to_local,
    (Kind.S3, Kind.INSTANCE): _s3_to_instance,
    (Kind.INSTANCE, Kind.S3): _instance_to_s3,
}


def run_transfer(request: TransferRequest, *, subscribers: Iterable[Subscriber] = ()) -> TransferReport:
    """The whole transfer, without Prefect bookkeeping of its own (the flow below adds artifacts). Returns the
    report; mismatches are in it (see `raise_on_mismatch`)."""
    started = time.monotonic()
    src, dst = request.source(), request.destination()
    engine = copy_engines.pick_engine(request.engine)
    compressed = request.compress and Kind.INSTANCE in (src.kind, dst.kind) and Kind.S3 not in (src.kind, dst.kind)
    report = TransferReport(
        src=request.src,
        dst=request.dst,
        direction=request.direction,
        engine=engine,
        dry_run=request.dry_run,
        compressed=compressed,
    )
    job = Job(request, src, dst, report, Tracker(subscribers), engine)
    DIRECTIONS[(src.kind, dst.kind)](job)
    report.seconds = round(time.monotonic() - started, 3)
    job.tracker.finish()
    return report


def raise_on_mismatch(report: TransferReport) -> TransferReport:
    if report.mismatches:
        raise TransferVerifyError(report)
    return report


@flow(name="transfer", flow_run_name="transfer-{request.transfer_id}", log_prints=True)
def transfer(request: TransferRequest) -> TransferReport:
    """Move SRC's tree to DST (see the module docstring); publishes a progress artifact and a report."""
    key = artifact_key("transfer", request.transfer_id)
    artifact = progress_artifact(key, f"{request.src} → {request.dst}")
    report = run_transfer(request, subscribers=[artifact, *progress.subscribers()])
    get_run_logger().info(
        "%s: %d copied (%s), %d skipped, %d deleted, %d mismatches in %.1f s",
        report.direction,
        report.files_copied,
        human_bytes(report.bytes_copied),
        report.files_skipped,
        report.files_deleted,
        len(report.mismatches),
        report.seconds,
    )
    rows = report.model_dump(exclude={"would_copy", "would_delete", "mismatches", "changed"})
    changed = set(report.changed)
    notes = [
        f"mismatch: {rel}" + (" (changed in S3 since the listing)" if rel in changed else "")
        for rel in report.mismatches[:50]
    ]
    if report.dry_run:
        notes += [f"would copy: {rel}" for rel in report.would_copy[:200]]
        notes += [f"would delete: {rel}" for rel in report.would_delete[:200]]
    markdown_report(
        artifact_key("transfer-report", request.transfer_id),
        f"transfer {request.src} → {request.dst}",
        rows,
        notes=notes,
    )
    return raise_on_mismatch(report)
