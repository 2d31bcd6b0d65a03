"""The one local Prefect server the CLI reuses: started once (by `trainctl server up` or the first flow command),
detached, on 127.0.0.1; every later flow command talks to it, so none pays a server start and CLI runs appear in
its UI. `PREFECT_API_URL` (environment or the active Prefect profile) always wins; `TRAINCTL_PREFECT_SERVER=temporary`
keeps Prefect's temporary server per command (cli/prefect_server.py ties it to the command).

Its files live in `$TRAINCTL_DATA_HOME/prefect-server/` (default `${XDG_DATA_HOME:-~/.local/share}/trainctl/`): the
server's PREFECT_HOME (its database), `server.log`, and `server.json` (URL and PID). Standard library only: `up`,
`down` and `status` never import Prefect (~2 s).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from core.errors import InvalidInputError, TrainctlError, UsageError

HOST = "127.0.0.1"
DEFAULT_PORT = 4200
MODE_ENV = "TRAINCTL_PREFECT_SERVER"
DATA_ENV = "TRAINCTL_DATA_HOME"  # not TRAINCTL_DATA_DIR: that names a job's dataset on its instance
PORT_ENV = "TRAINCTL_PREFECT_PORT"
MODES = ("local", "temporary")
STARTUP_TIMEOUT_S = 120.0  # 8-20 s measured on 2 busy cores; a first start also creates the database
STOP_TIMEOUT_S = 10.0
# Prefect settings of the caller that must not reach the server it starts: it has its own home and is no client.
_NOT_FOR_THE_SERVER = ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE", "PREFECT_HOME")


@dataclass(frozen=True)
class LocalServer:
    """What `server.json` records about the server trainctl started."""

    url: str
    pid: int
    port: int
    home: str
    log: str

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    @property
    def ui_url(self) -> str:
        return self.url


def server_dir() -> Path:
    """Where the server's home, log and state file live (not under TRAINCTL_HOME: that is a project folder)."""
    configured = os.environ.get(DATA_ENV)
    base = Path(configured) if configured else Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local/share")
    return (base if configured else base / "trainctl") / "prefect-server"


def _state_file() -> Path:
    return server_dir() / "server.json"


def read_state() -> LocalServer | None:
    """The recorded server, or None (no file, or one that is not ours to read: treated as stale)."""
    try:
        return LocalServer(**json.loads(_state_file().read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _write_state(server: LocalServer) -> None:
    path = _state_file()
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(asdict(server), indent=2) + "\n")
    partial.replace(path)  # atomic: a concurrent reader sees the old file or the new one


def answers(url: str, timeout: float = 2.0) -> bool:
    """The server's /api/health says true. No proxy: a corporate HTTP_PROXY must not see 127.0.0.1."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{url}/api/health", timeout=timeout) as response:
            return bool(response.status == 200 and response.read().strip() == b"true")
    except (OSError, ValueError):
        return False


def alive(pid: int) -> bool:
    """The process runs (reaped first if it is our own child that has exited)."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive, and (see _is_prefect_server) not ours
    return True


def _is_prefect_server(pid: int) -> bool:
    """The PID still runs `prefect server start` (a recycled PID is never signalled)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except FileNotFoundError:
        if Path("/proc/self").exists():
            return False  # Linux, and the process is gone
        ps = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, check=False)
        args = ps.stdout.split()
    except OSError:
        return False
    return "prefect" in " ".join(args) and "server" in args and "start" in args


def running() -> LocalServer | None:
    """The recorded server, if it is alive and answers."""
    server = read_state()
    if server is None or not alive(server.pid) or not answers(server.url):
        return None
    return server


def _port_taken(port: int) -> bool:
    """Something holds HOST:port (bound as a server binds, with SO_REUSEADDR, so TIME_WAIT does not count)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return True
    return False


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One start or stop at a time: two flow commands started together start one server."""
    folder = server_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "server.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _port_refusal(port: int) -> UsageError:
    url = f"http://{HOST}:{port}"
    if answers(url):
        what = "a Prefect server trainctl did not start"
        fix = f"Use it with `export PREFECT_API_URL={url}/api`, or pass --port with a free port"
    else:
        what = "another program"
        fix = f"Pass --port with a free port (e.g. trainctl server up --port {port + 1}), or stop that program"
    return UsageError(f"port {port} on {HOST} is taken by {what}, not trainctl's Prefect server", fix=fix)


def _spawn(port: int) -> LocalServer:
    """`prefect server start` detached: its own session (Ctrl-C of this command does not reach it), log to a file."""
    home = server_dir()
    log = home / "server.log"
    env = {k: v for k, v in os.environ.items() if k not in _NOT_FOR_THE_SERVER}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(port)]
    with log.open("w") as out:
        process = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = LocalServer(url=f"http://{HOST}:{port}", pid=process.pid, port=port, home=str(home), log=str(log))
    _write_state(server)
    return server


def _wait_until_answering(server: LocalServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not answers(server.url):
        if not alive(server.pid):
            raise TrainctlError(
                f"the local Prefect server exited while starting (port {server.port})", fix=f"See {server.log}"
            )
        if time.monotonic() > deadline:
            _terminate(server)
            raise TrainctlError(
                f"the local Prefect server did not answer at {server.url} within {timeout:.0f} s (stopped it)",
                fix=f"See {server.log}; or run with {MODE_ENV}=temporary",
            )
        time.sleep(0.2)


def _configured_port() -> int | None:
    value = os.environ.get(PORT_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise InvalidInputError(PORT_ENV, value, "a TCP port, 1-65535")
    return int(value)


def start(port: int | None = None, timeout: float = STARTUP_TIMEOUT_S) -> tuple[LocalServer, bool]:
    """The running server (started now if needed) and whether this call started it. The port: `port`, else
    $TRAINCTL_PREFECT_PORT, else the last one used, else 4200; a server already up on another port is kept."""
    with _locked():
        if (server := running()) is not None:
            return server, False
        recorded = read_state()
        chosen = port or _configured_port() or (recorded.port if recorded else DEFAULT_PORT)
        if recorded is not None and alive(recorded.pid) and _is_prefect_server(recorded.pid):
            _terminate(recorded)  # ours, but not answering (hung, or half started by a killed command)
        if _port_taken(chosen):
            raise _port_refusal(chosen)
        server = _spawn(chosen)
        _wait_until_answering(server, timeout)
        return server, True


def _terminate(server: LocalServer) -> bool:
    """SIGTERM to the server's process group, SIGKILL after STOP_TIMEOUT_S; True if it was running."""
    if not (alive(server.pid) and _is_prefect_server(server.pid)):
        return False
    for sig, wait_s in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, sig)  # its own session: the group is the server and whatever it started
        deadline = time.monotonic() + wait_s
        while alive(server.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not alive(server.pid):
            break
    return True


def stop() -> LocalServer | None:
    """Stop the recorded server; the stopped server, or None when none was running. A stale record is removed."""
    with _locked():
        server = read_state()
        if server is None:
            return None
        was_running = _terminate(server)
        _state_file().unlink(missing_ok=True)
        return server if was_running else None


def mode() -> str:
    value = os.environ.get(MODE_ENV, "local").strip().lower() or "local"
    if value not in MODES:
        raise InvalidInputError(MODE_ENV, value, " or ".join(MODES))
    return value


def choose_prefect_api() -> None:
    """Which Prefect API this process talks to, decided before its first call (a flow run, a block load):
    PREFECT_API_URL from the environment or the active profile (Prefect Cloud, a team server, the tests' harness)
    always wins; else the local server, started now if it is not up; TRAINCTL_PREFECT_SERVER=temporary keeps
    Prefect's temporary server for this command."""
    if mode() == "temporary":
        return
    from prefect.settings import get_current_settings

    if get_current_settings().api.url:
        return
    server, started = start()
    if started:
        sys.stderr.write(f"started the local Prefect server at {server.ui_url} (UI); `trainctl server down` stops it\n")
        sys.stderr.flush()
    os.environ["PREFECT_API_URL"] = server.api_url
    # Prefect read its settings when it was imported: make it read them again, with this URL.
    from prefect.context import refresh_global_settings_context

    refresh_global_settings_context()
