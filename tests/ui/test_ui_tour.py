"""The UI tour (`make test-ui`, not in `make test`): a real Prefect server, the served deployments, a safe-teardown
against the sandbox — one dry run, one with require_approval left paused — then the UI in headless Chromium
(Debian's /usr/bin/chromium driven by Playwright; no browser download). Screenshots go to docs/ui/, where the
README's "UI tour" uses them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest

from core.ebs import VolumeSpec
from tests.conftest import exported_sandbox

playwright_api = pytest.importorskip("playwright.sync_api", reason="the `ui` extra: pip install -e '.[ui]'")

pytestmark = pytest.mark.ui

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "docs" / "ui"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
BUCKET = "trainctl-ui-tour"
JOB = "ui-tour"
TEARDOWN = "safe-teardown/safe-teardown"
# The served deployments, as the product serves them (deployments/: one definition for serve and prefect.yaml).
SERVE = "from deployments.serve import main; raise SystemExit(main())"


@dataclass
class Tour:
    url: str  # the server's root (the UI); the API is url + "/api"
    dry_run_id: str
    paused_id: str
    scratch_volume: str
    page: Any  # playwright Page


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(api: str, server: subprocess.Popen[bytes], log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.poll() is None, f"prefect server exited: {log.read_text()[-2000:]}"
        try:
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"prefect server not healthy after {timeout_s} s: {log.read_text()[-2000:]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def prefect_server() -> Iterator[str]:
    """`prefect server start` on a free port with its own PREFECT_HOME; its API URL is set for this process."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home = Path(tempfile.mkdtemp(prefix="trainctl-ui-"))
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home / "prefect"), "PREFECT_API_URL": api}
    log = home / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_healthy(api, server, log)
        with temporary_settings(updates={PREFECT_API_URL: api}):
            os.environ["PREFECT_API_URL"] = api  # for what this process starts (the served deployments)
            yield api
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        _stop(server)


def _scene() -> str:
    """A job's leftovers: a scratch volume (ephemeral: the plan deletes it) and its persistent data volume (kept)."""
    from tasks.ebs import create_volume

    scratch = create_volume.fn(
        VolumeSpec(name=f"{JOB}-scratch", size_gib=10, persistent=False), availability_zone="us-east-1a", job=JOB
    )
    create_volume.fn(
        VolumeSpec(name=f"{JOB}-data", size_gib=10, persistent=True), availability_zone="us-east-1a", job=JOB
    )
    return scratch.id


def _request(**fields: Any) -> dict[str, Any]:
    return {"request": {"job": JOB, "bucket": BUCKET, "min_age_minutes": 0, **fields}}


def _wait_state(flow_run_id: str, states: set[str], timeout_s: float = 180) -> str:
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            state = client.read_flow_run(UUID(flow_run_id)).state
            if state is not None and state.type.value in states:
                return state.type.value
            time.sleep(1)
    raise AssertionError(f"flow run {flow_run_id} not in {states} after {timeout_s} s")


def _wait_deployments(names: set[str], timeout_s: float = 120) -> None:
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            if names <= {d.name for d in client.read_deployments()}:
                return
            time.sleep(1)
    raise AssertionError(f"deployments {names} not served after {timeout_s} s")


def _start_teardown(**fields: Any) -> str:
    """A safe-teardown run of the served deployment, started without waiting; its ID."""
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    run = run_deployment(TEARDOWN, parameters=_request(**fields), timeout=0)
    assert isinstance(run, FlowRun)
    return str(run.id)


@pytest.fixture(scope="module")
def tour(prefect_server: str) -> Iterator[Tour]:
    with exported_sandbox() as cloud:
        cloud.client("s3").create_bucket(Bucket=BUCKET)
        scratch = _scene()
        log = Path(tempfile.mkdtemp(prefix="trainctl-ui-serve-")) / "serve.log"
        with log.open("wb") as out:
            served = subprocess.Popen([sys.executable, "-c", SERVE], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_deployments({"safe-teardown", "spot-watch", "cost-watch"})
            dry = _start_teardown(dry_run=True)
            paused = _start_teardown(dry_run=False, require_approval=True)
            assert _wait_state(dry, {"COMPLETED", "FAILED", "CRASHED"}) == "COMPLETED", log.read_text()[-3000:]
            assert _wait_state(paused, {"PAUSED", "FAILED", "CRASHED"}) == "PAUSED", log.read_text()[-3000:]
            with playwright_api.sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
                page = browser.new_page(viewport={"width": 1440, "height": 900})
                page.set_default_timeout(30_000)
                yield Tour(prefect_server.removesuffix("/api"), dry, paused, scratch, page)
                browser.close()
        finally:
            _stop(served)


def _open(tour: Tour, path: str, expect: str) -> Any:
    tour.page.goto(f"{tour.url}{path}")
    tour.page.get_by_text(expect, exact=False).first.wait_for()
    tour.page.wait_for_load_state("networkidle")  # the run graph and the tables draw after the first text
    return tour.page


def test_the_ui_shows_the_deployments_with_schedules_a_completed_teardown_and_its_artifacts(tour: Tour) -> None:
    page = _open(tour, "/deployments", "safe-teardown")
    text = page.inner_text("body")
    for name in ("prewarm", "train-launch", "transfer", "safe-teardown", "spot-watch", "cost-watch"):
        assert name in text, f"deployment {name} not on the deployments page"
    # The schedules column: spot-watch every minute, cost-watch every 15 minutes.
    assert "Every minute" in text and "Every 15 minutes" in text, text
    page.screenshot(path=str(SHOTS / "deployments.png"), full_page=True)

    page = _open(tour, f"/runs/flow-run/{tour.dry_run_id}", "teardown-ui-tour")
    assert "Completed" in page.inner_text("body")
    page.screenshot(path=str(SHOTS / "teardown-dry-run.png"), full_page=True)
    page.get_by_text("Artifacts", exact=True).first.click()
    page.get_by_text("teardown-plan", exact=False).first.wait_for()
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(SHOTS / "teardown-artifacts.png"), full_page=True)
    # The plan itself: the scratch volume to delete, the persistent data volume kept, each with why.
    page.get_by_text("teardown-plan", exact=False).first.click()
    page.get_by_text(tour.scratch_volume).first.wait_for()
    page.wait_for_load_state("networkidle")
    text = page.inner_text("body")
    assert "delete" in text and "persistent" in text, text
    page.screenshot(path=str(SHOTS / "teardown-plan.png"), full_page=True)


def _approval_form(tour: Tour) -> str:
    """The paused run's Resume dialog (TeardownApproval's fields), as text."""
    page = _open(tour, f"/runs/flow-run/{tour.paused_id}", "Paused")
    page.get_by_role("button", name="Resume").first.click()
    form = page.locator(".p-modal").filter(has_text="Resume Flow Run")
    form.wait_for()
    page.wait_for_load_state("networkidle")
    return str(form.inner_text())


def test_the_paused_teardown_offers_the_approval_form(tour: Tour) -> None:
    text = _approval_form(tour).lower()
    assert "approve" in text and "note" in text and "submit" in text, text
    tour.page.screenshot(path=str(SHOTS / "teardown-approval.png"), full_page=True)


def test_the_approval_form_shows_the_plan_being_approved(tour: Tour) -> None:
    """The plan the approver approves: the scratch volume it deletes is named in the form."""
    assert tour.scratch_volume in _approval_form(tour)
