"""A killed `trainctl` leaves no Prefect server behind (issue 13: kill -9 of a flow command orphaned its temporary
server, 9 of 9 times). Processes are found through /proc, so these tests run on Linux only."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cli import prefect_server

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc")
REPO = Path(__file__).resolve().parents[2]


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (parent := _parent_of(int(entry.name))) is not None:
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _cmdline(pid: int) -> list[str]:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    return []


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for a parent (PID 1 in a container may never reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in {"Z", "X"}


def _wait(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def _port_free(port: int) -> bool:
    """Nobody listens there, and a new server could take it (with SO_REUSEADDR, as servers bind)."""
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket() as taker:
        taker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            taker.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def _reaping(pids: Callable[[], list[int]]) -> Iterator[None]:
    """Whatever the test's assertions say, kill what is left of the tree afterwards."""
    try:
        yield
    finally:
        for pid in pids():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _server_of(cli_pid: int) -> tuple[int, int] | None:
    """(pid, port) of the uvicorn server under the CLI, once it accepts connections."""
    for pid in _descendants(cli_pid):
        args = _cmdline(pid)
        if "uvicorn" in args and "--port" in args:
            port = int(args[args.index("--port") + 1])
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    return pid, port
    return None


def test_kill_9_of_a_flow_command_takes_its_temporary_prefect_server_along() -> None:
    """A real `trainctl teardown` (its flow run starts Prefect's temporary server), against an endpoint that accepts
    connections and never answers, so the command is still busy when it is killed once its server is up."""
    with socket.socket() as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(64)
        endpoint = f"http://127.0.0.1:{black_hole.getsockname()[1]}"
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # the temporary server, not a harness
        env["TRAINCTL_PREFECT_SERVER"] = "temporary"  # the opt-out from the local server this test is about
        command = [sys.executable, "-m", "cli.main", "--endpoint-url", endpoint, "teardown", "--job", "j", "--json"]
        cli = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        tree: list[int] = []
        with _reaping(lambda: tree):
            server = None
            deadline = time.monotonic() + 120  # importing prefect and starting its server: 5-20 s on 2 busy cores
            while server is None and cli.poll() is None and time.monotonic() < deadline:
                server = _server_of(cli.pid)
                time.sleep(0.1)
            assert server is not None and cli.poll() is None, cli.stderr.read().decode() if cli.stderr else ""
            server_pid, port = server
            tree = _descendants(cli.pid)
            assert server_pid in tree and len(tree) == 2  # the watchdog and, under it, the server

            cli.send_signal(signal.SIGKILL)
            cli.wait()
            assert _wait(lambda: not any(_alive(pid) for pid in tree), 10), [_cmdline(p) for p in tree if _alive(p)]
            assert _wait(lambda: _port_free(port), 5)


def _watched_sleep(tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """A parent process that starts a sleeper under the watchdog (as Prefect's Popen does in trainctl) and waits;
    the sleep's pid lands in a file."""
    pid_file = tmp_path / "child.pid"
    server = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(120)"
    script = (
        "import subprocess, sys, time\n"
        "from cli.prefect_server import watched\n"
        "subprocess.Popen(watched([sys.executable, '-c', sys.argv[1], sys.argv[2]]))\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script, server, str(pid_file)], cwd=REPO)
    assert _wait(lambda: pid_file.exists() and pid_file.read_text().isdigit(), 20)
    return parent, pid_file


def test_watchdog_ends_the_server_when_its_parent_is_killed(tmp_path: Path) -> None:
    parent, pid_file = _watched_sleep(tmp_path)
    server = int(pid_file.read_text())
    tree = _descendants(parent.pid)
    with _reaping(lambda: tree):
        assert server in tree and len(tree) == 2
        parent.kill()
        parent.wait()
        assert _wait(lambda: not any(_alive(pid) for pid in tree), 5)


def test_killing_the_watchdog_itself_ends_the_server(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG set in the server towards the watchdog: kill -9 of the watchdog is covered too."""
    parent, pid_file = _watched_sleep(tmp_path)
    server = int(pid_file.read_text())
    watchdog = _parent_of(server)
    assert watchdog is not None
    with _reaping(lambda: [parent.pid, watchdog, server]):
        os.kill(watchdog, signal.SIGKILL)
        assert _wait(lambda: not _alive(server), 5)
        assert parent.poll() is None  # the parent (trainctl) is not affected


def test_watchdog_passes_on_sigterm_and_the_exit_code() -> None:
    """Prefect stops its server with SIGTERM (to the watchdog) and restarts it on exit code 3 (port taken)."""
    exits_3 = subprocess.run(prefect_server.watched([sys.executable, "-c", "raise SystemExit(3)"]), check=False)
    assert exits_3.returncode == 3
    # A handler that exits 0 proves the server itself got the SIGTERM, not only the watchdog.
    handles = (
        "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); "
        "print('up', flush=True); time.sleep(60)"
    )
    watchdog = subprocess.Popen(prefect_server.watched([sys.executable, "-c", handles]), stdout=subprocess.PIPE)
    assert watchdog.stdout is not None and watchdog.stdout.readline() == b"up\n"
    started = time.monotonic()
    watchdog.terminate()
    assert watchdog.wait(timeout=10) == 0 and time.monotonic() - started < 3
