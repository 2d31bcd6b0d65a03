"""safe-teardown: remove what a job (or a list of IDs, or everything managed) left behind, keep what must survive.

Runbook: inventory → the jobs' S3 state (records, agent heartbeats, checkpoints, staging; for the sweep also
transfer staging and unfinished multipart uploads) → training check over SSM (running managed instances the plan
would otherwise terminate) → plan (core/teardown.py: every resource gets an action and its reasons) →
publish the plan (table + the plan as a nested list: instance → volumes → snapshots, and the steps with what each
waits for) → stop here on a dry run (the default) → optional approval in the UI (the form shows the plan) →
execute step by step in DESIGN.md order → report deleted / kept (with reasons) / failed, and the approver's note.

Artifacts are keyed by the scope (`teardown-plan-<job>`, `teardown-report-<job>`, `…-sweep`), so the Artifacts
page keeps each job's history. Runs that act (not dry runs) take one global concurrency slot per scope
(`teardown-<job>`): a second teardown of the same job waits for the first to end, then plans from AWS as the first
left it, so two never act on one job at once.

Every operation is idempotent (NotFound = done) and re-checks its precondition when it acts; an operation whose
dependency did not succeed is skipped and reported, never forced. So a run killed at any point converges when
run again: the next inventory simply shows less to do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.input import RunInput
from pydantic import BaseModel, Field, model_validator

from blocks.policies import SafetyPolicy
from core import events as ev
from core.errors import InvalidInputError, TrainctlError
from core.jobs import validate_job_name
from core.models import Inventory, ManagedResource
from core.names import NameKind, validate_name
from core.s3uri import validate_bucket
from core.safety import Reason
from core.teardown import (
    STEPS,
    Action,
    Entry,
    JobStorage,
    Operation,
    OpKind,
    Plan,
    Scope,
    Step,
    TeardownPolicy,
    TrainingState,
    plan_markdown,
    plan_teardown,
)
from flows.events import emit_job
from flows.reporting import artifact_key
from tasks.checkpoints import list_bucket_leftovers, list_job_storage
from tasks.ebs import delete_snapshot, delete_volume, detach_volume
from tasks.ec2_instances import keep_on_termination, terminate_instance, wait_terminated
from tasks.inventory import describe_unmanaged
from tasks.inventory import inventory as inventory_task
from tasks.jobs import check_training, detect_training, stop_instance_jobs, wait_training_done
from tasks.s3 import abort_upload, delete_objects


class TeardownRequest(BaseModel):
    """What to tear down and how carefully. Scope: `job`, `ids`, `all_managed`, and/or `sweep` (orphans)."""

    job: str | None = Field(default=None, description="Tear down everything of this job (its trainctl:job tag).")
    ids: list[str] = Field(default_factory=list, description="Instance, volume or snapshot IDs to tear down.")
    all_managed: bool = Field(default=False, description="Every trainctl-managed resource in the region.")
    sweep: bool = Field(default=False, description="Also remove orphans: what no job needs, by the named rules.")
    bucket: str | None = Field(default=None, description="Bucket of the job records, checkpoints and staging.")
    dry_run: bool = Field(default=True, description="Only build and publish the plan; change nothing.")
    require_approval: bool = Field(default=False, description="Pause for approval in the UI before acting.")
    force: bool = Field(default=False, description="Lifts youth only; never 'not managed' or 'training running'.")
    force_training: bool = Field(default=False, description="Stop running jobs (they save a checkpoint) first.")
    wait_for_training: bool = Field(default=False, description="Wait (policy timeout) for running jobs to end.")
    policy: str | None = Field(default=None, description="SafetyPolicy block name; None = the defaults.")
    min_age_minutes: float | None = Field(default=None, description="Override the policy's minimum age.")
    checkpoint_recency_minutes: float | None = Field(
        default=None, description="Override the policy's age under which checkpoints are kept."
    )
    training_wait_timeout_minutes: float | None = Field(
        default=None, description="Override how long wait_for_training waits."
    )
    # The sweep's orphan rules (core/teardown.py TeardownPolicy.rule_age): how old an orphan must be.
    prewarm_max_age_hours: float = Field(default=1.0, ge=0, description="A prewarm instance older is an orphan.")
    orphan_volume_age_hours: float = Field(
        default=24.0, ge=0, description="An unattached ephemeral volume older is an orphan."
    )
    orphan_instance_age_minutes: float = Field(
        default=15.0,
        ge=0,
        description="An instance no job record names, older, is an orphan (younger: a launch in progress).",
    )
    heartbeat_timeout_minutes: float = Field(
        default=15.0, ge=0, description="An instance whose agent has been silent longer is an orphan."
    )
    stale_staging_age_hours: float = Field(
        default=24.0, ge=0, description="A transfer's staging folder older is removed by the sweep."
    )
    upload_max_age_hours: float = Field(
        default=24.0, ge=0, description="An unfinished multipart upload older is aborted by the sweep."
    )
    snapshot_retention: int = Field(default=3, ge=0, description="Snapshots kept per volume by the sweep.")
    account: str | None = Field(default=None, description="AwsAccount block name; None = the AWS environment.")
    as_of: datetime | None = Field(
        default=None,
        description="A rehearsal, with dry_run only: plan as if it were this time (what would the sweep remove in "
        "two hours?); ages and the sweep's rules count up to it. Empty: now, as AWS reports it.",
    )

    @model_validator(mode="after")
    def _has_scope(self) -> TeardownRequest:
        if not (self.job or self.ids or self.all_managed or self.sweep):
            raise ValueError("name a job, resource IDs, all_managed=True or sweep=True: teardown has no default scope")
        if self.job:
            validate_job_name(self.job, field="job")
        if self.bucket is not None:
            self.bucket = validate_bucket(self.bucket, field="bucket")
        if self.policy is not None:
            validate_name(NameKind.BLOCK, self.policy, field="policy")
        if self.as_of is not None and not self.dry_run:
            # A plan for another time would act on what is young now: a rehearsal never acts.
            raise InvalidInputError(
                "as_of", self.as_of.isoformat(), "empty when not a dry run", fix="Rehearse with dry_run=True"
            )
        return self

    @property
    def label(self) -> str:
        return self.job or (",".join(self.ids[:3]) if self.ids else "all" if self.all_managed else "sweep")

    @property
    def scope_key(self) -> str:
        """The scope in artifact keys and the concurrency limit's name: the job, the IDs, `all` or `sweep`."""
        return artifact_key(self.label)

    def scope(self) -> Scope:
        return Scope(job=self.job, ids=[i.strip() for i in self.ids], all_managed=self.all_managed)


class OpResult(BaseModel):
    id: str
    step: Step
    status: Literal["done", "already-done", "failed", "skipped"]
    detail: str = ""


class KeptResource(BaseModel):
    id: str
    action: Action
    reasons: list[str]


class TeardownReport(BaseModel):
    plan: Plan
    executed: bool
    approved: bool | None = None
    results: list[OpResult] = Field(default_factory=list)
    deleted: list[str] = Field(default_factory=list)
    kept: list[KeptResource] = Field(default_factory=list)
    failed: list[OpResult] = Field(default_factory=list)
    monthly_savings_usd: float = 0.0
    approval_note: str = ""


class TeardownApproval(RunInput):
    """What the UI asks before a teardown acts (only with require_approval=True); the form shows the plan."""

    approve: bool = Field(default=False, description="Act on the plan shown above.")
    note: str = Field(default="", description="Why (kept in the teardown report and the run's log).")


# How often a paused run asks whether it was answered (Prefect's default); a module constant so tests can shorten it.
APPROVAL_POLL_S = 10
# How long a teardown waits for another one of the same scope to end: its approval may take the pause's hour.
TURN_WAIT_S = 2 * 3600


def _policy(request: TeardownRequest) -> tuple[TeardownPolicy, float]:
    block = SafetyPolicy.load_or_default(request.policy)
    minutes = request.min_age_minutes if request.min_age_minutes is not None else block.min_age_minutes
    recency = (
        request.checkpoint_recency_minutes
        if request.checkpoint_recency_minutes is not None
        else block.checkpoint_recency_minutes
    )
    timeout = request.training_wait_timeout_minutes or block.training_wait_timeout_minutes
    return (
        TeardownPolicy(
            min_age=timedelta(minutes=minutes),
            checkpoint_recency=timedelta(minutes=recency),
            ephemeral_volumes=block.ephemeral_volumes,
            prewarm_max_age=timedelta(hours=request.prewarm_max_age_hours),
            orphan_volume_age=timedelta(hours=request.orphan_volume_age_hours),
            snapshot_retention=request.snapshot_retention,
            orphan_instance_age=timedelta(minutes=request.orphan_instance_age_minutes),
            heartbeat_timeout=timedelta(minutes=request.heartbeat_timeout_minutes),
            stale_staging_age=timedelta(hours=request.stale_staging_age_hours),
            upload_max_age=timedelta(hours=request.upload_max_age_hours),
        ),
        timeout * 60,
    )


def _instances_to_check(
    inventory: Inventory,
    request: TeardownRequest,
    policy: TeardownPolicy,
    now: datetime,
    unmanaged: Any,
    storage: list[JobStorage],
) -> list[str]:
    """Running managed instances the plan would terminate but for the training check: ask the planner itself."""
    draft = plan_teardown(
        inventory,
        scope=request.scope(),
        now=now,
        policy=policy,
        storage=storage,
        unmanaged=unmanaged,
        force=request.force,
        sweep=request.sweep,
    )
    return [
        e.id
        for e in draft.entries
        if e.kind == "instance" and any(r.reason == Reason.TRAINING_UNKNOWN.value for r in e.reasons)
    ]


def planning_time(request: TeardownRequest, inventory: Inventory) -> datetime:
    """The time ages are counted up to: AWS's (the inventory's), or the rehearsal's `as_of`."""
    return request.as_of or inventory.taken_at


def _storage(request: TeardownRequest, inventory: Inventory) -> list[JobStorage]:
    if not request.bucket:
        return []
    if request.all_managed or request.sweep:
        return list_job_storage(request.bucket, None, account=request.account)  # every job in the bucket
    if request.job:
        return list_job_storage(request.bucket, [request.job], account=request.account)
    return []


def publish_plan(plan: Plan, inventory: Inventory, scope_key: str) -> str:
    """The plan as a table (every entry with its reasons) and as markdown a reader follows (returned: the approval
    form shows it too): each resource under its owner with its action and reasons, then the steps in order."""
    rows = [
        {
            "resource": e.id,
            "kind": e.kind,
            "job": e.job or "",
            "action": e.action.value,
            "reasons": "; ".join(f"{r.reason}: {r.detail}" for r in e.reasons) or "",
            "notes": "; ".join(e.notes),
            "age_s": e.age_seconds if e.age_seconds is not None else "",
            "usd_per_month_saved": e.monthly_usd if e.monthly_usd is not None else "",
            "sweep": e.sweep,
        }
        for e in plan.entries
    ]
    create_table_artifact(rows, key=artifact_key("teardown-plan", scope_key), description="teardown plan")
    text = plan_markdown(plan, inventory)
    create_markdown_artifact(text, key=artifact_key("teardown-graph", scope_key), description="teardown graph")
    return text


def _not_found(exc: BaseException) -> bool:
    code = str(getattr(exc, "code", "") or "")
    return code.endswith("NotFound") or code in {"NoSuchKey", "InvalidVolume.NotFound"}


@dataclass(frozen=True)
class _Acting:
    """What every operation is carried out with: the plan, the policy, the request and the training wait."""

    plan: Plan
    policy: TeardownPolicy
    request: TeardownRequest
    timeout_s: float

    @property
    def min_age(self) -> timedelta:
        return timedelta(0) if self.request.force else self.policy.min_age


def _wait_training(op: Operation, act: _Acting) -> tuple[str, str]:
    assert op.instance_id
    state: TrainingState = wait_training_done(op.instance_id, timeout_s=act.timeout_s, account=act.request.account)
    if state.status != "idle":
        raise TrainctlError(f"training still {state.status} on {op.instance_id} after {act.timeout_s:.0f} s")
    return "done", "training ended"


def _stop_jobs(op: Operation, act: _Acting) -> tuple[str, str]:
    assert op.instance_id
    # Through each job's agent (tasks/jobs.py): the trainer saves, the status says `stopped`.
    found = check_training(op.instance_id, account=act.request.account)
    if found.status == "unknown":
        raise TrainctlError(f"could not ask the agents on {op.instance_id}: {found.detail}")
    lines = stop_instance_jobs(op.instance_id, found.jobs, bucket=act.request.bucket, account=act.request.account)
    return "done", "; ".join(lines) or "no job of ours was running"


def _flush(op: Operation, act: _Acting) -> tuple[str, str]:
    assert op.instance_id
    # The agent's stop ends with the checkpoint, log and final status in S3: an agent still alive has not finished
    # that, and the terminate must wait for it.
    after = check_training(op.instance_id, account=act.request.account)
    if after.status == "unknown" or after.jobs:
        still = ", ".join(after.jobs) or after.detail
        raise TrainctlError(f"not every job on {op.instance_id} has ended after the stop ({still})")
    return "done", "every job's agent ended: checkpoints, logs and statuses are in S3"


def _keep_on_termination(op: Operation, act: _Acting) -> tuple[str, str]:
    assert op.instance_id
    keep_on_termination(op.instance_id, op.target, account=act.request.account)
    return "done", f"DeleteOnTermination off on {op.instance_id}"


def _detach(op: Operation, act: _Acting) -> tuple[str, str]:
    assert op.instance_id
    try:
        keep_on_termination(op.instance_id, op.target, account=act.request.account)
    except Exception as exc:
        if not _not_found(exc):  # the instance is gone already: nothing can delete the volume now
            raise
    volume = detach_volume(op.target, account=act.request.account)
    return "done", f"{volume.id} {volume.state}"


def _terminate(op: Operation, act: _Acting) -> tuple[str, str]:
    # Training was checked when the plan was made; a job may have started since (or during an approval pause).
    # Unless this plan stops or waits for the jobs itself, look again right before.
    handled = any(
        o.kind in {OpKind.STOP_JOB, OpKind.WAIT_TRAINING} and o.instance_id == op.target
        for step in STEPS
        for o in act.plan.ops_in(step)
    )
    if not handled and not act.request.force_training:
        now_state = check_training(op.target, account=act.request.account)
        if now_state.status == "running":
            raise TrainctlError(
                f"training started on {op.target} after the plan was made ({', '.join(now_state.jobs)}); not terminated"
            )
    done = terminate_instance(op.target, wait=False, account=act.request.account)
    return ("done", "terminating") if done else ("already-done", "already terminated")


def _wait_terminated(op: Operation, act: _Acting) -> tuple[str, str]:
    wait_terminated(op.target, account=act.request.account)
    return "done", "terminated"


def _delete_volume(op: Operation, act: _Acting) -> tuple[str, str]:
    result = delete_volume(op.target, min_age=act.min_age, now=act.plan.now, account=act.request.account)
    return ("already-done", "already gone") if result.already_gone else ("done", "; ".join(result.notes))


def _delete_snapshot(op: Operation, act: _Acting) -> tuple[str, str]:
    gone = delete_snapshot(op.target, min_age=act.min_age, now=act.plan.now, account=act.request.account)
    return ("done", "") if gone else ("already-done", "already gone")


def _delete_objects(op: Operation, act: _Acting) -> tuple[str, str]:
    assert op.bucket
    entry = act.plan.entry(op.target)
    window = act.policy.checkpoint_recency if entry and entry.kind == "checkpoint" else act.min_age
    out = delete_objects(op.bucket, op.object_keys, not_after=act.plan.now - window, account=act.request.account)
    if out["skipped"]:
        raise TrainctlError(f"{len(out['skipped'])} object(s) were rewritten since the plan; kept")
    return "done", f"{len(out['deleted'])} object(s)"


def _abort_upload(op: Operation, act: _Acting) -> tuple[str, str]:
    assert op.bucket and op.upload_id
    aborted = abort_upload(op.bucket, op.object_keys[0], op.upload_id, account=act.request.account)
    return ("done", "aborted") if aborted else ("already-done", "completed or aborted since")


# The call that carries out each kind of operation: returns (status, detail).
_RUNNERS: dict[OpKind, Callable[[Operation, _Acting], tuple[str, str]]] = {
    OpKind.WAIT_TRAINING: _wait_training,
    OpKind.STOP_JOB: _stop_jobs,
    OpKind.FLUSH: _flush,
    OpKind.KEEP_ON_TERMINATION: _keep_on_termination,
    OpKind.DETACH: _detach,
    OpKind.TERMINATE: _terminate,
    OpKind.WAIT_TERMINATED: _wait_terminated,
    OpKind.DELETE_VOLUME: _delete_volume,
    OpKind.DELETE_SNAPSHOT: _delete_snapshot,
    OpKind.DELETE_OBJECTS: _delete_objects,
    OpKind.ABORT_UPLOAD: _abort_upload,
}


def execute_plan(plan: Plan, request: TeardownRequest, policy: TeardownPolicy, timeout_s: float) -> list[OpResult]:
    """Every operation in step order; an operation whose dependency did not succeed is skipped, never forced."""
    log = get_run_logger()
    act = _Acting(plan, policy, request, timeout_s)
    results: dict[str, OpResult] = {}
    for step in STEPS:
        for op in plan.ops_in(step):
            blocked = [d for d in op.depends_on if results.get(d) and results[d].status not in {"done", "already-done"}]
            if blocked:
                detail = "; ".join(f"{d} {results[d].status}" for d in blocked)
                results[op.id] = OpResult(id=op.id, step=step, status="skipped", detail=f"precondition: {detail}")
                log.warning("skipped %s (%s)", op.id, detail)
                continue
            try:
                status, detail = _RUNNERS[op.kind](op, act)
            except Exception as exc:
                status, detail = ("already-done", "not found") if _not_found(exc) else ("failed", str(exc))
            results[op.id] = OpResult(id=op.id, step=step, status=status, detail=detail)
            log.info("%s: %s %s", op.id, status, detail)
    return list(results.values())


def summarize(plan: Plan, results: list[OpResult], *, executed: bool, approved: bool | None) -> TeardownReport:
    by_id = {r.id: r for r in results}
    deleted: list[str] = []
    for e in plan.entries:
        if not e.destroys:
            continue
        mine = [r for op_id, r in by_id.items() if op_id.split(":", 1)[1] == e.id]
        if mine and all(r.status in {"done", "already-done"} for r in mine):
            deleted.append(e.id)
    kept = [
        KeptResource(id=e.id, action=e.action, reasons=[f"{r.reason}: {r.detail}" for r in e.reasons if r.blocking])
        for e in plan.entries
        if e.action in {Action.KEEP, Action.DETACH_AND_KEEP}
    ]
    return TeardownReport(
        plan=plan,
        executed=executed,
        approved=approved,
        results=results,
        deleted=deleted,
        kept=kept,
        failed=[r for r in results if r.status in {"failed", "skipped"}],
        monthly_savings_usd=plan.monthly_savings,
    )


@contextmanager
def one_at_a_time(name: str) -> Iterator[None]:
    """Hold the one slot of the global concurrency limit `name` (created with limit 1 if missing) while acting.

    A second run waits for the slot rather than refusing: it then plans from AWS as the first run left it, so the
    user's second request still converges (a re-run is always safe). Prefect does not create a missing limit on
    acquire (without `strict` it silently does not limit at all), hence the create here.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with suppress(ObjectAlreadyExists):  # a concurrent run made it first
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
    holding = False
    try:
        with concurrency(name, occupy=1, timeout_seconds=TURN_WAIT_S, strict=True):
            holding = True
            yield
    except TimeoutError as exc:
        if holding:
            raise
        raise TrainctlError(
            f"another teardown of {name.removeprefix('teardown-')} has been acting for {TURN_WAIT_S // 60} min",
            fix=f"Look at the running safe-teardown runs (an approval may be waiting), or free the {name} "
            "concurrency limit if its run crashed; then run again",
        ) from exc


@flow(name="safe-teardown", flow_run_name="teardown-{request.label}", log_prints=True)
def safe_teardown(request: TeardownRequest) -> TeardownReport:
    """Tear down what a job (or a list of IDs, or everything managed, or the orphan sweep) left behind, keeping what
    must survive: persistent and protected volumes, running training, recent checkpoints. Publishes the plan first;
    acts only when not a dry run, one teardown per job at a time, after approval in the UI if asked.

    Args:
        request: What to tear down (job, IDs, all managed, sweep) and how carefully (dry run, approval, force,
            the safety policy and the sweep's age rules).
    """
    if request.dry_run:
        return _teardown(request)  # changes nothing: no turn to wait for
    with one_at_a_time(artifact_key("teardown", request.scope_key)):
        return _teardown(request)


def _teardown(request: TeardownRequest) -> TeardownReport:
    log = get_run_logger()
    policy, wait_timeout_s = _policy(request)

    # 1. What exists (managed), and what the user named that is not ours.
    inventory = inventory_task(request.account)
    now = planning_time(request, inventory)
    missing = [i for i in request.ids if inventory.get(i.strip()) is None]
    unmanaged: dict[str, ManagedResource] = describe_unmanaged(missing, account=request.account) if missing else {}

    # 2. The jobs' S3 state (records, heartbeats, staging, checkpoints) and, for the sweep, the bucket's leftovers.
    storage = _storage(request, inventory)
    leftovers = (
        [list_bucket_leftovers(request.bucket, account=request.account)] if request.sweep and request.bucket else []
    )

    # 3. Training over SSM: only the running instances whose fate depends on it.
    to_check = _instances_to_check(inventory, request, policy, now, unmanaged, storage)
    futures = [detect_training.submit(iid, account=request.account) for iid in to_check]
    training = {f.result().instance_id: f.result() for f in futures}
    for state in training.values():
        log.info("training on %s: %s %s", state.instance_id, state.status, ", ".join(state.jobs))

    # 4. The plan.
    plan = plan_teardown(
        inventory,
        scope=request.scope(),
        now=now,
        policy=policy,
        training=training,
        storage=storage,
        unmanaged=unmanaged,
        force=request.force,
        wait_for_training=request.wait_for_training,
        force_training=request.force_training,
        sweep=request.sweep,
        leftovers=leftovers,
    )
    text = publish_plan(plan, inventory, request.scope_key)
    log.info("plan: %d entries, %d operations", len(plan.entries), len(plan.operations))
    if request.dry_run or not plan.operations:
        return _finish(summarize(plan, [], executed=False, approved=None), request.scope_key)

    # 5. Optional approval in the UI (blocks until someone answers, or the timeout).
    approved: bool | None = None
    note = ""
    if request.require_approval:
        approved, note = _ask_approval(text)
        if not approved:
            log.warning("teardown not approved: nothing was changed")
            report = summarize(plan, [], executed=False, approved=False)
            return _finish(report.model_copy(update={"approval_note": note}), request.scope_key)

    # 6. Act, in order.
    results = execute_plan(plan, request, policy, wait_timeout_s)
    report = summarize(plan, results, executed=True, approved=approved)
    _announce_torn_down(report, request.bucket)
    return _finish(report.model_copy(update={"approval_note": note}), request.scope_key)


def _announce_torn_down(report: TeardownReport, bucket: str | None) -> None:
    """`trainctl.job.torn-down` for each job this run changed something of (a dry run never gets here): what was
    acted on is related, the payload says what is gone, what failed and what was kept."""
    acted = {r.id.split(":", 1)[1] for r in report.results if r.status == "done"}
    by_job: dict[str, list[Entry]] = {}
    for entry in report.plan.entries:
        if entry.job:
            by_job.setdefault(entry.job, []).append(entry)
    for job, entries in sorted(by_job.items()):
        ids = [e.id for e in entries]
        if not acted.intersection(ids):
            continue
        emit_job(
            ev.JOB_TORN_DOWN,
            job,
            bucket=bucket,
            resource_ids=[i for i in ids if i in acted],
            deleted=[i for i in ids if i in report.deleted],
            failed=[r.id for r in report.failed if r.id.split(":", 1)[1] in ids],
            kept=[k.id for k in report.kept if k.id in ids],
            approved=report.approved,
        )


def _ask_approval(plan_text: str) -> tuple[bool, str]:
    """Pause for the UI's answer; the form shows the plan (Prefect keeps it as the pause's description)."""
    from prefect.flow_runs import pause_flow_run

    # No initial data beyond the description: re-declared fields would lose their descriptions in the form.
    form = TeardownApproval.with_initial_data(
        description=f"{plan_text}\n**Approve** to carry out this plan; the note is kept in the teardown report."
    )
    answer = pause_flow_run(wait_for_input=form, timeout=3600, poll_interval=APPROVAL_POLL_S)
    approved, note = bool(answer.approve), answer.note.strip()
    get_run_logger().info("teardown %s%s", "approved" if approved else "refused", f": {note}" if note else "")
    return approved, note


def _finish(report: TeardownReport, scope_key: str) -> TeardownReport:
    approval = (
        []
        if report.approved is None
        else [f"- {'approved' if report.approved else 'not approved'}; note: {report.approval_note or '(none)'}"]
    )
    lines = [
        f"# teardown {'done' if report.executed else 'not approved' if report.approved is False else 'planned'}",
        "",
        *approval,
        f"- deleted/terminated: {', '.join(report.deleted) or 'nothing'}",
        f"- failed or skipped: {', '.join(f'{r.id} ({r.status}: {r.detail})' for r in report.failed) or 'nothing'}",
        f"- saves about ${report.monthly_savings_usd}/month",
        "",
        "| kept | action | reasons |",
        "|---|---|---|",
        *[f"| {k.id} | {k.action.value} | {'; '.join(k.reasons)} |" for k in report.kept],
    ]
    key = artifact_key("teardown-report", scope_key)
    create_markdown_artifact("\n".join(lines), key=key, description="teardown")
    return report
