"""Transfers, the pure part: where data is (locations), what to move (filters, the sync plan), and how to tell
that two copies are the same (sizes, MD5, S3 ETags). No I/O here; `tasks/transfer.py` reads files and calls AWS.

Locations (`parse_location`):

    /data/imagenet, ./out, C           a local folder (a single file as source copies that file)
    s3://bucket/prefix                 an S3 prefix (always treated as a folder)
    i-0123456789abcdef0:/mnt/data      a folder on a trainctl-managed, running instance (through S3 + SSM)
    job:NAME:/mnt/data                 the same, on the running instance tagged trainctl:job=NAME

SRC and DST are folders: SRC's tree lands under DST with the same relative paths (like `aws s3 sync`).

Sameness. A local or instance file and an S3 object are the same when the sizes match and the object's ETag is
what S3 computes for those bytes: the hex MD5 for a single-part upload, and for a multipart upload of N parts
`hex(md5(md5(part1) + ... + md5(partN))) + "-N"`. The part size is not stored in S3, so it is inferred from N
(`etag_part_sizes`): the sizes the common uploaders use (ours, aws-cli's 8 MiB, s5cmd's and s3fs's 50 MiB, ...)
that give exactly N parts, then ceil(size / N) rounded up to a MiB.

Full-object checksums. S3 keeps one per object beside the ETag (it computes a CRC64NVME for any upload that
brings none); HeadObject with ChecksumMode gives it, one call per object. It is used where the ETag cannot
serve or costs more: a file of a part or more (a CRC pass is ~10x cheaper than MD5), and objects encrypted with
SSE-KMS / DSSE-KMS, whose ETags are no MD5s (when the first object is KMS-encrypted, the checksums of all the
files to check are fetched up front, 16 HeadObject calls at a time; otherwise an ETag that does not match is
checked again by the checksum). An object with neither a matching ETag nor a checksum is a mismatch:
unverifiable is never "same". Two files (local ↔ instance) are the same when size and MD5 match.

Why ETags first: the ETag comes with every ListObjectsV2 page (one call per 1,000 objects), while a checksum
needs a HeadObject per object, and s5cmd — the fast path — cannot send one. A 10,000-file verify is then 10
calls, not 10,000.
"""

from __future__ import annotations

import fnmatch
import math
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from typing import Literal, Self

from pydantic import BaseModel, Field, model_validator

from core import paths
from core.errors import InvalidInputError, TrainctlError, UsageError
from core.jobs import job_prefix, validate_job_name
from core.paths import PathEscapeError as PathEscapeError  # re-exported: its home was here
from core.s3uri import S3Uri, parse_s3_uri
from core.shell import on_instance, quote

MIB = 1024 * 1024
# Folders trainctl writes inside a destination while a transfer runs; never listed, never copied, never deleted.
PARTIAL_PREFIX = ".trainctl-partial-"
# A lock file inside every partial folder: held (flock) while its run lives, so a later run can tell a killed run's
# folder (lock free) from a running one's. safe_relative refuses names starting with PARTIAL_PREFIX, so no copied
# file can ever take this name.
PARTIAL_LOCK = f"{PARTIAL_PREFIX}lock"

_INSTANCE = re.compile(r"^(i-[0-9a-f]{8}(?:[0-9a-f]{9})?):(.*)$")
_JOB = re.compile(r"^job:([^:]*):(.*)$")


class TransferError(UsageError):
    """A transfer was refused before anything moved (bad location, path escaping, no space...)."""


class Kind(StrEnum):
    LOCAL = "local"
    S3 = "s3"
    INSTANCE = "instance"


@dataclass(frozen=True)
class Location:
    """A parsed location. `path` is the local or instance folder; `s3` the S3 prefix; `job` for job:NAME:/path."""

    kind: Kind
    raw: str
    path: str = ""
    s3: S3Uri | None = None
    instance_id: str | None = None
    job: str | None = None

    def __str__(self) -> str:
        return self.raw


def parse_location(value: str, *, field: str = "location") -> Location:
    """`s3://…`, `i-…:/path`, `job:NAME:/path`, or a local path. Instance paths must be absolute."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(field, value, "a local path, s3://bucket/prefix, i-0123…:/path or job:NAME:/path")
    if value.startswith("s3://"):
        return Location(Kind.S3, value, s3=parse_s3_uri(value, field=field))
    instance = _INSTANCE.match(value)
    job = _JOB.match(value)
    if instance or job:
        path = (instance or job).group(2)  # type: ignore[union-attr]
        if not path.startswith("/"):
            raise InvalidInputError(field, value, "an absolute path after the colon, e.g. i-0123…:/mnt/data")
        if any(part == ".." for part in path.split("/")):
            raise InvalidInputError(field, value, "an instance path without '..' segments")
        normal = "/" + "/".join(p for p in path.split("/") if p and p != ".")
        if instance:
            return Location(Kind.INSTANCE, value, path=normal, instance_id=instance.group(1))
        name = validate_job_name(job.group(1), field=field)  # type: ignore[union-attr]
        return Location(Kind.INSTANCE, value, path=normal, job=name)
    if value.startswith("i-") and ":" in value:
        raise InvalidInputError(field, value, "an instance ID such as i-0123456789abcdef0 followed by :/path")
    return Location(Kind.LOCAL, value, path=value)


# -- filters ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    """Include/exclude globs on relative paths (`/`-separated). A file moves if it matches some include (or there
    are none) and no exclude. `*` also crosses `/`; a pattern without `/` matches the base name too, so
    `--exclude '*.tmp'` and `--include 'train/*'` both do what they read as."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    @staticmethod
    def _hit(pattern: str, rel: str) -> bool:
        if fnmatch.fnmatchcase(rel, pattern):
            return True
        return "/" not in pattern and fnmatch.fnmatchcase(rel.rsplit("/", 1)[-1], pattern)

    def accepts(self, rel: str) -> bool:
        if self.include and not any(self._hit(p, rel) for p in self.include):
            return False
        return not any(self._hit(p, rel) for p in self.exclude)

    def apply(self, entries: Mapping[str, int]) -> dict[str, int]:
        return {rel: size for rel, size in entries.items() if self.accepts(rel)}


# -- path safety ------------------------------------------------------------------------------------------------


def safe_relative(rel: str, *, what: str = "name", shown: str = "") -> str:
    """A relative path that stays inside the folder it is joined to (core.paths' rule, and not one of our partial
    folders), or PathEscapeError naming it."""
    return paths.safe_relative(rel, what=what, reserved=PARTIAL_PREFIX, shown=shown)


def check_all_safe(rels: Iterable[str], *, what: str, shown: str = "") -> None:
    """Every name passes `safe_relative` and none is both a file and a folder; checked before anything moves."""
    paths.check_all_safe(rels, what=what, reserved=PARTIAL_PREFIX, shown=shown)


def check_free_space(needed: int, free: int, where: str) -> None:
    """Refuse before the first byte when the destination cannot hold what is about to arrive (+1% and 16 MiB)."""
    want = needed + needed // 100 + 16 * MIB if needed else 0
    if needed and free < want:
        raise TransferError(
            f"not enough space at {where}: {human_bytes(needed)} to write, {human_bytes(free)} free",
            fix="Free space there, pick another destination, or narrow the transfer with --include/--exclude",
        )


# Checksums the instance helper computes with awscrt when the instance has it (GB/s), else in plain Python.
SLOW_WITHOUT_AWSCRT = frozenset({"CRC64NVME", "CRC32C"})
PLAIN_PYTHON_CRC_BYTES_PER_S = 5_000_000  # measured 5.3 MB/s on a 2-core dev machine


def plain_python_crc_bytes(expect: Mapping[str, Mapping[str, object]]) -> int:
    """Bytes among these instance expectations (`expectation`) whose check needs a CRC that awscrt computes
    (CRC64NVME, CRC32C)."""
    total = 0
    for want in expect.values():
        checksum, size = want.get("checksum"), want["size"]
        if isinstance(checksum, list) and checksum[0] in SLOW_WITHOUT_AWSCRT and isinstance(size, int):
            total += size
    return total


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


# -- checksums --------------------------------------------------------------------------------------------------

# Part sizes uploaders commonly use: aws-cli/boto3 8 MiB, s5cmd/s3fs 50 MiB, and other round sizes.
COMMON_PART_SIZES = tuple(m * MIB for m in (8, 16, 5, 50, 64, 100, 128, 256, 512, 1024, 15, 25, 10))


def normalize_etag(etag: str | None) -> str:
    return (etag or "").strip().strip('"').lower()


def etag_parts(etag: str) -> int:
    """Number of parts an ETag says the object was uploaded in (0 for a single-part, MD5-style ETag)."""
    _, dash, n = normalize_etag(etag).partition("-")
    return int(n) if dash and n.isdigit() else 0


def is_md5_etag(etag: str) -> bool:
    return re.fullmatch(r"[0-9a-f]{32}(-\d+)?", normalize_etag(etag)) is not None


def etag_part_sizes(size: int, etag: str, preferred: int | None = None) -> list[int]:
    """Part sizes that could have produced `etag` for an object of `size` bytes: [] for a single-part ETag."""
    return part_sizes(size, etag_parts(etag), preferred)


def part_sizes(size: int, n: int, preferred: int | None = None) -> list[int]:
    """Part sizes that split `size` bytes into exactly `n` parts: `preferred`, the common uploaders' sizes, then
    ceil(size / n) rounded up to a MiB. [] for n = 0 (not a multipart upload)."""
    if n == 0:
        return []
    sizes = [preferred] if preferred else []
    sizes += [p for p in COMMON_PART_SIZES if p not in sizes]
    fits = [p for p in sizes if max(1, math.ceil(size / p)) == n]
    guess = math.ceil(math.ceil(size / n) / MIB) * MIB
    if guess and max(1, math.ceil(size / guess)) == n and guess not in fits:
        fits.append(guess)
    return fits


@dataclass(frozen=True)
class Checksum:
    """An object's checksum as S3 gives it (HeadObject with ChecksumMode): of the whole object, or COMPOSITE (of
    a multipart upload's part checksums, `value-N`)."""

    algorithm: str  # CRC64NVME, CRC32C, CRC32, SHA256 or SHA1
    value: str  # base64 of the big-endian digest; `-N` for a COMPOSITE one of N parts

    @property
    def parts(self) -> int:
        """N for a COMPOSITE checksum, 0 for one of the whole object."""
        _, dash, n = self.value.rpartition("-")
        return int(n) if dash and n.isdigit() else 0


# -- the sync plan ----------------------------------------------------------------------------------------------


@dataclass
class SyncPlan:
    """What a transfer does: copy (missing or changed at the destination), skip (same), delete (only with
    delete=True: at the destination but not at the source, among the files the filters select)."""

    copy: list[str] = field(default_factory=list)
    skip: list[str] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    copy_bytes: int = 0


def equal_size(src: Mapping[str, int], dst: Mapping[str, int]) -> list[str]:
    """Files present on both sides with the same size: only these need a checksum to decide."""
    return sorted(rel for rel, size in src.items() if dst.get(rel) == size)


def plan_sync(src: Mapping[str, int], dst: Mapping[str, int], same: Iterable[str], *, delete: bool) -> SyncPlan:
    """Decide per file. `same` names files whose content is known identical (size and checksum); a file missing
    there is copied. Deletion never happens without `delete`."""
    same_set = set(same)
    plan = SyncPlan()
    for rel in sorted(src):
        if rel in dst and dst[rel] == src[rel] and rel in same_set:
            plan.skip.append(rel)
        else:
            plan.copy.append(rel)
            plan.copy_bytes += src[rel]
    if delete:
        plan.delete = sorted(rel for rel in dst if rel not in src)
    return plan


# -- request and report -----------------------------------------------------------------------------------------


class TransferRequest(BaseModel):
    """One transfer: `trainctl transfer SRC DST [...]`. Checked whole before anything is listed or moved."""

    src: str = Field(description="Source: local path, s3://bucket/prefix, i-…:/path or job:NAME:/path.")
    dst: str = Field(description="Destination folder, same forms (a different kind than src).")
    include: list[str] = Field(default_factory=list, description="Only files matching one of these globs.")
    exclude: list[str] = Field(default_factory=list, description="Skip files matching any of these globs.")
    delete: bool = Field(default=False, description="Delete files at DST that SRC does not have (true sync).")
    dry_run: bool = Field(default=False, description="List what would move; move nothing.")
    compress: bool = Field(default=False, description="Move many small files as one tar.gz.")
    verify: bool = Field(default=True, description="Check every copied file's checksum after the copy.")
    staging: str | None = Field(
        default=None,
        description="S3 prefix for instance legs (s3://bucket/prefix). With job:NAME locations a bare "
        "s3://bucket uses the job's layout, s3://bucket/trainctl/jobs/NAME/staging/.",
    )
    engine: Literal["auto", "s5cmd", "python"] = Field(
        default="auto",
        description="s5cmd when installed (auto), or in Python (s3fs; boto3 for big files). Between local disk "
        "and S3, files of a part or more go through trainctl's own engine, checked while copied.",
    )
    concurrency: int = Field(  # s5cmd workers (its own default); boto3 uses 10
        default=256, ge=1, le=1024, description="Files in flight at once (s5cmd workers)."
    )
    part_size_mib: int = Field(default=50, ge=5, le=5 * 1024, description="Multipart part size in MiB.")
    account: str | None = Field(default=None, description="AwsAccount block name; default: the AWS environment.")
    transfer_id: str = Field(
        default_factory=lambda: uuid.uuid4().hex[:12],
        description="Names this transfer's staging and partial folders; default: a random one.",
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        src, dst = self.source(), self.destination()
        if src.kind == dst.kind:
            raise TransferError(
                f"{src} → {dst}: both are {src.kind} locations",
                fix="One side must be local, S3 or an instance and the other a different kind "
                "(use cp/rsync, `aws s3 sync` or two transfers through S3 for the same kind)",
            )
        if self.staging is not None:
            parse_s3_uri(self.staging, field="staging")
        if not re.fullmatch(r"[0-9a-z-]{1,40}", self.transfer_id):
            raise InvalidInputError("transfer_id", self.transfer_id, "1–40 lowercase letters, digits or dashes")
        return self

    def source(self) -> Location:
        return parse_location(self.src, field="source")

    def destination(self) -> Location:
        return parse_location(self.dst, field="destination")

    def filters(self) -> Filters:
        return Filters(tuple(self.include), tuple(self.exclude))

    @property
    def scope(self) -> str:
        """What the transfer is about, in its reports' keys: a job side's job, else the S3 bucket, else the
        instance (so repeated transfers of one job share a history)."""
        sides = (self.source(), self.destination())
        named = [s.job for s in sides if s.job] + [s.s3.bucket for s in sides if s.s3]
        return (named + [s.instance_id for s in sides if s.instance_id] + [self.transfer_id])[0]

    @property
    def direction(self) -> str:
        return f"{self.source().kind}->{self.destination().kind}"

    def staging_prefix(self, job: str | None, fallback_bucket: str | None) -> S3Uri:
        """Where an instance leg stages objects: given, or the job's staging prefix, or the S3 side's bucket."""
        if self.staging:
            base = parse_s3_uri(self.staging, field="staging")
            if not base.key and job:
                return job_prefix(base.bucket, job).join("staging", f"transfer-{self.transfer_id}")
            return base.join(f"transfer-{self.transfer_id}")
        if fallback_bucket:
            root = job_prefix(fallback_bucket, job) if job else S3Uri(fallback_bucket).join("trainctl")
            return root.join("staging", f"transfer-{self.transfer_id}")
        raise TransferError(
            f"{self.src} → {self.dst} goes through S3 but no staging prefix is known",
            fix="Pass --staging s3://BUCKET[/prefix] (a bucket the instance can read and write)",
        )


class TransferReport(BaseModel):
    src: str
    dst: str
    direction: str
    engine: str
    dry_run: bool = False
    files_source: int = 0
    bytes_source: int = 0
    files_copied: int = 0
    bytes_copied: int = 0
    files_skipped: int = 0
    # Files a killed earlier run had fetched completely but not yet placed: checked and placed, not copied again.
    files_resumed: int = 0
    bytes_resumed: int = 0
    files_deleted: int = 0
    would_copy: list[str] = Field(default_factory=list)
    would_delete: list[str] = Field(default_factory=list)
    verified: bool = False
    mismatches: list[str] = Field(default_factory=list)
    # Of the mismatches, the objects that changed in S3 (other ETag, or gone) after the listing the plan was made
    # from: the copy may have taken their new bytes, which are not placed under the final name.
    changed: list[str] = Field(default_factory=list)
    # Which check each copied file got (check name → files; core/transfer_checks.py names them), on local ↔ S3
    # legs: e.g. {"crc64nvme-in-flight": 1, "md5-etag-after": 9999} for a download, {"crc64nvme-by-s3": 1,
    # "md5-etag": 9999} for an upload.
    checks: dict[str, int] = Field(
        default_factory=dict,
        description="Files per check: -in-flight (computed as the bytes arrived), -by-s3 (S3 checked the checksum "
        "sent with the bytes), -after (the landed file read again), md5-etag (computed while uploading).",
    )
    compressed: bool = False
    instance_id: str | None = None
    staging: str | None = None
    staging_objects_removed: int = 0
    # Unfinished multipart uploads of the copied keys that were aborted (a killed earlier run's, or this run's
    # after a failure): S3 bills their parts until then.
    uploads_aborted: int = 0
    seconds: float = 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes_copied / 1e6 / self.seconds if self.seconds > 0 else 0.0


class TransferVerifyError(TrainctlError):
    """Checksums after the copy did not match; the mismatching files were not placed under their final names
    (local and instance destinations) or are named for re-upload (S3)."""

    def __init__(self, report: TransferReport) -> None:
        self.report = report

        def listed(names: list[str]) -> str:
            return ", ".join(names[:5]) + (" …" if len(names) > 5 else "")

        message = f"verify failed for {len(report.mismatches)} file(s) of {report.src} → {report.dst}"
        message += f": {listed(report.mismatches)}"
        if report.changed:
            message += f" ({len(report.changed)} changed in S3 since the listing: {listed(report.changed)})"
        super().__init__(
            message,
            fix="Run the transfer again (only the failed files move); if it persists, the source changed during "
            "the copy or the storage is corrupting data",
        )


# -- the instance side ------------------------------------------------------------------------------------------
# What runs on the instance is a stdlib-only Python helper (sent inline with each SSM command) plus s5cmd when
# the AMI has it, else the aws CLI. Every value reaches the shell through core.shell (quoted), and instance paths
# through `on_instance` ($TRAINCTL_ROOT prefix).

# The helper is agent/transfer_helper.py, a real module (linted, typed, unit-tested); its text is sent inline. Read
# once from the installed package: static data of trainctl itself, as a template would be, not run-time I/O.
INSTANCE_HELPER = resources.files("agent").joinpath("transfer_helper.py").read_text(encoding="utf-8")

# Shell functions every instance script starts with: the helper, s5cmd (pointed at AWS_ENDPOINT_URL when set:
# s5cmd reads only its own S3_ENDPOINT_URL) or else the aws CLI for single objects.
_PRELUDE = [
    "set -eu",
    "h() { python3 - \"$@\" <<'TRAINCTL_HELPER'",
    *INSTANCE_HELPER.strip("\n").splitlines(),
    "TRAINCTL_HELPER",
    "}",
    's5() { if [ -n "${AWS_ENDPOINT_URL:-}" ]; then s5cmd --endpoint-url "$AWS_ENDPOINT_URL" "$@"; '
    'else s5cmd "$@"; fi; }',
    "has_s5() { command -v s5cmd >/dev/null 2>&1; }",
    'get() { if has_s5; then s5 --log error cp --raw "$1" "$2"; else aws s3 cp --only-show-errors "$1" "$2"; fi; }',
    'put() { get "$1" "$2"; }',
    "work=$(mktemp -d); trap 'rm -rf \"$work\"' EXIT",
]


def instance_script(*lines: str) -> list[str]:
    """`lines` after the prelude every instance script of ours starts with: `set -eu`, the helper as `h VERB ...`,
    `get`/`put` (s5cmd, else the aws CLI) and a scratch folder `$work` removed at exit."""
    return [*_PRELUDE, *lines]


def scan_script(path: str, out_uri: str, *, mode: Literal["src", "dst"], expect_uri: str | None) -> list[str]:
    """List the instance folder (size; MD5 of every file for a source), checking the given expectations, and put
    the JSON listing at `out_uri` (it can be far larger than SSM's 24,000 inline characters)."""

    lines = [f"root={on_instance(path)}"]
    if expect_uri:
        lines += [
            f'get {quote(expect_uri)} "$work/expect.json"',
            f'h scan "$root" "$work/scan.json" {quote(mode)} "$work/expect.json"',
        ]
    else:
        lines += [f'h scan "$root" "$work/scan.json" {quote(mode)}']
    lines += [f'put "$work/scan.json" {quote(out_uri)}']
    return instance_script(*lines)


def receive_script(
    path: str,
    partial: str,
    manifest_uri: str,
    *,
    files_prefix: str | None,
    archive_uri: str | None,
    part_mib: int,
    listing: str | None = None,
) -> list[str]:
    """Fetch into a partial folder (files from `files_prefix`, or one archive), verify against the manifest, move
    each good file under its final name, delete what the manifest says, drop the partial folder.

    With `listing` (an instance path: what the folder holds, as its last complete receive recorded it), only new and
    changed files are fetched and the listed ones no longer in the manifest deleted (the helper's `changed` and
    `remember`): an incremental sync.

    The partial folder goes when the script ends, failed or not; the script holds a lock on it (flock, fd 9) while
    it runs, so the next receive into the same folder removes what a killed one (SIGKILL, reboot) left."""

    lines = [
        f"root={on_instance(path)}",
        f'partial="$root"/{quote(partial)}',
        'mkdir -p "$partial"',
        'trap \'rm -rf "$work" "$partial"\' EXIT',
        f'exec 9>"$partial"/{quote(PARTIAL_LOCK)}',
        "if command -v flock >/dev/null 2>&1; then flock -n 9; fi",
        'h sweep "$root" "$partial"',
        f'get {quote(manifest_uri)} "$work/manifest.json"',
    ]
    if listing:
        lines += [f'h changed "$work/manifest.json" "$root" {on_instance(listing)}']
    if archive_uri:
        lines += [f'get {quote(archive_uri)} "$work/bundle.tar"', 'h unpack "$work/bundle.tar" "$partial"']
    elif files_prefix:
        lines += [
            "python3 -c 'import json,sys; print(json.dumps(sorted(json.load(open(sys.argv[1]))[\"files\"])))' "
            '"$work/manifest.json" > "$work/select.json"',
            "if has_s5; then",
            f'  h cmds s5cmd {quote(files_prefix)} "$partial" "$work/select.json" "$work/run.txt" {int(part_mib)}',
            '  s5 --log error run "$work/run.txt"',
            "else",
            f'  h cmds aws {quote(files_prefix)} "$partial" "$work/select.json" "$work/run.sh" {int(part_mib)}',
            '  sh -e "$work/run.sh"',
            "fi",
        ]
    if listing:
        lines += [
            'h apply "$partial" "$root" "$work/manifest.json" > "$work/applied.json"',
            f'h remember "$work/manifest.json.full" "$work/applied.json" {on_instance(listing)}',
        ]
    else:
        lines += ['h apply "$partial" "$root" "$work/manifest.json"']
    return instance_script(*lines)


def send_script(
    path: str, select_uri: str, *, to_prefix: str, archive_uri: str | None, gz: bool, part_mib: int
) -> list[str]:
    """Put the selected files of the instance folder to S3: one archive (tar, gz when compressing), or file by
    file under `to_prefix` (s5cmd in parallel, else the aws CLI one by one)."""

    lines = [f"root={on_instance(path)}", f'get {quote(select_uri)} "$work/select.json"']
    if archive_uri:
        lines += [
            f'h pack "$root" "$work/select.json" "$work/bundle.tar" {"1" if gz else "0"}',
            f'put "$work/bundle.tar" {quote(archive_uri)}',
        ]
    else:
        lines += [
            "if has_s5; then",
            f'  h cmds s5cmd "$root" {quote(to_prefix)} "$work/select.json" "$work/run.txt" {int(part_mib)}',
            '  s5 --log error run "$work/run.txt"',
            "else",
            f'  h cmds aws "$root" {quote(to_prefix)} "$work/select.json" "$work/run.sh" {int(part_mib)}',
            '  sh -e "$work/run.sh"',
            "fi",
        ]
    return instance_script(*lines)


def check_script(path: str, expect_uri: str) -> list[str]:
    """Compare instance files with expected sizes/checksums (after an upload from the instance)."""

    return instance_script(
        f"root={on_instance(path)}",
        f'get {quote(expect_uri)} "$work/expect.json"',
        'h check "$root" "$work/expect.json"',
    )


def expectation(
    size: int,
    etag: str | None = None,
    md5: str | None = None,
    part_size: int | None = None,
    checksum: Checksum | None = None,
) -> dict[str, object]:
    """What the helper compares a file with: its size and MD5, its size and the object's checksum (for objects
    whose ETag is no MD5, as under SSE-KMS; a COMPOSITE one with candidate part sizes), or its size and an S3 ETag
    (+ candidate part sizes)."""
    if md5 is not None:
        return {"size": size, "md5": md5}
    if checksum is not None:
        want: dict[str, object] = {"size": size, "checksum": [checksum.algorithm, checksum.value]}
        if checksum.parts:
            want["parts"] = part_sizes(size, checksum.parts, part_size)
        return want
    tag = normalize_etag(etag)
    return {"size": size, "etag": tag, "parts": etag_part_sizes(size, tag, part_size)}
