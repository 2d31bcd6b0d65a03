"""The one rule for a name from elsewhere (an S3 key, an archive member, a checkpoint manifest entry, a file
another machine listed) that is about to become a file path under a folder: it must stay inside that folder and
be a name every filesystem we write to accepts — checked for every name before the first byte is written.

Refused: empty names, absolute names, `..`, `.` and empty segments (`a//b`), backslashes (a separator on
Windows, and what s5cmd and aws-cli read as one on some paths), control characters (NUL, newline, ESC... — C0,
DEL and C1), names that are not valid UTF-8, a segment over 255 bytes or a name over 4096 bytes (Linux's
NAME_MAX and PATH_MAX), and, across a listing, a name that is both a file and a folder (`a` and `a/b`).

Everything else is a literal name and copied as such: unicode, spaces, quotes, `*`, `?`, `[`, leading dashes.

The same rule is written out once more, where core cannot be imported: `path_problem` in agent/transfer_helper.py
(core.transfer.INSTANCE_HELPER, sent alone to the instance), which agent/paths.py imports for the agent;
tests/core/test_paths.py runs both over one table of names.
"""

from __future__ import annotations

from collections.abc import Iterable

from core.errors import UsageError

MAX_SEGMENT_BYTES = 255
MAX_PATH_BYTES = 4096


class PathEscapeError(UsageError):
    """A name inside a listing or an archive would land outside the destination, or cannot be a file name."""


def _is_control(ch: str) -> bool:
    code = ord(ch)
    return code < 0x20 or 0x7F <= code < 0xA0


def path_problem(rel: str) -> str | None:
    """Why `rel` cannot become a path under a folder (a short phrase), or None when it can."""
    if not rel:
        return "is empty"
    if rel.startswith("/"):
        return "is absolute"
    if "\\" in rel:
        return "contains a backslash"
    if any(_is_control(ch) for ch in rel):
        return "contains a control character"
    try:
        size = len(rel.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "has a '..', '.' or empty segment"
    if any(len(p.encode("utf-8")) > MAX_SEGMENT_BYTES for p in parts):
        return f"has a segment over {MAX_SEGMENT_BYTES} bytes"
    if size > MAX_PATH_BYTES:
        return f"is over {MAX_PATH_BYTES} bytes"
    return None


_FIX = "Rename or remove it in the source (or leave it out, e.g. with --exclude where the command has one)"


def safe_relative(rel: str, *, what: str = "name", reserved: str | None = None, shown: str = "") -> str:
    """`rel` itself when it passes the rule (and does not start with the `reserved` prefix), else
    PathEscapeError naming it (repr, so control characters show; `shown` is prepended, e.g. the S3 prefix)."""
    problem = path_problem(rel)
    if problem is None and reserved and rel.startswith(reserved):
        problem = f"starts with trainctl's reserved prefix {reserved!r}"
    if problem is not None:
        raise PathEscapeError(f"{what} {shown + rel!r} {problem}; refused before anything was written", fix=_FIX)
    return rel


def check_all_safe(rels: Iterable[str], *, what: str, reserved: str | None = None, shown: str = "") -> None:
    """Every name passes `safe_relative`, and none is both a file and a folder (`a` and `a/b`: one of them could
    not be written, or would be written through the other)."""
    names = set()
    for rel in rels:
        names.add(safe_relative(rel, what=what, reserved=reserved, shown=shown))
    for rel in sorted(names):
        parts = rel.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if folder in names:
                raise PathEscapeError(
                    f"{what} {shown + folder!r} is a file and also a folder of {shown + rel!r}; refused before "
                    "anything was written",
                    fix=_FIX,
                )
