"""Shipping a job's code: scan the local code dir (.gitignore honoured, size limit) and pack it.

Packing reads only local files; staging the tarballs in S3 is tasks/s3.py's (upload_file, copy_objects).
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, Field

from core.errors import InvalidInputError, UsageError
from core.launch import IgnoreMatcher, gitignore_matcher
from core.paths import check_all_safe


class CodeListing(BaseModel):
    root: str
    files: list[str] = Field(default_factory=list)  # relative, '/'-separated, sorted
    bytes: int = 0
    ignored: int = 0


class CodePackage(BaseModel):
    path: str
    files: int
    bytes: int  # of the files packed (before compression)
    compressed_bytes: int
    sha256: str


def _matcher(root: Path) -> IgnoreMatcher:
    found: dict[str, str] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != ".git"]
        if ".gitignore" in files:
            rel = os.path.relpath(folder, root).replace(os.sep, "/")
            found["" if rel == "." else rel] = (Path(folder) / ".gitignore").read_text(errors="replace")
    return gitignore_matcher(found)


def scan_code_dir(code_dir: str, *, limit_bytes: int) -> CodeListing:
    """The files that would be shipped. Refuses a missing dir and a total over the limit (after .gitignore),
    naming the biggest files so the user knows what to ignore."""
    root = Path(code_dir).expanduser()
    if not root.is_dir():
        raise InvalidInputError("code_dir", code_dir, "an existing directory with the training code")
    matcher = _matcher(root)
    listing = CodeListing(root=str(root.resolve()))
    sizes: dict[str, int] = {}
    for folder, dirs, files in os.walk(root):
        rel_folder = os.path.relpath(folder, root).replace(os.sep, "/")
        prefix = "" if rel_folder == "." else rel_folder + "/"
        kept = []
        for d in sorted(dirs):
            if matcher.ignored(prefix + d, is_dir=True) or (Path(folder) / d).is_symlink():
                listing.ignored += 1
            else:
                kept.append(d)
        dirs[:] = kept  # git never looks inside an ignored folder, and neither do we
        for name in files:
            rel = prefix + name
            path = Path(folder) / name
            if matcher.ignored(rel, is_dir=False) or not path.is_file():
                listing.ignored += 1
                continue
            sizes[rel] = path.stat().st_size
            listing.bytes += sizes[rel]
            if listing.bytes > limit_bytes:
                biggest = sorted(sizes, key=lambda k: -sizes[k])[:3]
                raise InvalidInputError(
                    "code_dir",
                    code_dir,
                    f"at most {limit_bytes // (1024 * 1024)} MB of code after .gitignore (over the limit already; "
                    f"biggest: {', '.join(f'{b} ({sizes[b] // 1024} KiB)' for b in biggest)})",
                    fix="Add data, checkpoints and environments to .gitignore (ship data on a volume or in S3), "
                    "or raise code_limit_mb.",
                )
    listing.files = sorted(sizes)
    return listing


def pack(root: str, files: list[str], dest: str) -> CodePackage:
    """A gzip tarball of `files` (relative to `root`) with stable metadata, so the same code gives one hash. Every
    member is a plain file (a symlinked file is shipped as its content): the instance unpacks nothing else."""
    total = 0
    with tarfile.open(dest, "w:gz", compresslevel=6) as tar:
        for rel in files:
            path = Path(root) / rel
            with path.open("rb") as fh:
                info = tar.gettarinfo(arcname=rel, fileobj=fh)  # fstat of the opened file: links followed
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mtime = int(path.stat().st_mtime)
                total += info.size
                tar.addfile(info, fh)
    digest = hashlib.sha256(Path(dest).read_bytes()).hexdigest()
    return CodePackage(path=dest, files=len(files), bytes=total, compressed_bytes=os.path.getsize(dest), sha256=digest)


def package_code(code_dir: str, dest: str, *, limit_bytes: int) -> CodePackage:
    listing = scan_code_dir(code_dir, limit_bytes=limit_bytes)
    if not listing.files:
        raise InvalidInputError("code_dir", code_dir, "a directory with at least one file not ignored by .gitignore")
    # Each name becomes a path on the instance, where the unpack refuses what the rule refuses: say so here first.
    check_all_safe(listing.files, what="code file", shown=listing.root.rstrip("/") + "/")
    return pack(listing.root, listing.files, dest)


def agent_dir() -> Path:
    """The agent's files as installed with trainctl (agent/ is shipped as files, not imported)."""
    return Path(str(resources.files("agent")))


def package_agent(dest: str) -> CodePackage:
    """agent/*.py as `agent/<file>` (extracted into the job's folder on the instance)."""
    folder = agent_dir()
    script = folder / "trainctl_agent.py"
    if not script.is_file():
        raise UsageError(
            f"the on-instance agent is missing ({script})",
            fix="Reinstall trainctl; agent/trainctl_agent.py ships with it.",
        )
    files = sorted(p.name for p in folder.glob("*.py"))
    with tarfile.open(dest, "w:gz") as tar:
        for name in files:
            tar.add(str(folder / name), arcname=f"agent/{name}")
    size = sum((folder / n).stat().st_size for n in files)
    digest = hashlib.sha256(Path(dest).read_bytes()).hexdigest()
    return CodePackage(path=dest, files=len(files), bytes=size, compressed_bytes=os.path.getsize(dest), sha256=digest)
