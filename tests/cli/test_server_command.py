"""`trainctl server up|down|status` and the flow commands' choice of Prefect API (cli/local_server.py): one real
local server for the whole module (started by the first flow command, as a user's first command would), its files
in a temp dir, on a free port; stopped in the fixture's finally whatever the tests did."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli import local_server
from core.errors import InvalidInputError

REPO = Path(__file__).resolve().parents[2]
STARTED = "started the local Prefect server at"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=240
    )


def _state(data_dir: Path) -> dict[str, Any]:
    return dict(json.loads((data_dir / "prefect-server" / "server.json").read_text()))


def _flow_runs(api_url: str) -> dict[str, str]:
    """Flow run name → state type, as the server's API lists them."""
    response = httpx.post(f"{api_url}/flow_runs/filter", json={}, timeout=10, trust_env=False)
    response.raise_for_status()
    return {run["name"]: run["state_type"] for run in response.json()}


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return not local_server.alive(pid)
    return state in {"Z", "X"}


@pytest.fixture(scope="module")
def cloud_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A sandbox and the environment of a user with no PREFECT_API_URL, whose data dir is a temp dir; the local
    server (whoever started it) is stopped at the end."""
    from sandbox import Sandbox

    data_dir = tmp_path_factory.mktemp("data")
    env = {k: v for k, v in os.environ.items() if k not in {"PREFECT_API_URL", local_server.MODE_ENV}}
    env.update({local_server.DATA_ENV: str(data_dir), local_server.PORT_ENV: str(_free_port())})
    # The server's scheduler looks for due deployments every second, not every minute (the test's wait, not a fix).
    env["PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS"] = "1"
    with Sandbox(boot_delay=0.1) as cloud:
        env.update(cloud.env)
        try:
            yield env
        finally:
            _cli(env, "server", "down")
            with contextlib.suppress(OSError, ValueError, KeyError):
                os.killpg(_state(data_dir)["pid"], signal.SIGKILL)  # `down` failed: never leave it running


def test_port_taken_by_another_program_is_refused_naming_the_fix(cloud_env: dict[str, str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = _cli(cloud_env, "server", "up", "--port", str(port))
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == (
        f"error: port {port} on 127.0.0.1 is taken by another program, not trainctl's Prefect server. "
        f"Pass --port with a free port (e.g. trainctl server up --port {port + 1}), or stop that program"
    )
    assert not (Path(cloud_env[local_server.DATA_ENV]) / "prefect-server" / "server.json").exists()


def test_commands_that_run_no_flow_start_no_server(cloud_env: dict[str, str]) -> None:
    done = _cli(cloud_env, "resources", "list", "--json")
    assert done.returncode == 0, done.stderr
    assert STARTED not in done.stderr
    assert not (Path(cloud_env[local_server.DATA_ENV]) / "prefect-server" / "server.json").exists()


def test_first_flow_command_starts_the_server_detached_and_later_ones_reuse_it(cloud_env: dict[str, str]) -> None:
    data_dir = Path(cloud_env[local_server.DATA_ENV])
    first = _cli(cloud_env, "teardown", "--job", "first", "--json")
    assert first.returncode == 0, first.stderr
    state = _state(data_dir)
    url = f"http://127.0.0.1:{cloud_env[local_server.PORT_ENV]}"
    assert state["url"] == url and state["home"] == str(data_dir / "prefect-server")
    announced = [line for line in first.stderr.splitlines() if STARTED in line]
    assert announced == [f"{STARTED} {url} (UI); `trainctl server down` stops it"]
    # The command has exited; its server answers on, in a session of its own (Ctrl-C of the command missed it).
    assert local_server.answers(url) and os.getsid(state["pid"]) == state["pid"]
    assert _flow_runs(f"{url}/api") == {"teardown-first": "COMPLETED"}

    second = _cli(cloud_env, "teardown", "--job", "second", "--json")
    assert second.returncode == 0, second.stderr
    assert STARTED not in second.stderr and _state(data_dir)["pid"] == state["pid"]
    assert _flow_runs(f"{url}/api") == {"teardown-first": "COMPLETED", "teardown-second": "COMPLETED"}


def test_up_when_up_starts_nothing_and_status_sees_it_answering(cloud_env: dict[str, str]) -> None:
    data_dir = Path(cloud_env[local_server.DATA_ENV])
    pid = _state(data_dir)["pid"]
    up = _cli(cloud_env, "server", "up", "--json")
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout)["started"] is False and _state(data_dir)["pid"] == pid
    status = json.loads(_cli(cloud_env, "server", "status", "--json").stdout)
    url = f"http://127.0.0.1:{cloud_env[local_server.PORT_ENV]}"
    assert status | {"log": None} == {
        "url": url,
        "api_url": f"{url}/api",
        "ui_url": url,
        "pid": pid,
        "running": True,
        "answering": True,
        "home": str(data_dir / "prefect-server"),
        "log": None,
        "prefect_api_url_env": None,
    }
    assert Path(status["log"]).read_text()  # the server's own output, for when it does not start


def test_prefect_api_url_in_the_environment_wins(cloud_env: dict[str, str], tmp_path: Path) -> None:
    """A flow command with PREFECT_API_URL (here: the module's server, as a team server would be) and a data dir
    without any server: the run goes to that URL, and no local server is started."""
    api_url = _state(Path(cloud_env[local_server.DATA_ENV]))["url"] + "/api"
    env = {**cloud_env, "PREFECT_API_URL": api_url, local_server.DATA_ENV: str(tmp_path)}
    done = _cli(env, "teardown", "--job", "elsewhere", "--json")
    assert done.returncode == 0, done.stderr
    assert STARTED not in done.stderr and not (tmp_path / "prefect-server").exists()
    assert _flow_runs(api_url)["teardown-elsewhere"] == "COMPLETED"


def test_deploy_on_the_local_server_gets_spot_watch_scheduled_by_its_scheduler(cloud_env: dict[str, str]) -> None:
    """The schedules run, not only exist: the local server's scheduler puts spot-watch's minute runs on the work
    pool. (With SQLAlchemy 2.1 Prefect 3.8.8's scheduler failed on every loop and nothing was ever scheduled.)"""
    done = _cli(cloud_env, "deploy", "--json")
    assert done.returncode == 0, done.stderr
    api_url = _state(Path(cloud_env[local_server.DATA_ENV]))["url"] + "/api"
    body = {
        "deployments": {"name": {"any_": ["spot-watch"]}},
        "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
    }
    deadline = time.monotonic() + 90
    scheduled: list[Any] = []
    while not scheduled and time.monotonic() < deadline:
        time.sleep(1)
        response = httpx.post(f"{api_url}/flow_runs/filter", json=body, timeout=10, trust_env=False)
        scheduled = response.json()
    assert len(scheduled) >= 2, "the scheduler made no spot-watch run in 90 s (see the server's log)"
    starts = sorted(run["expected_start_time"] for run in scheduled)
    assert starts[0] != starts[1]  # one run a minute, not one


def test_down_ends_the_process_and_a_second_down_is_fine(cloud_env: dict[str, str]) -> None:
    data_dir = Path(cloud_env[local_server.DATA_ENV])
    state = _state(data_dir)
    down = _cli(cloud_env, "server", "down")
    assert down.returncode == 0, down.stderr
    assert down.stdout.strip() == f"local Prefect server stopped (PID {state['pid']})"
    assert _gone(state["pid"]) and not local_server.answers(state["url"])
    assert not (data_dir / "prefect-server" / "server.json").exists()
    again = _cli(cloud_env, "server", "down", "--json")
    assert again.returncode == 0 and json.loads(again.stdout) == {"stopped": False, "pid": None}
    status = _cli(cloud_env, "server", "status")
    assert status.stdout.startswith("local Prefect server: not running")


# The decision itself, in this process: no server is started by any of these.


def test_a_prefect_api_url_from_prefect_settings_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The tests' harness and a profile set the URL through Prefect's settings, not the environment."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.setenv(local_server.DATA_ENV, str(tmp_path))
    monkeypatch.setenv(local_server.MODE_ENV, "local")
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings({PREFECT_API_URL: "http://team-server.invalid/api"}):
        local_server.choose_prefect_api()
    assert "PREFECT_API_URL" not in os.environ and not (tmp_path / "prefect-server").exists()


def test_temporary_mode_leaves_prefect_its_temporary_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(local_server.DATA_ENV, str(tmp_path))
    monkeypatch.setenv(local_server.MODE_ENV, "Temporary")
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    local_server.choose_prefect_api()
    assert "PREFECT_API_URL" not in os.environ and not (tmp_path / "prefect-server").exists()


@pytest.mark.parametrize(("name", "value"), [(local_server.MODE_ENV, "sometimes"), (local_server.PORT_ENV, "42a")])
def test_a_bad_setting_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, value: str) -> None:
    monkeypatch.setenv(local_server.DATA_ENV, str(tmp_path))
    monkeypatch.setenv(local_server.MODE_ENV, "local")
    monkeypatch.setenv(name, value)
    with pytest.raises(InvalidInputError) as refused:
        local_server.mode() if name == local_server.MODE_ENV else local_server.start()
    assert refused.value.field == name and not (tmp_path / "prefect-server" / "server.json").exists()


def test_a_stale_state_file_is_tolerated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A server gone with its machine's reboot: `status` says not running and `down` clears the record."""
    monkeypatch.setenv(local_server.DATA_ENV, str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    folder = tmp_path / "prefect-server"
    folder.mkdir()
    record = {"url": "http://127.0.0.1:9", "pid": int(dead.stdout), "port": 9, "home": str(folder), "log": "x"}
    (folder / "server.json").write_text(json.dumps(record))
    assert local_server.running() is None
    assert local_server.stop() is None and not (folder / "server.json").exists()


def test_data_dir_defaults_to_xdg_data_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(local_server.DATA_ENV)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert local_server.server_dir() == tmp_path / "trainctl" / "prefect-server"
