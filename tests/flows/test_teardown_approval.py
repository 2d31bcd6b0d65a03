"""safe-teardown as a user meets it in the UI: the approval form shows the plan, the approver's note is kept in the
report, task runs are named after what they touch, and a second teardown of the same job started meanwhile waits
for the first (then finds nothing left to do) instead of acting at the same time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterName,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
)
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.sorting import ArtifactSort
from prefect.flow_runs import resume_flow_run
from prefect.input.actions import read_flow_run_input

import flows.teardown
from flows.teardown import TeardownReport, TeardownRequest, safe_teardown
from sandbox import Sandbox
from tests.flows.test_teardown import BUCKET, _job_instance, _volume, world

pytestmark = pytest.mark.sandbox
JOB = "ui-job"


def _runs() -> list[FlowRun]:
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"teardown-{JOB}"])))


def _until(what: str, check: Callable[[], Any], timeout_s: float = 90) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _artifacts(flow_run_id: UUID | None = None, key: str | None = None) -> list[Any]:
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]) if flow_run_id else None,
                key=ArtifactFilterKey(any_=[key]) if key else None,
            ),
            sort=ArtifactSort.CREATED_DESC,
        )


def _in_thread(request: TeardownRequest, out: dict[str, Any], name: str) -> threading.Thread:
    """Run the flow in a thread; its report (or exception) lands in out[name], the thread in out["threads"]."""

    def run() -> None:
        try:
            out[name] = safe_teardown(request)
        except BaseException as exc:  # the test reports it
            out[name] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    out.setdefault("threads", []).append(thread)
    return thread


def test_the_approval_shows_the_plan_keeps_the_note_and_a_second_teardown_of_the_job_waits(
    cloud: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flows.teardown, "APPROVAL_POLL_S", 1)  # Prefect's 10 s between "answered yet?" looks
    cloud.client("s3").create_bucket(Bucket=BUCKET)  # `world` lists it
    instance = _job_instance(cloud, JOB, "ui-1")
    data = _volume("data-ui", JOB, persistent=True, on=instance)
    scratch = _volume("scratch-ui", JOB, on=instance)
    request = TeardownRequest(job=JOB, dry_run=False, force=True, require_approval=True)
    out: dict[str, Any] = {}

    # A: plans, publishes, pauses for approval holding the job's turn.
    _in_thread(request, out, "first")
    try:
        _approve_while_another_waits(cloud, request, out, (instance, data, scratch))
    finally:  # a failed check must not leave a run paused (and another waiting behind it) past the test
        for run in _runs():
            if run.state and run.state.is_paused():
                resume_flow_run(run.id, run_input={"approve": False, "note": "test ended"})
        for thread in out["threads"]:
            thread.join(120)


def _approve_while_another_waits(
    cloud: Sandbox,
    request: TeardownRequest,
    out: dict[str, Any],
    ids: tuple[str, str, str],
) -> None:
    instance, data, scratch = ids
    paused = _until("the first run's pause", lambda: [r for r in _runs() if r.state and r.state.is_paused()])[0]
    keyset = paused.state.state_details.run_input_keyset  # where Prefect keeps the form (the UI reads it there)
    form_text = _until("the form's description", lambda: read_flow_run_input(keyset["description"], paused.id))
    # The form shows the plan: what goes and what stays, with the reasons, and the savings.
    assert f"**terminate** `{instance}`" in form_text
    assert f"**detach-and-keep** `{data}`" in form_text and "persistent" in form_text
    assert f"**delete** `{scratch}`" in form_text and "saves about $" in form_text

    # B: the same job's teardown, without approval: it must wait for A's turn, not act while A waits for a human.
    _in_thread(request.model_copy(update={"require_approval": False}), out, "second")
    other = _until(
        "the second run", lambda: [r for r in _runs() if r.id != paused.id and r.state and r.state.is_running()]
    )[0]
    for _ in range(10):  # B had time to plan and act, were it not waiting
        assert world(cloud)["instances"][instance] == "running"
        assert not _artifacts(other.id)
        time.sleep(0.5)

    resume_flow_run(paused.id, run_input={"approve": True, "note": "ticket OPS-42: done with ui-job"})
    for thread in out["threads"]:
        thread.join(120)
    a, b = out["first"], out["second"]
    assert isinstance(a, TeardownReport) and isinstance(b, TeardownReport), out

    after = world(cloud)
    assert after["instances"][instance] == "terminated"
    assert after["volumes"][data] == ("available", ()) and scratch not in after["volumes"]
    assert a.approved and a.approval_note == "ticket OPS-42: done with ui-job" and not a.failed
    # B planned after A had acted: nothing left to do, nothing failed (they did not interleave).
    assert not b.plan.operations and not b.results and not b.failed
    # The report keeps the note; the keys name the job, so the Artifacts page has its history.
    report = _artifacts(paused.id, f"teardown-report-{JOB}")
    assert report and "ticket OPS-42: done with ui-job" in str(report[0].data)
    assert len(_artifacts(key=f"teardown-plan-{JOB}")) == 2  # A's plan and B's, one key
    graph = str(_artifacts(paused.id, f"teardown-graph-{JOB}")[0].data)
    assert f"- **terminate** `{instance}`" in graph and f"  - **detach-and-keep** `{data}`" in graph
    with get_client(sync_client=True) as client:
        names = {
            t.name
            for t in client.read_task_runs(
                task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[paused.id]))
            )
        }
    assert {f"terminate {instance}", f"detach {data}", f"delete {scratch}"} <= names, names
