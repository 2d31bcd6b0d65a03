"""Names from S3 that become paths under a folder: core/paths.py's rule, copied (the agent imports nothing of
trainctl's; tests/core/test_paths.py runs both over one table of names)."""

from __future__ import annotations

from .errors import IntegrityError


def path_problem(rel: str) -> str | None:
    """Why a name from S3 cannot become a path under a folder, or None."""
    if not rel:
        return "is empty"
    if rel.startswith("/"):
        return "is absolute"
    if "\\" in rel:
        return "contains a backslash"
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in rel):
        return "contains a control character"
    try:
        size = len(rel.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "has a '..', '.' or empty segment"
    if any(len(p.encode("utf-8")) > 255 for p in parts):
        return "has a segment over 255 bytes"
    if size > 4096:
        return "is over 4096 bytes"
    return None


def check_paths(rels: list[str]) -> None:
    """IntegrityError naming the first name that fails `path_problem` or is both a file and a folder."""
    names = set(rels)
    for rel in sorted(names):
        why = path_problem(rel)
        if why:
            raise IntegrityError(f"unsafe path in manifest: {rel!r} {why}")
        parts = rel.split("/")
        for depth in range(1, len(parts)):
            if "/".join(parts[:depth]) in names:
                raise IntegrityError(f"unsafe path in manifest: {'/'.join(parts[:depth])!r} is a file and a folder")
