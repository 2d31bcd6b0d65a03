"""What the agent needs of its machine: its logger, time stamps, atomic files, processes and their groups."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger("trainctl-agent")


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s [%(threadName)s] %(message)s"
    )


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")  # noqa: UP017 (python 3.9 on AL2023)


def parse_time(value: str) -> float | None:
    """An ISO-8601 time (IMDS spells UTC as `Z`, which python 3.9's fromisoformat refuses) -> epoch seconds."""
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)  # noqa: UP017
    return parsed.timestamp()


def write_atomic(path: Path, data: bytes) -> None:
    """Readers (status, stop, tests) never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def exit_status(returncode: int) -> int:
    """A signal death as a shell reports it (128 + signal)."""
    return 128 - returncode if returncode < 0 else returncode


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # a zombie is dead for our purposes
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
        return state != "Z"
    return True


def read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def killpg(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False
