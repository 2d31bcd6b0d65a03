"""Names from S3 that become paths under a folder: core/paths.py's rule, whose agent copy is transfer_helper.py's
`path_problem` (that file is also sent alone, inline over SSM, so it keeps the rule and this module imports it;
tests/core/test_paths.py runs both copies over one table of names)."""

from __future__ import annotations

from .errors import IntegrityError
from .transfer_helper import path_problem

__all__ = ["check_paths", "path_problem"]


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
