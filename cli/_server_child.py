"""Runs Prefect's temporary server as a child that ends when the trainctl process that started it is gone.

    python -I cli/_server_child.py <trainctl pid> -- <Prefect's server command ...>

A `trainctl` command without PREFECT_API_URL makes Prefect start a temporary server (uvicorn, ~200 MB). Prefect
stops it at exit (atexit), which never runs when the command is killed (kill -9, an OOM kill, a closed CI job):
the server then lives on under PID 1, forever. cli/prefect_server.py starts Prefect's own command under this
watchdog, which polls its parent's PID every second and ends the server once the parent has changed.

Why a watchdog rather than only prctl(PR_SET_PDEATHSIG) in the server: PDEATHSIG fires when the *thread* that
forked exits, and Prefect may start the server from a short-lived worker thread (the events worker does), which
would kill a healthy server; it is also Linux only. Polling getppid() works on Linux and macOS alike. PDEATHSIG
is still set in the server towards this watchdog (single-threaded, so that is safe): should the watchdog itself be
killed, the server goes with it on Linux.

Standard library only, and run with -I: it must start in milliseconds and never import the user's files.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

POLL_S = 1.0
# Prefect's stop() sends SIGTERM and waits 5 s before SIGKILL: the server gets a little less to shut down.
GRACE_S = 4.0
PR_SET_PDEATHSIG = 1


def _die_with(watchdog: int) -> None:
    """In the server, before exec (Linux): SIGTERM when the watchdog dies; exit if it already has."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != watchdog:
        os._exit(1)


class _Watchdog:
    def __init__(self, parent: int, command: list[str]) -> None:
        self.parent = parent
        me = os.getpid()
        self.child = subprocess.Popen(command, preexec_fn=lambda: _die_with(me))  # preexec_fn: safe, one thread
        self.kill_at: float | None = None

    def end(self, sig: int = signal.SIGTERM) -> None:
        """Ask the server to stop; it is killed if it has not exited within the grace."""
        if self.child.poll() is None:
            self.child.send_signal(sig)
        if self.kill_at is None:
            self.kill_at = time.monotonic() + GRACE_S

    def run(self) -> int:
        while True:
            try:
                code = self.child.wait(timeout=POLL_S)
                return code if code >= 0 else 128 - code
            except subprocess.TimeoutExpired:
                pass
            if os.getppid() != self.parent:  # trainctl is gone: we were re-parented
                self.end()
            if self.kill_at is not None and time.monotonic() > self.kill_at:
                self.child.kill()


def main(argv: list[str]) -> int:
    if len(argv) < 3 or not argv[0].isdigit() or argv[1] != "--":
        sys.stderr.write("usage: _server_child.py PARENT_PID -- COMMAND...\n")
        return 2
    parent = int(argv[0])
    if os.getppid() != parent:
        return 1  # the parent died before we started: start nothing
    watchdog = _Watchdog(parent, argv[2:])

    def forward(signum: int, frame: Any) -> None:  # Prefect's stop()
        watchdog.end(signum)

    signal.signal(signal.SIGTERM, forward)
    # Ctrl-C reaches the server itself (same process group); passing it on again would make uvicorn force-quit.
    # Set after the server started, so that it does not inherit the SIG_IGN.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return watchdog.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
