"""Building shell commands for instances (sent over SSM) without ever interpolating unquoted input.

Every value goes through `quote`; instance paths go through `on_instance`, which prefixes `$TRAINCTL_ROOT`
(empty on AWS, the instance's root folder in the sandbox) outside the quotes so the shell expands it.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable

ROOT = '"${TRAINCTL_ROOT:-}"'


def quote(value: object) -> str:
    return shlex.quote(str(value))


def on_instance(path: str) -> str:
    """An absolute instance path, quoted, under $TRAINCTL_ROOT: `"${TRAINCTL_ROOT:-}"'/mnt/data'`."""
    if not path.startswith("/"):
        raise ValueError(f"instance paths must be absolute, got {path!r}")
    return ROOT + shlex.quote(path)


def argv(args: Iterable[object]) -> str:
    """A command line that runs exactly these arguments, whatever characters they contain."""
    return " ".join(quote(a) for a in args)
