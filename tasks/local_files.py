"""Local files of a transfer: listing a folder, their checksums, the partial folders downloads land in, placing
and deleting files, archives. No AWS here (tasks/transfer.py compares these files with S3 objects).

Local writes never appear under their final name half-done: files land in `<dst>/.trainctl-partial-<id>/`, are
verified there, and are moved into place with os.replace (atomic on one filesystem) one by one as they land, so a
transfer killed half-way keeps every finished file and a re-run moves only the rest; complete files a killed run
left in its partial folder are checked and placed by the next run (`stale_partials`), then the folder goes.

Checksums are computed by agent/transfer_helper.py, the code the instance runs: imported here (the one exception to
"nothing imports agent/"; it is stdlib-only and imports nothing of ours) so the controller and the instance compute
every MD5, multipart ETag, CRC and COMPOSITE checksum the same way, from one implementation.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import transfer_helper as helper
from core.errors import InvalidInputError
from core.transfer import PARTIAL_LOCK, PARTIAL_PREFIX, Location, TransferError, safe_relative


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
    return helper.digest_range(path, offset, length, "MD5")


def part_digests(path: Path, size: int, part_size: int) -> list[bytes]:
    """The MD5 of each `part_size` slice of the file (one empty part for an empty file)."""
    if size <= part_size:  # one part: hashed here (a hand-off to the pool costs more than 10 KiB of MD5)
        return [_md5_range(path, 0, part_size)]
    return list(_PART_HASHERS.map(lambda offset: _md5_range(path, offset, part_size), range(0, size, part_size)))


def local_etag(path: Path, part_size: int) -> str:
    """The ETag S3 will give this file uploaded with `part_size` parts (multipart above one part): computed while
    the upload runs, so verifying needs a listing and no second read of the data."""
    digests = part_digests(path, path.stat().st_size, part_size)
    return digests[0].hex() if len(digests) == 1 else helper.multipart_etag(digests)


def local_etags(root: Path, rels: Iterable[str], part_size: int) -> dict[str, str]:
    """`local_etag` of each file, in this thread (one pool task per file cost 70 µs each just to hand out)."""
    return {rel: local_etag(root / rel, part_size) for rel in rels}


def parallel_filter(fn: Callable[[str], bool], rels: Iterable[str], workers: int = 4) -> list[str]:
    """The rels for which fn is true (hashlib releases the GIL on large buffers, so threads use every core)."""
    items = list(rels)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [rel for rel, ok in zip(items, pool.map(fn, items), strict=True) if ok]


def file_checksum(path: Path, algorithm: str) -> str:
    """The file's checksum in S3's form (base64 of the big-endian digest)."""
    return helper.checksum(path, algorithm)


def composite_checksum(path: Path, algorithm: str, part_size: int) -> str:
    """The COMPOSITE checksum S3 keeps for a multipart upload in `part_size` parts that sent a checksum per part
    (boto3's and aws-cli's CRC32): the checksum of the parts' binary checksums, then `-<parts>`."""
    offsets = range(0, path.stat().st_size, part_size)
    parts = list(_PART_HASHERS.map(lambda offset: helper.digest_range(path, offset, part_size, algorithm), offsets))
    return helper.composite_of(parts, algorithm)


def md5_many(root: Path, rels: Iterable[str]) -> dict[str, str]:
    items = list(rels)
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(items, pool.map(lambda r: md5_file(root / r), items), strict=True))


# -- partial folders ---------------------------------------------------------------------------------------------

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
