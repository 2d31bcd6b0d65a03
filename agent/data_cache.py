"""The local-cache data strategy on the instance: the dataset copied onto the NVMe instance store before the
trainer starts (issue 19). Standard library only.

The instance store is found by its Nitro name (`/dev/disk/by-id/nvme-Amazon_EC2_NVMe_Instance_Storage_*`, the first
device), formatted when blank (it is, after every start: the store is erased when the instance stops), mounted,
and filled with every object under the dataset's prefix: by s5cmd when the instance has it (a run file of one
`cp` per listed key, never a wildcard it would list again), else by the agent's own S3 client over a pool of
threads. Every key is checked before anything is written (the transfer's path rule), and the copy is verified
against the listing (each file's size, nothing missing) before the trainer gets `TRAINCTL_DATA_DIR`.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .errors import IntegrityError, SpecError
from .layout import on_instance, split_s3_uri
from .paths import check_paths
from .s3 import S3Client

INSTANCE_STORE_BY_ID = "/dev/disk/by-id"
INSTANCE_STORE_PREFIX = "nvme-Amazon_EC2_NVMe_Instance_Storage_"
MKFS = {"xfs": ["mkfs.xfs", "-q"], "ext4": ["mkfs.ext4", "-q", "-F"]}
COMMAND_TIMEOUT_S = 600


class DataCacheError(Exception):
    """The dataset could not be put on the instance store; the message says which step and why."""


@dataclass
class DataCache:
    """What the agent spec asks (`data_cache`): the dataset, where to mount the store, and the copy's threads."""

    uri: str
    mount: str
    filesystem: str = "xfs"
    workers: int = 32

    @classmethod
    def from_dict(cls, data: object) -> DataCache:
        if not isinstance(data, dict) or not isinstance(data.get("uri"), str) or not isinstance(data.get("mount"), str):
            raise SpecError("data_cache: an object with uri (s3://…) and mount (an absolute instance path)")
        split_s3_uri(data["uri"])
        if not data["mount"].startswith("/") or ".." in data["mount"].split("/"):
            raise SpecError(f"data_cache.mount: {data['mount']!r} is not an absolute path without '..'")
        filesystem, workers = data.get("filesystem", "xfs"), data.get("workers", 32)
        if filesystem not in MKFS:
            raise SpecError(f"data_cache.filesystem: {filesystem!r} is not xfs or ext4")
        if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 256:
            raise SpecError(f"data_cache.workers: {workers!r} is not an integer from 1 to 256")
        return cls(uri=data["uri"], mount=data["mount"], filesystem=filesystem, workers=workers)


@dataclass
class CacheResult:
    folder: Path
    device: str
    files: int
    bytes: int
    tool: str
    seconds: float


def prepare(cache: DataCache, s3: S3Client) -> CacheResult:
    """Format (if blank) and mount the instance store, copy the dataset onto it, verify it."""
    started = time.monotonic()
    device = instance_store_device()
    folder = on_instance(cache.mount)
    _mount(device, folder, cache.filesystem)
    bucket, prefix = split_s3_uri(cache.uri)
    base = prefix if not prefix or prefix.endswith("/") else prefix + "/"
    listed = {o.key[len(base) :]: o.size for o in s3.list_objects(bucket, base) if not o.key.endswith("/")}
    if not listed:
        raise DataCacheError(f"nothing to copy: {cache.uri} holds no object")
    check_paths(sorted(listed))  # every name, before the first byte is written
    tool = "s5cmd" if shutil.which("s5cmd") else "agent"
    if tool == "s5cmd":
        _copy_s5cmd(bucket, base, listed, folder)
    else:
        _copy_threads(s3, bucket, base, listed, folder, cache.workers)
    _verify(listed, folder)
    seconds = round(time.monotonic() - started, 1)
    return CacheResult(folder, device, len(listed), sum(listed.values()), tool, seconds)


def instance_store_device() -> str:
    """The first instance-store NVMe device, as an instance path (`/dev/disk/by-id/…`)."""
    by_id = on_instance(INSTANCE_STORE_BY_ID)
    names = sorted(p.name for p in by_id.glob(INSTANCE_STORE_PREFIX + "*")) if by_id.is_dir() else []
    if not names:
        raise DataCacheError(f"this instance has no NVMe instance store (no {by_id}/{INSTANCE_STORE_PREFIX}*)")
    return f"{INSTANCE_STORE_BY_ID}/{names[0]}"


def _run(argv: list[str], what: str, *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False, env=env, stdin=subprocess.DEVNULL
    )
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()[-300:]
        raise DataCacheError(f"{what} failed (exit code {done.returncode}): {detail}")
    return done


def _mount(device: str, folder: Path, filesystem: str) -> None:
    """mkfs only when the device has no filesystem; mount unless already mounted (both idempotent)."""
    if subprocess.run(["blkid", device], capture_output=True, check=False).returncode != 0:
        _run([*MKFS[filesystem], device], f"mkfs of {device}")
    folder.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mountpoint", "-q", str(folder)], check=False).returncode != 0:
        _run(["mount", device, str(folder)], f"mount of {device} at {folder}")


def _copy_threads(s3: S3Client, bucket: str, base: str, listed: dict[str, int], folder: Path, workers: int) -> None:
    def one(rel: str) -> None:
        target = folder / rel
        if target.is_file() and target.stat().st_size == listed[rel]:
            return  # copied by an earlier run of this attempt on this instance
        s3.download_file(bucket, base + rel, target)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="data-cache") as pool:
        for future in [pool.submit(one, rel) for rel in sorted(listed)]:
            future.result()


def _copy_s5cmd(bucket: str, base: str, listed: dict[str, int], folder: Path) -> None:
    """One `cp` per listed key in a run file (s5cmd copies them in parallel, 256 workers by default)."""
    with tempfile.NamedTemporaryFile("w", suffix=".s5cmd", delete=False) as run_file:
        for rel in sorted(listed):
            source, target = f"s3://{bucket}/{base}{rel}", str(folder / rel)
            run_file.write(f"cp --raw {shlex.quote(source)} {shlex.quote(target)}\n")
    try:
        endpoint = os.environ.get("AWS_ENDPOINT_URL")
        argv = ["s5cmd", *(["--endpoint-url", endpoint] if endpoint else []), "run", run_file.name]
        _run(argv, "s5cmd copy")
    finally:
        os.unlink(run_file.name)


def _verify(listed: dict[str, int], folder: Path) -> None:
    """Each listed file is on the store with its listed size."""
    bad = [
        rel
        for rel, size in sorted(listed.items())
        if not (folder / rel).is_file() or (folder / rel).stat().st_size != size
    ]
    if bad:
        shown = ", ".join(repr(rel) for rel in bad[:5]) + (" …" if len(bad) > 5 else "")
        raise IntegrityError(f"{len(bad)} file(s) of the dataset are missing or of another size on the store: {shown}")
