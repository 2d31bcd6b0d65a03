"""transfer: move a folder between local disk, S3 and instances — resumable, verified, fast.

Runbook, every direction: check both ends → list both sides → plan (core: copy what is missing or changed by
size + checksum, skip the same, delete only with `delete`) → refuse before moving anything if the destination
lacks space or a name would escape it → (dry run stops here) → copy → verify checksums → place/delete → report.
It is written once (`_runbook`) over three kinds of `Endpoint`: local, S3, and an instance (through staging).

Instance legs go through S3 and SSM only (no SSH, no open ports): the instance lists itself with a small stdlib
Python helper (agent/transfer_helper.py), the bytes travel through a staging prefix (the job's,
`s3://B/trainctl/jobs/JOB/staging/…`, or `--staging`), and the staging objects are deleted afterwards, failure or
not. S3 ↔ instance needs no data staging: the instance reads or writes the S3 side directly (s5cmd when the AMI
has it, else the aws CLI).

IAM: the caller needs s3:ListBucket/GetObject/PutObject/DeleteObject on the buckets involved (and
s3:ListBucketMultipartUploads/AbortMultipartUpload to abort a killed run's unfinished uploads), plus
ec2:DescribeInstances and ssm:SendCommand/GetCommandInvocation/DescribeInstanceInformation for instance legs;
the instance profile needs the same S3 actions on the staging prefix and the S3 side.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

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
from core.transfer_checks import BY_S3, UPLOAD_ETAG
from core.transfer_checks import summary as checks_summary
from flows.reporting import artifact_key, log, markdown_report, progress_artifact
from tasks import copy_engines, local_files, verified_copy
from tasks import transfer as transfer_tasks
from tasks.ec2_instances import resolve_instance
from tasks.s3 import delete_prefix, get_json, put_json
from tasks.ssm import run_command, wait_online
from tasks.transfer import S3Object

Expectations = dict[str, dict[str, object]]  # relative path → what the file must be (core.transfer.expectation)


class Tracker:
    """Counts files and bytes moved and publishes where the copy stands (`BytesMoved`, throttled to two a second),
    from whichever thread the engine reports on. A report is two additions under a lock: the event is built only
    when published (10,000 files report 10,000 times)."""

    def __init__(self, subscribers: Iterable[Subscriber]) -> None:
        self.publisher = Publisher(subscribers, on_error=log)
        self._phase, self._files, self._bytes, self._files_done, self._bytes_done = "planning", 0, 0, 0, 0
        self._lock = threading.Lock()
        self._last = 0.0
        self._context = contextvars.copy_context()  # Prefect's run context, for reports from worker threads

    @property
    def event(self) -> BytesMoved:
        return BytesMoved(self._phase, self._files_done, self._files, self._bytes_done, self._bytes)

    def start(self, phase: str, files: int, nbytes: int) -> None:
        self._phase, self._files, self._bytes, self._files_done, self._bytes_done = phase, files, nbytes, 0, 0
        self._emit(force=True)

    def phase(self, phase: str) -> None:
        self._phase = phase
        self._emit(force=True)

    def __call__(self, files: int, nbytes: int) -> None:
        with self._lock:
            self._files_done += files
            self._bytes_done += nbytes
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


def _run_task(task: Any, *args: Any, **kwargs: Any) -> Any:
    """A task run inside a flow (retries, UI); the plain function outside one (bench, tests, no Prefect API)."""
    if FlowRunContext.get() is not None:
        return task(*args, **kwargs)
    return task.fn(*args, **kwargs)


@dataclass
class TransferRun:
    """One transfer in progress: the request, the report being filled, the progress and the copy engine."""

    request: TransferRequest
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
        self, pairs: list[tuple[str, str, int]], *, upload: bool, landed: Callable[[int], None] | None = None
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


def _key_uri(prefix: S3Uri, rel: str) -> str:
    return f"s3://{prefix.bucket}/{prefix.prefix}{rel}"


@dataclass(frozen=True)
class Wire:
    """The S3 prefix the bytes travel through: the S3 end itself (`final`), or the instance leg's staging prefix,
    where they travel as files or, compressed, as one archive."""

    prefix: S3Uri
    final: bool
    archive: S3Uri | None = None

    def uri(self, rel: str) -> str:
        return _key_uri(self.prefix, rel)

    @property
    def url(self) -> str:
        """The prefix as `s3://bucket/prefix/`, the form the copy commands take."""
        return f"s3://{self.prefix.bucket}/{self.prefix.prefix}"


# -- the runbook ------------------------------------------------------------------------------------------------


def _runbook(run: TransferRun, src: Endpoint, dst: Endpoint) -> None:
    """Every direction: list both sides → compare → plan → check space → copy → verify → delete. The side that
    can read the bytes compares (the destination, or the source when the destination is S3) against what the
    other side says its files are."""
    src.list_files(run)
    dst.list_files(run)
    with src.opened(run), dst.opened(run):
        matcher, reference = (src, dst) if dst.kind is Kind.S3 else (dst, src)
        reference.scan(run)
        same = matcher.compare(run, reference)
        plan = plan_sync(src.files, dst.files, same, delete=run.request.delete)
        free = dst.free_bytes()
        if free is not None:
            check_free_space(plan.copy_bytes * (2 if run.report.compressed else 1), free, dst.where)
        if not run.planned(plan, src.files):
            return
        wire = dst.wire(run, plan) or src.wire(run, plan) or _staging_wire(run, src, dst, plan)
        uploading = dst.kind is Kind.S3 and plan.copy
        with _aborting_unfinished_uploads(run, wire.prefix, plan.copy) if uploading else nullcontext():
            src.send(run, plan, wire)
        dst.receive(run, plan, wire, src)
        if run.request.verify and dst.kind is Kind.S3:
            src.verify_landed(run, plan, cast(S3Endpoint, dst))
        if plan.delete and not run.report.mismatches:
            dst.delete(run, plan)
        src.explain_mismatches(run)


def _staging_wire(run: TransferRun, src: Endpoint, dst: Endpoint, plan: SyncPlan) -> Wire:
    """local ↔ instance: through the instance's staging prefix, as files or (compressed) one archive."""
    instance = cast(InstanceEndpoint, src if src.kind is Kind.INSTANCE else dst)
    archive = instance.uri("bundle.tar.gz") if run.report.compressed and plan.copy else None
    return Wire(instance.uri("files"), final=False, archive=archive)


@contextmanager
def _aborting_unfinished_uploads(run: TransferRun, prefix: S3Uri, rels: list[str]) -> Iterator[None]:
    """Around an upload of `rels` into `prefix`: abort a killed earlier run's unfinished multipart uploads of those
    keys first, and this run's own if the copy fails. Best effort: an error is logged, never fatal."""

    def abort() -> None:
        try:
            run.report.uploads_aborted += _run_task(
                transfer_tasks.abort_unfinished_uploads, prefix, rels, account=run.account
            )
        except TrainctlError as exc:
            log(
                f"unfinished multipart uploads under {prefix} were not checked/aborted ({exc}); S3 bills their "
                "parts until a lifecycle rule removes them (needs s3:ListBucketMultipartUploads, "
                "s3:AbortMultipartUpload)"
            )

    abort()
    try:
        yield
    except Exception:
        abort()
        raise


# -- endpoints --------------------------------------------------------------------------------------------------


class Endpoint:
    """One end of a transfer: local, S3 or an instance (through S3 and SSM). The runbook asks each end, in order,
    to list itself, open (an instance: found, online, its staging removed afterwards), compare or serve as the
    reference the other end compares with, say its free space, send or receive the planned files, verify and
    delete. The defaults do nothing: what an end lacks it does not need."""

    kind: Kind
    where: str
    files: dict[str, int]  # relative path → size, filtered, once listed

    def __init__(self, location: Location, *, source: bool) -> None:
        self.location, self.source, self.where, self.files = location, source, str(location), {}

    def list_files(self, run: TransferRun) -> None:
        """Before anything is opened: list (and refuse what cannot be transferred)."""

    def opened(self, run: TransferRun) -> AbstractContextManager[None]:
        return nullcontext()

    def scan(self, run: TransferRun) -> None:
        """As the reference of the comparison, once opened (an instance lists itself here)."""

    def compare(self, run: TransferRun, reference: Endpoint) -> list[str]:
        """The files here that equal the reference's (size and checksum)."""
        raise NotImplementedError(f"{self.kind} ends are compared by the other end")

    def file_matches(self, run: TransferRun, path: Path, rel: str) -> bool:
        """Does the local file at `path` hold this end's `rel`?"""
        raise NotImplementedError

    def prepare(self, run: TransferRun, candidates: list[str]) -> None:
        """Before `file_matches` is asked about the candidates."""

    def expectations(self, run: TransferRun, rels: list[str]) -> Expectations:
        """What a file must be to equal each of these (for the instance helper)."""
        raise NotImplementedError

    def free_bytes(self) -> int | None:
        return None

    def wire(self, run: TransferRun, plan: SyncPlan) -> Wire | None:
        """The S3 prefix the bytes travel through when this end is S3."""
        return None

    def send(self, run: TransferRun, plan: SyncPlan, wire: Wire) -> None:
        """Put the planned files into the wire."""

    def receive(self, run: TransferRun, plan: SyncPlan, wire: Wire, src: Endpoint) -> None:
        """Take the planned files from the wire, each checked against `src` and placed (or reported)."""

    def verify_landed(self, run: TransferRun, plan: SyncPlan, dst: S3Endpoint) -> None:
        """After an upload into the S3 destination: does each object hold this end's file?"""
        raise NotImplementedError

    def delete(self, run: TransferRun, plan: SyncPlan) -> None:
        """Delete what the plan says (only with `delete`, and only without mismatches)."""

    def explain_mismatches(self, run: TransferRun) -> None:
        """Say what this end knows about the files that failed verification."""


def _object_expectations(
    run: TransferRun, prefix: S3Uri, objects: dict[str, S3Object], rels: list[str]
) -> Expectations:
    """What an instance file must be to equal each object: its ETag, or, for KMS-encrypted objects (whose ETags
    are no MD5s), its checksum."""
    etags = {rel: objects[rel].etag for rel in rels}
    checksums = _run_task(transfer_tasks.kms_checksums, prefix, rels, etags=etags, account=run.account)
    return {
        rel: expectation(objects[rel].size, etag=objects[rel].etag, part_size=run.part, checksum=checksums.get(rel))
        for rel in rels
    }


class S3Endpoint(Endpoint):
    """An S3 prefix. It cannot read bytes itself: the other end compares with its listing (ETags) and, for
    KMS-encrypted objects, their checksums."""

    kind = Kind.S3

    def __init__(self, location: Location, *, source: bool) -> None:
        super().__init__(location, source=source)
        self.prefix = cast(S3Uri, location.s3)
        self.objects: dict[str, S3Object] = {}
        self.checksums: dict[str, Any] = {}
        self.checked: dict[str, str] = {}  # rel → the check its file last passed (file_matches)

    def list_files(self, run: TransferRun) -> None:
        field = "source" if self.source else "destination"
        self.objects = _run_task(transfer_tasks.list_s3_tree, self.prefix, account=run.account, field=field)
        self.files = run.filtered({rel: o.size for rel, o in self.objects.items()})
        if self.source:
            if not self.objects:
                raise TransferError(
                    f"source {self.prefix} has no objects", fix="Check the bucket and prefix (aws s3 ls)"
                )
            check_all_safe(self.files, what="S3 object", shown=_key_uri(self.prefix, ""))

    def _etags(self, rels: list[str]) -> dict[str, str]:
        """The listed ETags: a HEAD made later counts only while the object still has it."""
        return {rel: self.objects[rel].etag for rel in rels}

    def prepare(self, run: TransferRun, candidates: list[str]) -> None:
        # Downloading under SSE-KMS, every file is checked by its object's checksum: fetched here for all of them,
        # 16 at a time, instead of one HeadObject in each file's check.
        verifying = self.source and run.request.verify and not run.request.dry_run
        rels = list(self.files) if verifying else candidates
        kms = transfer_tasks.kms_checksums
        self.checksums = _run_task(kms, self.prefix, rels, etags=self._etags(rels), account=run.account)

    def file_matches(self, run: TransferRun, path: Path, rel: str) -> bool:
        return transfer_tasks.matches_object(
            path,
            self.objects[rel],
            run.part,
            prefix=self.prefix,
            rel=rel,
            account=run.account,
            checksum=self.checksums.get(rel),
            checked=self.checked,
        )

    def expectations(self, run: TransferRun, rels: list[str]) -> Expectations:
        return _object_expectations(run, self.prefix, self.objects, rels)

    def wire(self, run: TransferRun, plan: SyncPlan) -> Wire:
        return Wire(self.prefix, final=True)  # the other end reads or writes it directly

    def receive(self, run: TransferRun, plan: SyncPlan, wire: Wire, src: Endpoint) -> None:
        run.report.files_copied, run.report.bytes_copied = len(plan.copy), plan.copy_bytes

    def delete(self, run: TransferRun, plan: SyncPlan) -> None:
        deleted = _run_task(transfer_tasks.delete_s3_objects, self.prefix, plan.delete, account=run.account)
        run.report.files_deleted = deleted

    def explain_mismatches(self, run: TransferRun) -> None:
        """Of the files that failed verification, those whose object changed in S3 since the listing (the copy
        took the new bytes, or a new size): said as such, so nobody looks for a broken disk."""
        if self.source and run.report.mismatches:
            etags = self._etags(run.report.mismatches)
            changed = _run_task(transfer_tasks.changed_since_listing, self.prefix, etags, account=run.account)
            run.report.changed = changed


class LocalEndpoint(Endpoint):
    """A local folder (a single file as a source is a folder of one). Downloads land in a partial folder and each
    file is placed under its final name once checked."""

    kind = Kind.LOCAL

    def __init__(self, location: Location, *, source: bool, toward: Kind) -> None:
        super().__init__(location, source=source)
        self.toward = toward
        self.root = Path(location.path)
        self.expected_etags: dict[str, str] = {}
        self.uploaded: dict[str, verified_copy.Uploaded] = {}  # big files, by our checked multipart upload

    def list_files(self, run: TransferRun) -> None:
        if self.source:
            found = local_files.local_source(self.location)
            self.root, self.files = found.root, run.filtered(found.files)
            if self.toward is Kind.INSTANCE:  # each name becomes a path on the instance
                check_all_safe(self.files, what="local file", shown=f"{self.root}/")
        else:
            self.root = local_files.local_destination(self.location)
            self.files = run.filtered(local_files.scan_local(self.root)) if self.root.is_dir() else {}
            self.where = str(self.root)

    def compare(self, run: TransferRun, reference: Endpoint) -> list[str]:
        candidates = equal_size(reference.files, self.files)
        reference.prepare(run, candidates)
        return local_files.parallel_filter(lambda rel: reference.file_matches(run, self.root / rel, rel), candidates)

    def expectations(self, run: TransferRun, rels: list[str]) -> Expectations:
        md5s = local_files.md5_many(self.root, rels)
        return {rel: expectation(self.files[rel], md5=md5s[rel]) for rel in rels}

    def free_bytes(self) -> int:
        return local_files.free_bytes(self.root)

    def send(self, run: TransferRun, plan: SyncPlan, wire: Wire) -> None:
        if wire.archive is not None:
            with tempfile.TemporaryDirectory(prefix="trainctl-transfer-") as tmp:
                bundle = Path(tmp, "bundle.tar.gz")
                local_files.pack(self.root, plan.copy, bundle)
                copy_engines.put_file(bundle, wire.archive, account=run.account)
            run.tracker(len(plan.copy), plan.copy_bytes)
            return
        with ThreadPoolExecutor(max_workers=2) as pool:
            # Into the S3 destination: the ETags S3 should end up with, computed by two threads while s5cmd uploads
            # (reads and MD5 release the GIL), so checking the small files is one listing and never reads them a
            # second time. Files of a part or more are checked afterwards by the CRC64NVME S3 gives every new
            # object (one HEAD and a CRC pass, ~10x cheaper than the MD5 pass it replaces), by their ETag only if
            # the object has no such checksum.
            small = [rel for rel in plan.copy if self.files[rel] < run.part]
            halves = (small[::2], small[1::2]) if run.request.verify and wire.final else ()
            etags = [pool.submit(local_files.local_etags, self.root, half, run.part) for half in halves]
            folder, prefix = str(self.root), wire.url  # plain strings: 10,000 Path joins cost 0.3 s
            big = _big_uploads(run, self.root, plan.copy, self.files, wire) if wire.final else None
            rest = [rel for rel in plan.copy if big is None or rel not in big.names]
            try:
                run.copy([(f"{folder}/{rel}", prefix + rel, self.files[rel]) for rel in rest], upload=True)
            finally:
                self.uploaded = big.result() if big is not None else {}
            self.expected_etags = {rel: etag for future in etags for rel, etag in future.result().items()}
            self.expected_etags |= {rel: done.etag for rel, done in self.uploaded.items() if done.etag}
            run.report.mismatches = sorted(rel for rel, done in self.uploaded.items() if done.refused)

    def receive(self, run: TransferRun, plan: SyncPlan, wire: Wire, src: Endpoint) -> None:
        if not plan.copy and not wire.final:
            return  # nothing was staged

        def fetch(rels: list[str], partial: Path, landed: Callable[[str], None]) -> None:
            if not rels:
                return
            if wire.archive is None:
                pairs = [(wire.uri(rel), str(partial / rel), src.files[rel]) for rel in rels]
                run.copy(pairs, upload=False, landed=lambda i: landed(rels[i]))
                return
            # One archive holds every file: unpacked whole, then checked (no per-file events).
            bundle = partial / f"{PARTIAL_PREFIX}bundle.tar.gz"  # a name no copied file can have
            try:
                copy_engines.get_file(wire.archive, bundle, account=run.account)
                local_files.unpack(bundle, partial)
            finally:
                bundle.unlink(missing_ok=True)
            run.tracker(len(plan.copy), plan.copy_bytes)

        inflight: dict[str, verified_copy.Verdict] = {}
        from_s3 = wire.final and isinstance(src, S3Endpoint)
        fetching = _with_big_downloads(run, cast(S3Endpoint, src), fetch, inflight) if from_s3 else fetch

        def matches(path: Path, rel: str) -> bool:
            verdict = inflight.get(rel)  # a big file checked as its bytes arrived is not read again
            return verdict.ok if verdict is not None and verdict.ok is not None else src.file_matches(run, path, rel)

        _download(run, self.root, plan.copy, src.files, fetching, matches)
        if isinstance(src, S3Endpoint):
            names = {rel: verdict.check for rel, verdict in inflight.items() if verdict.ok}
            _count_checks(run, plan.copy, src.checked | names)

    def verify_landed(self, run: TransferRun, plan: SyncPlan, dst: S3Endpoint) -> None:
        run.tracker.phase("verifying")
        copied = {rel: self.files[rel] for rel in plan.copy}
        result = _run_task(
            transfer_tasks.verify_upload,
            self.root,
            dst.prefix,
            copied,
            part_size=run.part,
            expected=self.expected_etags,
            account=run.account,
        )
        mismatches = sorted(set(result.mismatches) | set(run.report.mismatches))
        run.report.mismatches, run.report.verified = mismatches, not mismatches
        # A big file whose object still has the ETag our upload got passed S3's own check of its CRC64NVME.
        by_s3 = {rel: BY_S3 for rel, done in self.uploaded.items() if result.checks.get(rel) == UPLOAD_ETAG}
        _count_checks(run, plan.copy, result.checks | by_s3)

    def delete(self, run: TransferRun, plan: SyncPlan) -> None:
        run.report.files_deleted = local_files.delete_local(self.root, plan.delete)


# Threads of the big-file engine (ranged GETs, parts): bounded, so s5cmd copying the small files at the same time
# keeps its share of the machine; s5cmd's own per-file concurrency. 5 did better than 8 in every case measured
# (below, in _with_big_downloads).
_BIG_WORKERS = 5
# Ranged GETs of up to 32 MiB (a whole number of parts for a multipart MD5 ETag): on a quiet 2-core machine against
# SeaweedFS, 1 GiB with 5 threads went at 162-469 MB/s in 8 MiB ranges, 351-927 in 16 MiB, 440-998 in 32 MiB,
# against s5cmd's 841-1013 (each request costs a round of Python and the GIL; CRCs stay per MiB whatever the range).
_LARGEST_RANGE = 32 * 1024 * 1024


def _count_checks(run: TransferRun, rels: list[str], names: dict[str, str]) -> None:
    """TransferReport.checks: how many of the copied files (not the mismatches) passed each check."""
    bad = set(run.report.mismatches)
    for rel in rels:
        name = names.get(rel)
        if name is not None and rel not in bad:
            run.report.checks[name] = run.report.checks.get(name, 0) + 1


def _with_big_downloads(
    run: TransferRun,
    src: S3Endpoint,
    fetch: Callable[[list[str], Path, Callable[[str], None]], None],
    verdicts: dict[str, verified_copy.Verdict],
) -> Callable[[list[str], Path, Callable[[str], None]], None]:
    """`fetch` with the files of a part or more taken by our own engine (tasks/verified_copy.py: parallel ranged
    GETs, the object's checksum computed as the bytes arrive), side by side with `fetch` copying the rest.

    Measured (issue 18: SeaweedFS `weed mini`, one 1 GiB object, MB/s, best of 3 interleaved rounds, on 2 cores
    shared by five engineers at load 15-30, so the figures moved 2-5x from run to run):
    - full-object CRC64NVME: ours 335-625 (50 MiB ranges, 5-8 threads), s5cmd (unverified) 293-541; another run
      at load 25-30: ours 74, s5cmd then a CRC pass 283, s5cmd 412;
    - the AWS CRT S3 client (awscrt.s3.S3Client, ranged GETs into a file, validate_response) 83-206: below ours
      in every run, and it cannot check a full-object checksum from ranges; not used;
    - no checksum, MD5 ETag (one part / 21 parts): ours 50-92 / 38-90, s5cmd then an MD5 pass 127-149 / 106-113:
      MD5 runs at ~300 MB/s on one of these loaded cores and Python threads wait for the GIL far longer than Go's.
    Kept: ours, the only one that checks as it copies (no second read of a big file in the common cases, a
    replaced object caught by IfMatch). On a quiet machine (32 MiB ranges): into tmpfs it went at 970-1,250 MB/s
    run after run, at s5cmd's speed; into ext4 it alternates between that and 200-460 MB/s from one run to the
    next (preallocating the file, a sync before, or glibc's mmap threshold made no difference), a cause not yet
    found that s5cmd writing to the same disk does not show."""

    def fetch_both(rels: list[str], partial: Path, landed: Callable[[str], None]) -> None:
        big = [rel for rel in rels if src.files[rel] >= run.part]
        if not big:
            fetch(rels, partial, landed)
            return
        files = [(rel, src.objects[rel].etag, src.files[rel], partial / rel) for rel in big]
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="trainctl-big") as side:
            future = side.submit(
                verified_copy.download, src.prefix, files, account=run.account, part_size=run.part,
                workers=_BIG_WORKERS, progress=run.tracker, landed=landed, verdicts=verdicts,
                checksums_known=src.checksums, largest_range=max(run.part, _LARGEST_RANGE),
            )  # fmt: skip
            try:
                fetch([rel for rel in rels if src.files[rel] < run.part], partial, landed)
            finally:
                future.result()

    return fetch_both


@dataclass
class _BigUploads:
    names: set[str]
    future: Future[dict[str, verified_copy.Uploaded]]
    pool: ThreadPoolExecutor

    def result(self) -> dict[str, verified_copy.Uploaded]:
        try:
            return self.future.result()
        finally:
            self.pool.shutdown()


def _big_uploads(
    run: TransferRun, root: Path, rels: list[str], sizes: dict[str, int], wire: Wire
) -> _BigUploads | None:
    """Start uploading the files of a part or more with our own checked multipart upload (tasks/verified_copy.py:
    S3 verifies the CRC64NVME we computed while reading them), beside the engine that copies the rest."""
    big = [rel for rel in rels if sizes[rel] >= run.part]
    if not big:
        return None
    files = [(rel, root / rel, S3Uri(wire.prefix.bucket, wire.prefix.prefix + rel), sizes[rel]) for rel in big]
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trainctl-big")
    future = pool.submit(
        verified_copy.upload, files, account=run.account, part_size=run.part, workers=_BIG_WORKERS,
        progress=run.tracker,
    )  # fmt: skip
    return _BigUploads(set(big), future, pool)


def _download(
    run: TransferRun,
    root: Path,
    rels: list[str],
    sizes: dict[str, int],
    fetch: Callable[[list[str], Path, Callable[[str], None]], None],
    matches: Callable[[Path, str], bool],
) -> None:
    """Fetch into this run's partial folder; each file is checked and moved to its final name soon after it lands
    (`fetch` calls `landed(rel)`; `_LandedBatches`), so a run killed half-way keeps every finished file and a re-run
    moves only the rest. Files a killed run left complete in its partial folder (landed, not yet placed) are checked
    and placed first, not copied again."""
    root.mkdir(parents=True, exist_ok=True)
    todo = _recover_partials(run, root, rels, sizes, matches)

    def place_complete(partial: Path, batch: list[str]) -> list[str]:
        folder, verify = str(partial), run.request.verify
        ok = [rel for rel in batch if _complete(f"{folder}/{rel}", sizes[rel])]
        if verify:
            ok = [rel for rel in ok if matches(partial / rel, rel)]
        local_files.place(partial, root, ok)
        return ok

    # Checking overlaps the copy: hashlib and file reads release the GIL, so 4 threads keep up with s5cmd.
    partial_folder = local_files.partial_folder(root, run.request.transfer_id)
    with partial_folder as partial, ThreadPoolExecutor(max_workers=4) as pool:
        batches = _LandedBatches(pool, lambda batch: place_complete(partial, batch), sizes)
        try:
            fetch(todo, partial, batches.landed)
        finally:
            # Even when the copy failed part-way, what did land is checked and placed before the folder goes.
            placed = batches.placed()
        # Files no engine event named (one archive unpacked, or an event missed): checked now.
        rest = [r for r in todo if r not in batches.seen]
        chunks = [rest[i : i + _BATCH_FILES] for i in range(0, len(rest), _BATCH_FILES)]
        placed |= {rel for ok in pool.map(lambda chunk: place_complete(partial, chunk), chunks) for rel in ok}
    run.report.mismatches += sorted(set(todo) - placed)
    run.report.files_copied += len(placed)
    run.report.bytes_copied += sum(sizes[rel] for rel in placed)
    run.report.verified = run.request.verify and not run.report.mismatches


def _complete(path: str, size: int) -> bool:
    """A regular file of `size` bytes (one stat, no Path object: this runs once per file)."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == size


# Landed files are checked and placed in batches: a hand-off to a thread costs about what checking a 10 KiB file
# does. A batch goes at 64 files or 4 MiB, so a big file is checked as soon as it lands.
_BATCH_FILES, _BATCH_BYTES = 64, 4 * 1024 * 1024


class _LandedBatches:
    """The files a copy engine reports landed (from its thread), handed to `check` in batches on `pool`; `check`
    returns the ones it placed."""

    def __init__(
        self, pool: ThreadPoolExecutor, check: Callable[[list[str]], list[str]], sizes: dict[str, int]
    ) -> None:
        self.pool, self.check, self.sizes = pool, check, sizes
        self.seen: set[str] = set()
        self._batch: list[str] = []
        self._bytes = 0
        self._futures: list[Future[list[str]]] = []
        self._lock = threading.Lock()

    def landed(self, rel: str) -> None:
        with self._lock:
            if rel in self.seen:
                return
            self.seen.add(rel)
            self._batch.append(rel)
            self._bytes += self.sizes[rel]
            if len(self._batch) >= _BATCH_FILES or self._bytes >= _BATCH_BYTES:
                self._flush()

    def _flush(self) -> None:
        if self._batch:
            self._futures.append(self.pool.submit(self.check, self._batch))
            self._batch, self._bytes = [], 0

    def placed(self) -> set[str]:
        """Once the engine is done: every landed file checked; the ones placed."""
        with self._lock:
            self._flush()
        return {rel for future in self._futures for rel in future.result()}


def _recover_partials(
    run: TransferRun, root: Path, rels: list[str], sizes: dict[str, int], matches: Callable[[Path, str], bool]
) -> list[str]:
    """Take complete files from partial folders that killed runs left in `root` (always checksummed, whatever
    `verify` says: a killed run proves nothing), place them, remove those folders. Returns what is still to copy."""
    todo = dict.fromkeys(rels)
    with local_files.stale_partials(root) as stale:
        for folder in stale:

            def complete(rel: str, folder: Path = folder) -> bool:
                path = folder / rel
                return path.is_file() and path.stat().st_size == sizes[rel] and matches(path, rel)

            found = local_files.parallel_filter(complete, todo)
            local_files.place(folder, root, found)
            for rel in found:
                del todo[rel]
            run.report.files_resumed += len(found)
            run.report.bytes_resumed += sum(sizes[rel] for rel in found)
        if stale:
            log(
                f"{len(stale)} partial folder(s) of killed runs in {root}: {run.report.files_resumed} complete file(s) "
                "placed from them, the folders removed"
            )
    return list(todo)


class InstanceEndpoint(Endpoint):
    """A folder on a running trainctl-managed instance, reached through SSM and S3 only: it lists and checks its
    files with the transfer helper (agent/transfer_helper.py), and the bytes travel through S3 (the S3 end, or a
    staging prefix whose objects are removed afterwards, failure or not)."""

    kind = Kind.INSTANCE

    def __init__(self, location: Location, *, source: bool, fallback_bucket: str | None) -> None:
        super().__init__(location, source=source)
        self.fallback_bucket = fallback_bucket
        self.instance_id, self.staging = "", S3Uri("")
        self.md5s: dict[str, str] = {}
        self.match: list[str] = []
        self.expect: Expectations = {}
        self.free, self.fast_crc = 0, True

    def uri(self, name: str) -> S3Uri:
        return self.staging.join(name)

    @contextmanager
    def opened(self, run: TransferRun) -> Iterator[None]:
        """Find the instance, wait until SSM reaches it; delete every staging object afterwards, whatever happened
        (a failure keeps its own error)."""
        instance = _run_task(resolve_instance, self.location, account=run.account)
        _run_task(wait_online, instance.id, timeout_s=120, account=run.account)
        self.staging = run.request.staging_prefix(self.location.job or instance.job, self.fallback_bucket)
        self.instance_id = instance.id
        run.report.instance_id, run.report.staging = instance.id, str(self.staging) + "/"
        try:
            yield
        finally:
            try:
                removed = delete_prefix.fn(str(self.staging) + "/", account=run.account)
                run.report.staging_objects_removed = removed
            except Exception as exc:
                log(f"could not remove staging {self.staging}/: {exc}; delete it by hand")

    def _ssm(self, run: TransferRun, script: list[str], what: str) -> str:
        result = _run_task(run_command, self.instance_id, script, what=what, timeout_s=6 * 3600, account=run.account)
        return str(result.stdout)

    def _put(self, run: TransferRun, name: str, document: Any) -> str:
        uri = str(self.uri(name))
        _run_task(put_json, uri, document, account=run.account)
        return uri

    def _list(self, run: TransferRun, expect: Expectations | None) -> None:
        """The helper's scan: sizes (and MD5s of a source), the files that meet `expect`, the free space."""
        expect_uri = self._put(run, "expect.json", expect) if expect is not None else None
        out, path = str(self.uri("scan.json")), self.location.path
        mode: Literal["src", "dst"] = "src" if self.source else "dst"
        self._ssm(run, scan_script(path, out, mode=mode, expect_uri=expect_uri), f"list {path}")
        scan: dict[str, Any] = _run_task(get_json, out, account=run.account)
        if scan["exists"] and not scan["is_dir"]:
            raise TransferError(f"{self.instance_id}:{self.location.path} is a file, not a folder")
        if self.source and not scan["exists"]:
            raise TransferError(f"source {self.instance_id}:{self.location.path} does not exist", fix="Check the path")
        self.files = run.filtered({rel: v[0] for rel, v in scan["files"].items()})
        self.md5s = {rel: scan["files"][rel][1] for rel in self.files}
        self.match, self.free, self.fast_crc = scan["match"], scan["free"], scan.get("fast_crc", True)

    def scan(self, run: TransferRun) -> None:
        self._list(run, None)
        check_all_safe(self.files, what="instance file")  # each becomes a local path

    def compare(self, run: TransferRun, reference: Endpoint) -> list[str]:
        self.expect = reference.expectations(run, list(reference.files))
        self._list(run, self.expect)
        return self.match

    def file_matches(self, run: TransferRun, path: Path, rel: str) -> bool:
        return local_files.md5_file(path) == self.md5s[rel]

    def free_bytes(self) -> int:
        return self.free

    def send(self, run: TransferRun, plan: SyncPlan, wire: Wire) -> None:
        if not plan.copy:
            return
        select = self._put(run, "select.json", plan.copy)
        run.tracker.phase("instance writing S3" if wire.final else "sending from the instance")
        archive = str(wire.archive) if wire.archive else None
        script = send_script(
            self.location.path, select, to_prefix=wire.url, archive_uri=archive, gz=not wire.final,
            part_mib=run.request.part_size_mib,
        )  # fmt: skip
        self._ssm(run, script, "send files")

    def receive(self, run: TransferRun, plan: SyncPlan, wire: Wire, src: Endpoint) -> None:
        files = {rel: self.expect[rel] for rel in plan.copy}
        if run.request.verify:
            _warn_if_checked_slowly(self.instance_id, self.fast_crc, files)
        manifest = self._put(
            run, "manifest.json", {"files": files, "delete": plan.delete, "verify": run.request.verify}
        )
        run.tracker.phase("instance reading S3" if wire.final else "placing on the instance")
        script = receive_script(
            self.location.path,
            f"{PARTIAL_PREFIX}{run.request.transfer_id}",
            manifest,
            files_prefix=None if wire.archive else wire.url,
            archive_uri=str(wire.archive) if wire.archive else None,
            part_mib=run.request.part_size_mib,
        )
        result = json.loads(self._ssm(run, script, "receive files").strip().splitlines()[-1])
        bad = set(result["mismatches"])
        run.report.mismatches = sorted(bad)
        run.report.files_copied = result["placed"]
        run.report.bytes_copied = sum(src.files[rel] for rel in plan.copy if rel not in bad)
        run.report.files_deleted = result["deleted"]
        run.report.verified = run.request.verify and not bad

    def verify_landed(self, run: TransferRun, plan: SyncPlan, dst: S3Endpoint) -> None:
        if not plan.copy:
            return
        run.tracker.phase("verifying")
        found = _run_task(transfer_tasks.list_s3_tree, dst.prefix, account=run.account, field="destination")
        missing = [rel for rel in plan.copy if rel not in found or found[rel].size != self.files[rel]]
        present = [rel for rel in plan.copy if rel not in missing]
        want = _object_expectations(run, dst.prefix, found, present)
        # A single-part MD5 ETag is compared with the MD5 the scan took; the instance checks the rest (a multipart
        # ETag, or a KMS object's checksum) against its files.
        single = [rel for rel in present if "etag" in want[rel] and "-" not in found[rel].etag]
        bad = {rel for rel in single if found[rel].etag != self.md5s[rel]}
        remote_check = {rel: want[rel] for rel in present if rel not in single}
        if remote_check:
            _warn_if_checked_slowly(self.instance_id, self.fast_crc, remote_check)
            check = instance_check_script(self.location.path, self._put(run, "check.json", remote_check))
            bad |= set(json.loads(self._ssm(run, check, "verify").strip().splitlines()[-1])["mismatches"])
        run.report.mismatches = sorted(bad | set(missing))
        run.report.verified = not run.report.mismatches


# Above this, the wait for checksums computed in plain Python on the instance is worth a warning (~50 s).
_SLOW_CHECK_WARN_BYTES = 256 * 1024 * 1024


def _warn_if_checked_slowly(instance_id: str, fast_crc: bool, expect: Expectations) -> None:
    """KMS objects are checked on the instance by their CRC64NVME/CRC32C: GB/s with awscrt, ~5 MB/s without."""
    nbytes = 0 if fast_crc else plain_python_crc_bytes(expect)
    if nbytes >= _SLOW_CHECK_WARN_BYTES:
        minutes = nbytes / PLAIN_PYTHON_CRC_BYTES_PER_S / 60
        log(
            f"{instance_id} has no awscrt for python3: checking {human_bytes(nbytes)} of KMS-encrypted "
            f"objects by their CRC in plain Python takes about {minutes:.0f} min. `python3 -m pip install awscrt` "
            "on the instance (or an AMI that has it) makes it seconds; --no-verify skips the check after the copy",
            level=logging.WARNING,
        )


def _endpoint(location: Location, *, source: bool, other: Location) -> Endpoint:
    if location.kind is Kind.S3:
        return S3Endpoint(location, source=source)
    if location.kind is Kind.LOCAL:
        return LocalEndpoint(location, source=source, toward=other.kind)
    return InstanceEndpoint(location, source=source, fallback_bucket=other.s3.bucket if other.s3 else None)


def run_transfer(request: TransferRequest, *, subscribers: Iterable[Subscriber] = ()) -> TransferReport:
    """The whole transfer, without Prefect bookkeeping of its own (the flow below adds artifacts); `subscribers`
    get its progress (core.progress). Returns the report; mismatches are in it (see `raise_on_mismatch`)."""
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
    run = TransferRun(request, report, Tracker(subscribers), engine)
    _runbook(run, _endpoint(src, source=True, other=dst), _endpoint(dst, source=False, other=src))
    report.seconds = round(time.monotonic() - started, 3)
    run.tracker.finish()
    return report


def raise_on_mismatch(report: TransferReport) -> TransferReport:
    if report.mismatches:
        raise TransferVerifyError(report)
    return report


@flow(name="transfer", flow_run_name="transfer-{request.transfer_id}", log_prints=True)
def transfer(request: TransferRequest) -> TransferReport:
    """Move SRC's tree to DST (see the module docstring); publishes a progress artifact and a report.

    Args:
        request: Source and destination (local, S3, an instance or a job's folder), filters, and how to copy.
    """
    key = artifact_key("transfer", request.scope)
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
    rows = report.model_dump(exclude={"would_copy", "would_delete", "mismatches", "changed", "checks"})
    rows["checks"] = checks_summary(report.checks) or "-"
    changed = set(report.changed)
    notes = [
        f"mismatch: {rel}" + (" (changed in S3 since the listing)" if rel in changed else "")
        for rel in report.mismatches[:50]
    ]
    if report.dry_run:
        notes += [f"would copy: {rel}" for rel in report.would_copy[:200]]
        notes += [f"would delete: {rel}" for rel in report.would_delete[:200]]
    markdown_report(
        artifact_key("transfer-report", request.scope),
        f"transfer {request.src} → {request.dst}",
        rows,
        notes=notes,
    )
    return raise_on_mismatch(report)
