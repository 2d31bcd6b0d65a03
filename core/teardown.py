"""The teardown planner: from an inventory, the jobs' storage and the training state, what happens to each resource.

Pure (no boto3, no Prefect, no clock): `plan_teardown(...)` gets `now` and returns a `Plan`, which lists

- one `Entry` per resource in scope (and per ID the user named that we could not act on): the action
  (terminate, stop, detach-and-keep, delete, keep), every reason, its age and the monthly cost it saves;
- the `Operation`s that carry the plan out, in the order of DESIGN.md section 3 rule 9 (stop jobs → flush
  checkpoints → detach persistent volumes, DeleteOnTermination off first → terminate → wait terminated → delete
  volumes → delete snapshots → delete staging objects), each with the operations it depends on; a flow executes
  them step by step and skips an operation whose dependency did not succeed.

The sweep (`sweep=True`) adds what no job needs, each by a named orphan rule with its age threshold
(`find_orphans`, `TeardownPolicy.rule_age`; the rule is shown as a reason next to the action): prewarm instances
left running, instances of an attempt the job record does not name, instances whose agent never started or whose
heartbeat stopped, stopped instances of ended jobs, volumes of an unfinished prewarm, root volumes of gone
instances, unattached ephemeral volumes, staging of ended or abandoned jobs and of old transfers, unfinished
multipart uploads under trainctl/. A resource younger than its rule is kept as too young, unless `force`.

The rules are core/safety.py's (one set of rules); this module only applies them to a whole inventory. Cleanup is
stricter than an explicit delete: `force` lifts only youth. Nothing here ever destroys an unmanaged, persistent or
protected resource, an attached volume, a checkpoint younger than the recency, or a job's latest complete
checkpoint; the property tests in tests/core/test_teardown.py hold it to that.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from core import tags as t
from core.cost import PriceBook, fallback_book, monthly_usd, s3_monthly_usd
from core.ids import kind_of
from core.jobs import JobStorage, TrainingState
from core.models import Instance, Inventory, ManagedResource, Snapshot, StoredObject, Volume
from core.safety import Blocker, Reason, checkpoint_blockers, cleanup_blockers, training_blockers

GONE_STATES = frozenset({"shutting-down", "terminated"})

# -- monthly cost (what a deletion saves) ------------------------------------------------------------------------

# The prices are core/cost.py's price book, given to the planner (`plan_teardown(prices=...)`); without one, the
# dated fallback table. A resource whose type has no price shows no saving (None), never $0.


def monthly_cost(resource: ManagedResource, prices: PriceBook | None = None) -> float | None:
    """What keeping the resource costs per month (list price), or None when the book has no price for it."""
    if isinstance(resource, Instance | Volume | Snapshot):
        return monthly_usd(resource, prices or fallback_book())
    return None


# -- inputs --------------------------------------------------------------------------------------------------------


class PendingUpload(BaseModel):
    """A multipart upload never completed nor aborted: its parts are stored and billed, invisible to listings."""

    model_config = ConfigDict(frozen=True)

    bucket: str
    key: str
    upload_id: str
    initiated: datetime

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}?uploadId={self.upload_id}"


class BucketLeftovers(BaseModel):
    """What killed copies leave in a bucket outside any job: transfer staging and unfinished multipart uploads."""

    model_config = ConfigDict(frozen=True)

    bucket: str
    staging_prefix: str = "trainctl/staging/"
    staging: list[StoredObject] = Field(default_factory=list)
    uploads: list[PendingUpload] = Field(default_factory=list)  # every one under trainctl/


class Scope(BaseModel):
    """What the user asked to tear down: one job, a list of IDs, or everything managed (and/or the sweep)."""

    model_config = ConfigDict(frozen=True)

    job: str | None = None
    ids: list[str] = Field(default_factory=list)
    all_managed: bool = False

    def describe(self) -> str:
        parts = []
        if self.all_managed:
            parts.append("everything managed")
        if self.job:
            parts.append(f"job {self.job}")
        if self.ids:
            parts.append(", ".join(self.ids))
        return "; ".join(parts) or "nothing (sweep only)"


@dataclass(frozen=True)
class TeardownPolicy:
    """The thresholds (SafetyPolicy block values plus the sweep's options), as plain values."""

    min_age: timedelta = timedelta(minutes=5)
    checkpoint_recency: timedelta = timedelta(hours=1)
    ephemeral_volumes: Literal["delete", "keep"] = "delete"
    prewarm_max_age: timedelta = timedelta(hours=1)
    orphan_volume_age: timedelta = timedelta(hours=24)
    snapshot_retention: int = 3
    # Younger than this, an instance (or its root volume, or its job's staging) may be a launch in progress.
    orphan_instance_age: timedelta = timedelta(minutes=15)
    heartbeat_timeout: timedelta = timedelta(minutes=15)  # an agent silent for longer is gone (not an age rule)
    stale_staging_age: timedelta = timedelta(hours=24)
    upload_max_age: timedelta = timedelta(hours=24)

    def rule_age(self, rule: Reason) -> timedelta:
        """The age threshold of an orphan rule: younger resources are kept as too young (`force` lifts it)."""
        return {
            Reason.PREWARM_LEFT: self.prewarm_max_age,
            Reason.UNFINISHED_PREWARM: self.prewarm_max_age,
            Reason.UNRECORDED_ATTEMPT: self.orphan_instance_age,
            Reason.AGENT_NEVER_STARTED: self.orphan_instance_age,
            Reason.AGENT_SILENT: self.orphan_instance_age,
            Reason.LEAKED_ROOT_VOLUME: self.orphan_instance_age,
            Reason.STAGING_ABANDONED: self.orphan_instance_age,
            Reason.JOB_ENDED: self.min_age,
            Reason.UNATTACHED_VOLUME: self.orphan_volume_age,
            Reason.STALE_STAGING: self.stale_staging_age,
            Reason.UNFINISHED_UPLOAD: self.upload_max_age,
        }[rule]


# -- the plan ------------------------------------------------------------------------------------------------------


class Action(StrEnum):
    TERMINATE = "terminate"
    STOP = "stop"  # stop a running training job (force_training): SIGTERM, the trainer saves and exits
    DETACH_AND_KEEP = "detach-and-keep"
    DELETE = "delete"
    KEEP = "keep"


class Step(StrEnum):
    """DESIGN.md section 3 rule 9, in order."""

    STOP_JOBS = "stop jobs"
    FLUSH_CHECKPOINTS = "flush checkpoints"
    DETACH_PERSISTENT = "detach persistent volumes"
    TERMINATE = "terminate"
    WAIT_TERMINATED = "wait terminated"
    DELETE_VOLUMES = "delete volumes"
    DELETE_SNAPSHOTS = "delete snapshots"
    DELETE_OBJECTS = "delete staging objects"


STEPS: list[Step] = list(Step)


class OpKind(StrEnum):
    WAIT_TRAINING = "wait-training"
    STOP_JOB = "stop-job"
    FLUSH = "flush"
    KEEP_ON_TERMINATION = "keep-on-termination"  # DeleteOnTermination=false on the instance (no detach)
    DETACH = "detach"  # DeleteOnTermination=false, then detach and wait until available
    TERMINATE = "terminate"
    WAIT_TERMINATED = "wait-terminated"
    DELETE_VOLUME = "delete-volume"
    DELETE_SNAPSHOT = "delete-snapshot"
    DELETE_OBJECTS = "delete-objects"
    ABORT_UPLOAD = "abort-upload"


_STEP_OF: dict[OpKind, Step] = {
    OpKind.WAIT_TRAINING: Step.STOP_JOBS,
    OpKind.STOP_JOB: Step.STOP_JOBS,
    OpKind.FLUSH: Step.FLUSH_CHECKPOINTS,
    OpKind.KEEP_ON_TERMINATION: Step.DETACH_PERSISTENT,
    OpKind.DETACH: Step.DETACH_PERSISTENT,
    OpKind.TERMINATE: Step.TERMINATE,
    OpKind.WAIT_TERMINATED: Step.WAIT_TERMINATED,
    OpKind.DELETE_VOLUME: Step.DELETE_VOLUMES,
    OpKind.DELETE_SNAPSHOT: Step.DELETE_SNAPSHOTS,
    OpKind.DELETE_OBJECTS: Step.DELETE_OBJECTS,
    OpKind.ABORT_UPLOAD: Step.DELETE_OBJECTS,
}


class Operation(BaseModel):
    """One idempotent call the flow makes. `id` is `<kind>:<target>`; `depends_on` lists operation ids."""

    model_config = ConfigDict(frozen=True)

    id: str
    kind: OpKind
    step: Step
    target: str  # instance/volume/snapshot ID, or the s3:// prefix of an object group
    instance_id: str | None = None
    job: str | None = None
    bucket: str | None = None
    object_keys: list[str] = Field(default_factory=list)  # exact keys to delete (never "the whole prefix")
    upload_id: str | None = None  # ABORT_UPLOAD: the one upload of object_keys[0] to abort
    depends_on: list[str] = Field(default_factory=list)


class ReasonNote(BaseModel):
    """A reason shown next to an entry. `blocking`: it is why the resource is kept (else: information only)."""

    model_config = ConfigDict(frozen=True)

    reason: str
    detail: str
    override: str | None = None
    blocking: bool = True

    @classmethod
    def of(cls, blocker: Blocker) -> ReasonNote:
        return cls(reason=blocker.reason.value, detail=blocker.detail, override=blocker.override)


class Entry(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    kind: str  # instance | volume | snapshot | checkpoint | staging | upload | job | unknown
    action: Action
    reasons: list[ReasonNote] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    job: str | None = None
    name: str | None = None
    state: str | None = None
    age_seconds: float | None = None
    monthly_usd: float | None = None  # saved by the action (0 when kept)
    sweep: bool = False  # found by the orphan sweep

    @property
    def destroys(self) -> bool:
        return self.action in {Action.TERMINATE, Action.DELETE}


class Plan(BaseModel):
    region: str
    now: datetime
    scope: Scope
    sweep: bool = False
    entries: list[Entry] = Field(default_factory=list)
    operations: list[Operation] = Field(default_factory=list)

    def entry(self, resource_id: str) -> Entry | None:
        return next((e for e in self.entries if e.id == resource_id), None)

    def operation(self, op_id: str) -> Operation | None:
        return next((o for o in self.operations if o.id == op_id), None)

    def ops_in(self, step: Step) -> list[Operation]:
        return [o for o in self.operations if o.step is step]

    @property
    def monthly_savings(self) -> float:
        return round(sum(e.monthly_usd or 0.0 for e in self.entries if e.action is not Action.KEEP), 2)

    def edges(self) -> list[tuple[str, str]]:
        return [(dep, op.id) for op in self.operations for dep in op.depends_on]


# -- the plan as markdown (what the Prefect UI renders: nested lists, not mermaid) ---------------------------------


def _entry_line(entry: Entry, parent_outside: str | None) -> str:
    why = "; ".join(f"{r.reason}: {r.detail}" if r.detail else r.reason for r in entry.reasons)
    saves = f", saves ${entry.monthly_usd:.2f}/month" if entry.monthly_usd and entry.action is not Action.KEEP else ""
    where = f", on `{parent_outside}`" if parent_outside else ""
    job = f", job {entry.job}" if entry.job else ""
    return f"**{entry.action.value}** `{entry.id}` ({entry.kind}{job}{where}){saves}" + (f" — {why}" if why else "")


def plan_outline(plan: Plan, inventory: Inventory) -> list[str]:
    """Every entry as a nested markdown list: each instance, its volumes under it, their snapshots under them."""
    parent: dict[str, str] = {v.id: v.attached_instance_id for v in inventory.volumes if v.attached_instance_id}
    parent |= {s.id: s.volume_id for s in inventory.snapshots if s.volume_id}
    in_plan = {e.id for e in plan.entries}
    children: dict[str | None, list[Entry]] = {}
    for e in plan.entries:
        up = parent.get(e.id)
        children.setdefault(up if up in in_plan else None, []).append(e)
    lines: list[str] = []

    def walk(entry: Entry, depth: int) -> None:
        up = parent.get(entry.id)
        lines.append("  " * depth + "- " + _entry_line(entry, up if up and up not in in_plan else None))
        for child in children.get(entry.id, []):
            walk(child, depth + 1)

    for top in children.get(None, []):
        walk(top, 0)
    return lines


def plan_steps(plan: Plan) -> list[str]:
    """The operations step by step (a numbered list), each with the operations it waits for: what blocks what."""
    lines: list[str] = []
    for n, step in enumerate(STEPS):
        ops = plan.ops_in(step)
        lines.append(f"{n + 1}. **{step.value}**" + ("" if ops else ": nothing"))
        for op in ops:
            after = f" — after {', '.join(f'`{d}`' for d in op.depends_on)}" if op.depends_on else ""
            lines.append(f"    - {op.kind.value} `{op.target}`{after}")
    return lines


def plan_markdown(plan: Plan, inventory: Inventory) -> str:
    """The whole plan for a reader: what happens to each resource and why, the savings, the steps in order."""
    head = f"{plan.scope.describe()}{' + sweep' if plan.sweep else ''}"
    acting = sum(1 for e in plan.entries if e.action is not Action.KEEP)
    return "\n".join(
        [
            f"# teardown plan: {head}",
            "",
            f"Region {plan.region}, planned at {plan.now.isoformat(timespec='seconds')}: {acting} of "
            f"{len(plan.entries)} resources acted on, saves about ${plan.monthly_savings:.2f}/month.",
            "",
            "## What happens to each resource, and why",
            "",
            *(plan_outline(plan, inventory) or ["- nothing in scope"]),
            "",
            "## The steps, in order (an operation runs only after those it names)",
            "",
            *plan_steps(plan),
            "",
        ]
    )


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# -- the planner -------------------------------------------------------------------------------------------------


def _age_text(age: timedelta) -> str:
    seconds = int(age.total_seconds())
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds < 86400 else f"{seconds // 86400}d"


@dataclass(frozen=True)
class Orphan:
    """What an orphan rule found: the rule (a Reason), why it applies, and the age its threshold is held to."""

    rule: Reason
    detail: str
    age: timedelta

    def note(self) -> ReasonNote:
        return ReasonNote(reason=self.rule.value, detail=self.detail, blocking=False)

    def youth(self, policy: TeardownPolicy, *, force: bool) -> list[Blocker]:
        threshold = policy.rule_age(self.rule)
        if force or self.age >= threshold:
            return []
        detail = f"{_age_text(self.age)} old; the rule '{self.rule.value}' waits {_age_text(threshold)}"
        return [Blocker(Reason.TOO_YOUNG, detail, "force")]


def _instance_orphan(
    inst: Instance, store: JobStorage | None, *, now: datetime, policy: TeardownPolicy
) -> Orphan | None:
    age = inst.age(now)
    if inst.role == t.Role.PREWARM:
        return Orphan(
            Reason.PREWARM_LEFT, f"prewarm instance still {inst.state}; a finished prewarm terminates it", age
        )
    if inst.role != t.Role.TRAIN or store is None or store.status is None:
        return None  # no record to judge by (none, or in another bucket): never guessed
    named = store.attempt == inst.attempt and store.instance_id == inst.id
    if store.attempt is not None and inst.attempt is not None and not named:
        where = store.instance_id or "no instance yet"
        detail = (
            f"{inst.id} is attempt {inst.attempt} of {store.job}; the record names attempt {store.attempt} on "
            f"{where} (a launch killed between RunInstances and the record)"
        )
        return Orphan(Reason.UNRECORDED_ATTEMPT, detail, age)
    if inst.state in {"stopping", "stopped"}:
        done = f"job {store.job} is {store.status}; its stopped instance only costs its volumes"
        return Orphan(Reason.JOB_ENDED, done, age) if store.finished else None
    if inst.state not in {"pending", "running"} or inst.attempt is None or store.attempt is None:
        return None
    beat = store.heartbeats.get(inst.attempt)
    if beat is None:
        detail = f"no heartbeat from the agent of attempt {inst.attempt} (the launch stopped before it ran)"
        return Orphan(Reason.AGENT_NEVER_STARTED, detail, age)
    silent = max(timedelta(0), _aware(now) - _aware(beat))
    if silent >= policy.heartbeat_timeout:
        detail = f"last heartbeat {_age_text(silent)} ago (timeout {_age_text(policy.heartbeat_timeout)})"
        return Orphan(Reason.AGENT_SILENT, detail, age)
    return None


def _volume_orphan(vol: Volume, *, now: datetime) -> Orphan | None:
    age = vol.age(now)
    if vol.state in {"deleting", "deleted"}:
        return None
    if vol.tags.get(t.PREWARM) == t.PREWARM_PENDING:
        detail = f"{vol.id} was created by a prewarm that did not finish: its data may be partial"
        if vol.persistent:
            detail += f"; persistent, so kept: prewarm it again (ebs prewarm SOURCE --volume {vol.id}) or delete it"
        return Orphan(Reason.UNFINISHED_PREWARM, detail, age)
    if vol.attached or vol.persistent or vol.state != "available":
        return None
    if vol.role in {t.Role.TRAIN, t.Role.PREWARM}:
        detail = f"the root volume of a {vol.role} instance, unattached since the instance went"
        return Orphan(Reason.LEAKED_ROOT_VOLUME, detail, age)
    return Orphan(Reason.UNATTACHED_VOLUME, f"{vol.id} is unattached and not persistent", age)


def find_orphans(
    inventory: Inventory, storage: Sequence[JobStorage], *, now: datetime, policy: TeardownPolicy
) -> dict[str, Orphan]:
    """Every instance and volume an orphan rule applies to, whatever its age (the caller holds it to the rule's
    threshold). Training instances are judged only by a job record found in the bucket: without one, nothing."""
    jobs = {s.job: s for s in storage}
    found: dict[str, Orphan] = {}
    for inst in inventory.instances:
        if inst.state in GONE_STATES:
            continue
        orphan = _instance_orphan(inst, jobs.get(inst.job or ""), now=now, policy=policy)
        if orphan:
            found[inst.id] = orphan
    for vol in inventory.volumes:
        orphan = _volume_orphan(vol, now=now)
        if orphan:
            found[vol.id] = orphan
    return found


class _Builder:
    """Accumulates entries and operations; one per ID (the first decision about a resource wins)."""

    def __init__(self, prices: PriceBook) -> None:
        self.prices = prices  # what a deletion saves is priced from this book
        self.entries: dict[str, Entry] = {}
        self.ops: dict[str, Operation] = {}
        self.orphans: dict[str, Orphan] = {}  # the sweep's findings: their rule is shown next to the action

    def add(self, entry: Entry) -> None:
        found = self.orphans.get(entry.id)
        if found and entry.id not in self.entries:
            entry = entry.model_copy(update={"reasons": [*entry.reasons, found.note()], "sweep": True})
        self.entries.setdefault(entry.id, entry)

    def op(
        self,
        kind: OpKind,
        target: str,
        *,
        depends_on: Iterable[str] = (),
        instance_id: str | None = None,
        job: str | None = None,
        bucket: str | None = None,
        keys: Sequence[str] = (),
        upload_id: str | None = None,
    ) -> str:
        op_id = f"{kind.value}:{target}"
        if op_id not in self.ops:
            self.ops[op_id] = Operation(
                id=op_id,
                kind=kind,
                step=_STEP_OF[kind],
                target=target,
                instance_id=instance_id,
                job=job,
                bucket=bucket,
                object_keys=list(keys),
                upload_id=upload_id,
                depends_on=sorted(set(depends_on)),
            )
        return op_id


def _entry(
    prices: PriceBook,
    resource: ManagedResource,
    action: Action,
    *,
    now: datetime,
    blockers: Sequence[Blocker] = (),
    notes: Sequence[str] = (),
    info: Sequence[ReasonNote] = (),
    sweep: bool = False,
) -> Entry:
    saves = monthly_cost(resource, prices) if action in {Action.TERMINATE, Action.DELETE} else 0.0
    return Entry(
        id=resource.id,
        kind=resource.kind.value,
        action=action,
        reasons=[*(ReasonNote.of(b) for b in blockers), *info],
        notes=list(notes),
        job=resource.job,
        name=resource.name,
        state=resource.state,
        age_seconds=round(resource.age(now).total_seconds(), 1),
        monthly_usd=saves,
        sweep=sweep,
    )


def _missing(resource_id: str, region: str, unmanaged: Mapping[str, ManagedResource]) -> Entry:
    """An ID the user named that we will not act on: malformed, not managed, or not in this region."""
    if kind_of(resource_id) is None:
        detail = f"{resource_id!r} is not an EC2 instance, volume or snapshot ID"
        return Entry(
            id=resource_id, kind="unknown", action=Action.KEEP, reasons=[ReasonNote(reason="not found", detail=detail)]
        )
    if resource_id in unmanaged:
        found = unmanaged[resource_id]
        detail = f"{resource_id} was not created by trainctl; teardown never touches it (even with --force)"
        return Entry(
            id=resource_id,
            kind=found.kind.value,
            action=Action.KEEP,
            reasons=[ReasonNote(reason=Reason.NOT_MANAGED.value, detail=detail)],
            name=found.name,
            state=found.state,
        )
    detail = (
        f"{resource_id} was not found in {region}: it does not exist, is already gone, or belongs to another region"
    )
    return Entry(
        id=resource_id,
        kind=kind_of(resource_id) or "unknown",
        action=Action.KEEP,
        reasons=[ReasonNote(reason=Reason.NOT_FOUND.value, detail=detail)],
    )


def plan_teardown(
    inventory: Inventory,
    *,
    scope: Scope,
    now: datetime,
    policy: TeardownPolicy | None = None,
    training: Mapping[str, TrainingState] | None = None,
    storage: Sequence[JobStorage] = (),
    unmanaged: Mapping[str, ManagedResource] | None = None,
    force: bool = False,
    wait_for_training: bool = False,
    force_training: bool = False,
    sweep: bool = False,
    leftovers: Sequence[BucketLeftovers] = (),
    prices: PriceBook | None = None,
) -> Plan:
    """The whole plan for `scope` (and the orphan sweep when `sweep`). Deterministic: same inputs, same plan.

    `training`: the SSM check per running instance (missing = not checked = unknown). `storage`: the S3 state of
    the jobs concerned. `unmanaged`: resources the user named by ID that exist but are not managed (looked up by
    the flow, so the plan can say "not managed" rather than "not found"). `force` lifts only youth; it never
    lifts "not managed" or "training running" (that takes `force_training` or `wait_for_training`).
    `leftovers`: transfer staging and unfinished multipart uploads per bucket, planned by the sweep only.
    `prices`: the price book the monthly savings come from (core/cost.py); default: its dated fallback table.
    """
    policy = policy or TeardownPolicy()
    b = _Builder(prices or fallback_book(inventory.region))
    rules = _Rules(inventory, {r.id: r for r in inventory.resources()}, now, policy, force)
    jobs = {s.job: s for s in storage}

    # 1. What is in scope (instances first: their volumes follow them), and what the sweep adds.
    found = _in_scope(b, rules, scope, jobs, unmanaged or {})
    if sweep:
        _sweep(b, found, rules, storage)
    # 2-4. Instances, then volumes not decided with their instance, then snapshots.
    terminating = _plan_instances(
        b, found, rules, training or {}, wait_for_training=wait_for_training, force_training=force_training
    )
    _plan_volumes(b, found, rules)
    _plan_snapshots(b, found, rules)
    # 5. S3: checkpoints (rule 7) and staging objects of the jobs in scope; what killed copies left.
    for job in sorted(found.jobs | found.staging_jobs):
        if job in jobs:
            _storage_ops(
                b,
                jobs[job],
                inventory,
                terminating,
                now=now,
                policy=policy,
                force=force,
                sweep=sweep,
                checkpoints=job in found.jobs,
            )
    for left in leftovers if sweep else ():
        _leftover_ops(b, left, now=now, policy=policy, force=force)

    ordered = sorted(b.ops.values(), key=lambda o: (STEPS.index(o.step), o.target, o.id))
    entries = sorted(b.entries.values(), key=lambda e: (_KIND_ORDER.get(e.kind, 9), e.id))
    return Plan(region=inventory.region, now=now, scope=scope, sweep=sweep, entries=entries, operations=ordered)


@dataclass(frozen=True)
class _Rules:
    """What every resource is judged by: the inventory, the clock, the policy and `force`."""

    inventory: Inventory
    by_id: dict[str, ManagedResource]
    now: datetime
    policy: TeardownPolicy
    force: bool


@dataclass
class _InScope:
    """What the plan covers: resources by kind, the jobs whose checkpoints and staging it plans, and what the sweep
    brought in (`swept`; `young`: held to an orphan rule's age, for what only the sweep brings in)."""

    instances: set[str] = field(default_factory=set)
    volumes: set[str] = field(default_factory=set)
    snapshots: set[str] = field(default_factory=set)
    jobs: set[str] = field(default_factory=set)
    named_snapshots: set[str] = field(default_factory=set)  # deletion candidates (named, or beyond retention)
    swept: set[str] = field(default_factory=set)
    young: dict[str, list[Blocker]] = field(default_factory=dict)
    staging_jobs: set[str] = field(default_factory=set)  # the sweep: their staging may be abandoned

    def add(self, resource: ManagedResource) -> None:
        {"instance": self.instances, "volume": self.volumes, "snapshot": self.snapshots}[resource.kind.value].add(
            resource.id
        )


def _in_scope(
    b: _Builder, rules: _Rules, scope: Scope, jobs: Mapping[str, JobStorage], unmanaged: Mapping[str, ManagedResource]
) -> _InScope:
    """What the user's scope names. A job or ID we cannot act on gets its entry (kept, with why) here."""
    inventory = rules.inventory
    found = _InScope()
    if scope.all_managed:
        found.instances |= {i.id for i in inventory.instances}
        found.volumes |= {v.id for v in inventory.volumes}
        found.snapshots |= {s.id for s in inventory.snapshots}
        found.jobs |= set(jobs) | {r.job for r in inventory.resources() if r.job}
    if scope.job:
        found.jobs.add(scope.job)
        for r in inventory.of_job(scope.job):
            found.add(r)
        if not inventory.of_job(scope.job) and scope.job not in jobs:
            detail = f"no managed resource or job record of job {scope.job!r} in {inventory.region}"
            b.add(
                Entry(
                    id=f"job:{scope.job}",
                    kind="job",
                    action=Action.KEEP,
                    job=scope.job,
                    reasons=[ReasonNote(reason=Reason.NOT_FOUND.value, detail=detail)],
                )
            )
    for rid in sorted(set(scope.ids)):
        resource = rules.by_id.get(rid)
        if resource is None:
            b.add(_missing(rid, inventory.region, unmanaged))
            continue
        found.add(resource)
        if resource.kind.value == "snapshot":
            found.named_snapshots.add(rid)
    return found


def _sweep(b: _Builder, found: _InScope, rules: _Rules, storage: Sequence[JobStorage]) -> None:
    """The sweep's additions: every orphan (held to its rule's age unless the scope named it already), snapshots
    beyond the retention, the S3 of ended jobs and the staging of jobs that may be abandoned."""
    in_scope = found.instances | found.volumes
    b.orphans = find_orphans(rules.inventory, storage, now=rules.now, policy=rules.policy)
    for rid, orphan in b.orphans.items():
        (found.instances if rules.by_id[rid].kind.value == "instance" else found.volumes).add(rid)
        found.swept.add(rid)
        if rid not in in_scope:
            found.young[rid] = orphan.youth(rules.policy, force=rules.force)
    by_volume: dict[str, list[Snapshot]] = {}
    for s in rules.inventory.snapshots:
        by_volume.setdefault(s.volume_id or "", []).append(s)
    for group in by_volume.values():
        group.sort(key=lambda s: (s.created_at, s.id), reverse=True)  # newest first; keep the first N
        for s in group[rules.policy.snapshot_retention :]:
            found.snapshots.add(s.id)
            found.swept.add(s.id)
            found.named_snapshots.add(s.id)  # beyond retention: a deletion candidate like a named one
    found.jobs |= {s.job for s in storage if s.finished}
    found.staging_jobs = {s.job for s in storage if s.attempt is not None}


def _plan_instances(
    b: _Builder,
    found: _InScope,
    rules: _Rules,
    training: Mapping[str, TrainingState],
    *,
    wait_for_training: bool,
    force_training: bool,
) -> set[str]:
    """Terminate each instance in scope unless a rule keeps it; running training needs its own flag. Returns the
    instances that will be gone (terminated by the plan, or terminating already)."""
    now, policy = rules.now, rules.policy
    terminating: set[str] = set()
    for iid in sorted(found.instances):
        inst = rules.by_id[iid]
        assert isinstance(inst, Instance)
        swept = iid in found.swept
        if inst.state in GONE_STATES:
            b.op(OpKind.WAIT_TERMINATED, iid, instance_id=iid)
            terminating.add(iid)
            b.add(_entry(b.prices, inst, Action.TERMINATE, now=now, notes=["already terminating"], sweep=swept))
            continue
        blockers = cleanup_blockers(inst, now=now, min_age=policy.min_age, force=rules.force) + found.young.get(iid, [])
        first: list[str] = []
        notes: list[str] = []
        if inst.state in {"pending", "running"}:
            blockers, first, notes = _training_first(
                b, inst, training.get(iid), blockers, wait_for_training=wait_for_training, force_training=force_training
            )
        if blockers:
            b.add(_entry(b.prices, inst, Action.KEEP, now=now, blockers=blockers, sweep=swept))
            continue
        terminating.add(iid)
        b.add(_entry(b.prices, inst, Action.TERMINATE, now=now, notes=notes, sweep=swept))
        _instance_ops(b, inst, rules.inventory, first=first, now=now, policy=policy, force=rules.force)
    return terminating


def _training_first(
    b: _Builder,
    inst: Instance,
    state: TrainingState | None,
    blockers: list[Blocker],
    *,
    wait_for_training: bool,
    force_training: bool,
) -> tuple[list[Blocker], list[str], list[str]]:
    """A live instance's training (rule 2): it blocks termination, unless force_training stops it first (and
    flushes its checkpoint) or wait_for_training waits for its end. Returns every blocker, the operations that go
    before terminate, and the notes."""
    status = state.status if state else None
    running_jobs = state.jobs if state else []
    blockers = blockers + training_blockers(
        inst.id, status, running_jobs, wait_for_training=wait_for_training, force_training=force_training
    )
    busy = status != "idle"
    if blockers or not busy:
        return blockers, [], []
    if force_training:
        stop = b.op(OpKind.STOP_JOB, inst.id, instance_id=inst.id)
        first = [b.op(OpKind.FLUSH, inst.id, instance_id=inst.id, depends_on=[stop])]
        for job in running_jobs:
            b.add(
                Entry(
                    id=f"job:{job}",
                    kind="job",
                    action=Action.STOP,
                    job=job,
                    notes=[f"running on {inst.id}; stopped because force_training was given"],
                )
            )
        return (
            blockers,
            first,
            ["force_training: the job is stopped (SIGTERM: save and exit) and its checkpoint flushed"],
        )
    if wait_for_training:
        first = [b.op(OpKind.WAIT_TRAINING, inst.id, instance_id=inst.id)]
        return blockers, first, ["wait_for_training: terminates after the job ends (or is skipped at the timeout)"]
    return blockers, [], []


def _plan_volumes(b: _Builder, found: _InScope, rules: _Rules) -> None:
    """Volumes not attached to a terminating instance (those were decided with their instance): delete unless a
    rule keeps them; an attached one is never deleted (rule 5)."""
    now = rules.now
    for vid in sorted(found.volumes):
        if vid in b.entries:
            continue
        vol = rules.by_id[vid]
        assert isinstance(vol, Volume)
        if vol.state in {"deleting", "deleted"}:
            continue
        blockers = cleanup_blockers(vol, now=now, min_age=rules.policy.min_age, force=rules.force)
        blockers += found.young.get(vid, [])
        if vol.attached:
            detail = f"{vid} is attached to {vol.attached_instance_id}, which is not being terminated"
            blockers.append(Blocker(Reason.ATTACHED, detail, None))
        info = _snapshot_info(vol)
        if blockers:
            b.add(_entry(b.prices, vol, Action.KEEP, now=now, blockers=blockers, info=info, sweep=vid in found.swept))
            continue
        b.add(_entry(b.prices, vol, Action.DELETE, now=now, info=info, sweep=vid in found.swept))
        b.op(OpKind.DELETE_VOLUME, vid)


def _plan_snapshots(b: _Builder, found: _InScope, rules: _Rules) -> None:
    """Snapshots are deleted only when named or beyond the sweep's retention; otherwise they are the backups."""
    now, policy = rules.now, rules.policy
    for sid in sorted(found.snapshots):
        snap = rules.by_id[sid]
        assert isinstance(snap, Snapshot)
        swept = sid in found.swept
        if sid not in found.named_snapshots:
            detail = f"{sid} is a backup; snapshots go only when named or beyond the sweep's retention"
            b.add(_entry(b.prices, snap, Action.KEEP, now=now, blockers=[Blocker(Reason.RETAINED, detail, None)]))
            continue
        blockers = cleanup_blockers(snap, now=now, min_age=policy.min_age, force=rules.force)
        if blockers:
            b.add(_entry(b.prices, snap, Action.KEEP, now=now, blockers=blockers, sweep=swept))
            continue
        notes = [f"beyond the retention of {policy.snapshot_retention} per volume"] if swept else []
        b.add(_entry(b.prices, snap, Action.DELETE, now=now, notes=notes, sweep=swept))
        b.op(OpKind.DELETE_SNAPSHOT, sid)


_KIND_ORDER = {
    "job": 0,
    "instance": 1,
    "volume": 2,
    "snapshot": 3,
    "checkpoint": 4,
    "staging": 5,
    "upload": 6,
    "unknown": 7,
}


def _snapshot_info(vol: Volume) -> list[ReasonNote]:
    if not vol.snapshot_ids:
        return []
    detail = f"{vol.id} has {len(vol.snapshot_ids)} snapshot(s) that remain: {', '.join(vol.snapshot_ids)}"
    return [ReasonNote(reason=Reason.HAS_SNAPSHOTS.value, detail=detail, blocking=False)]


def _instance_ops(
    b: _Builder,
    inst: Instance,
    inventory: Inventory,
    *,
    first: list[str],
    now: datetime,
    policy: TeardownPolicy,
    force: bool,
) -> None:
    """Terminate one instance: every attached volume is decided first (rule 1), then terminate, then wait."""
    before: list[str] = list(first)
    after: list[tuple[Volume, list[ReasonNote]]] = []
    attached = {v.id: v for v in inventory.volumes_of(inst.id)}
    for vid in sorted(set(inst.volume_ids) | set(attached)):
        vol = attached.get(vid)
        if vol is None:
            # Not in the managed inventory: a volume we do not own rides on our instance. Terminating must not
            # delete it, so DeleteOnTermination goes off (an attribute of our instance); the volume is untouched.
            before.append(b.op(OpKind.KEEP_ON_TERMINATION, vid, instance_id=inst.id, depends_on=first))
            b.add(
                Entry(
                    id=vid,
                    kind="volume",
                    action=Action.KEEP,
                    reasons=[
                        ReasonNote(
                            reason=Reason.NOT_MANAGED.value,
                            detail=f"{vid} on {inst.id} was not created by trainctl; DeleteOnTermination is turned "
                            "off so terminating the instance leaves it",
                        )
                    ],
                )
            )
            continue
        blockers = cleanup_blockers(vol, now=now, min_age=policy.min_age, force=force)
        if policy.ephemeral_volumes == "keep" and not vol.persistent:
            blockers.append(Blocker(Reason.RETAINED, f"the SafetyPolicy keeps ephemeral volumes ({vid})", None))
        info = _snapshot_info(vol)
        if blockers:
            # Kept: DeleteOnTermination off first, then detach and wait until available, all before terminate.
            before.append(b.op(OpKind.DETACH, vid, instance_id=inst.id, depends_on=first))
            notes = [f"detached from {inst.id} (DeleteOnTermination off first) before it is terminated"]
            b.add(_entry(b.prices, vol, Action.DETACH_AND_KEEP, now=now, blockers=blockers, notes=notes, info=info))
        else:
            after.append((vol, info))
    terminate = b.op(OpKind.TERMINATE, inst.id, instance_id=inst.id, depends_on=before or first)
    waited = b.op(OpKind.WAIT_TERMINATED, inst.id, instance_id=inst.id, depends_on=[terminate])
    for vol, info in after:
        b.add(
            _entry(
                b.prices, vol, Action.DELETE, now=now, info=info, notes=[f"ephemeral; deleted once {inst.id} is gone"]
            )
        )
        b.op(OpKind.DELETE_VOLUME, vol.id, instance_id=inst.id, depends_on=[waited])


def _storage_ops(
    b: _Builder,
    store: JobStorage,
    inventory: Inventory,
    terminating: set[str],
    *,
    now: datetime,
    policy: TeardownPolicy,
    force: bool,
    sweep: bool,
    checkpoints: bool = True,
) -> None:
    """A job's S3: its checkpoints (when the job is in scope) and its staging, deleted once its instances are gone."""
    # The job's instances still alive after this plan: staging must outlive them (they may re-read the code).
    job_instances = [i.id for i in inventory.instances if i.job == store.job]
    alive = [i for i in job_instances if i not in terminating]
    waits = [f"{OpKind.WAIT_TERMINATED.value}:{i}" for i in job_instances if i in terminating]
    if checkpoints:
        _checkpoint_ops(b, store, waits, now=now, policy=policy, sweep=sweep)
    if store.staging:
        _staging_ops(b, store, alive, waits, now=now, policy=policy, force=force, sweep=sweep)


def _checkpoint_ops(
    b: _Builder, store: JobStorage, waits: list[str], *, now: datetime, policy: TeardownPolicy, sweep: bool
) -> None:
    """Rule 7: recent checkpoints and the latest complete one are kept; superseded ones go only in the sweep."""
    latest = store.latest_complete
    for ckpt in sorted(store.checkpoints, key=lambda c: c.seq):
        age = ckpt.newest_age(now)
        blockers = [
            ReasonNote.of(x)
            for x in checkpoint_blockers(
                ckpt.uri, newest_age=age, recency=policy.checkpoint_recency, latest_complete=ckpt.seq == latest
            )
        ]
        if not blockers and not sweep:
            blockers.append(
                ReasonNote(
                    reason=Reason.RETAINED.value,
                    detail="superseded checkpoints are deleted only by the sweep (sweep=True)",
                )
            )
        size = sum(o.size for o in ckpt.objects)
        entry = Entry(
            id=ckpt.uri,
            kind="checkpoint",
            action=Action.KEEP if blockers else Action.DELETE,
            reasons=blockers,
            notes=[] if blockers else [f"superseded by ckpt {latest}" if latest else "incomplete and old"],
            job=store.job,
            age_seconds=round(age.total_seconds(), 1),
            monthly_usd=0.0 if blockers else s3_monthly_usd(size, b.prices),
            sweep=not blockers,
        )
        b.add(entry)
        if not blockers:
            keys = sorted(o.key for o in ckpt.objects)
            b.op(OpKind.DELETE_OBJECTS, ckpt.uri, job=store.job, bucket=store.bucket, keys=keys, depends_on=waits)


def _staging_ops(
    b: _Builder,
    store: JobStorage,
    alive: list[str],
    waits: list[str],
    *,
    now: datetime,
    policy: TeardownPolicy,
    force: bool,
    sweep: bool,
) -> None:
    """The job's staged code: kept while the job may resume or an instance of it remains, and while young."""
    uri = f"s3://{store.bucket}/{store.staging_prefix}"
    newest = max(o.last_modified for o in store.staging)
    age = max(timedelta(0), _aware(now) - _aware(newest))
    reasons, orphan = _staging_reasons(store, alive, age, sweep=sweep)
    if age < policy.min_age and not force:
        reasons.append(
            ReasonNote(
                reason=Reason.TOO_YOUNG.value,
                detail=f"newest staging object {int(age.total_seconds())} s old",
                override="force",
            )
        )
    elif orphan is not None:
        reasons += [ReasonNote.of(x) for x in orphan.youth(policy, force=force)]
    size = sum(o.size for o in store.staging)
    b.add(
        Entry(
            id=uri,
            kind="staging",
            action=Action.KEEP if reasons else Action.DELETE,
            reasons=[*reasons, *([orphan.note()] if orphan else [])],
            notes=[f"{len(store.staging)} object(s), {size} bytes"],
            job=store.job,
            age_seconds=round(age.total_seconds(), 1),
            monthly_usd=0.0 if reasons else s3_monthly_usd(size, b.prices),
            sweep=sweep,
        )
    )
    if not reasons:
        keys = sorted(o.key for o in store.staging)
        b.op(OpKind.DELETE_OBJECTS, uri, job=store.job, bucket=store.bucket, keys=keys, depends_on=waits)


def _staging_reasons(
    store: JobStorage, alive: list[str], age: timedelta, *, sweep: bool
) -> tuple[list[ReasonNote], Orphan | None]:
    """Why the job still needs its staging, and the sweep's orphan rule when it applies."""
    reasons: list[ReasonNote] = []
    # The sweep: an unfinished job none of whose instances remains has no use for its staging (a launch, a resume
    # included, stages its code again under its own attempt); held to the orphan instance age, as its launch is.
    orphan: Orphan | None = None
    if sweep and not alive and store.finished:
        orphan = Orphan(Reason.JOB_ENDED, f"job {store.job} is {store.status}", age)
    elif sweep and not alive and store.attempt is not None:
        detail = f"job {store.job} is {store.status} but no instance of it remains (its launch was killed?)"
        orphan = Orphan(Reason.STAGING_ABANDONED, detail, age)
    if not store.finished and orphan is None:
        reasons.append(
            ReasonNote(
                reason=Reason.JOB_UNFINISHED.value,
                detail=f"job {store.job} is {store.status or 'without a record'}; a resume needs its staged code",
            )
        )
    if alive:
        reasons.append(
            ReasonNote(reason=Reason.JOB_UNFINISHED.value, detail=f"instance(s) {', '.join(alive)} of the job remain")
        )
    return reasons, orphan


def _leftover_ops(b: _Builder, left: BucketLeftovers, *, now: datetime, policy: TeardownPolicy, force: bool) -> None:
    """The sweep in one bucket: staging folders of transfers that did not clean up (`<staging_prefix><folder>/`),
    and unfinished multipart uploads under trainctl/, each held to its rule's age."""
    folders: dict[str, list[StoredObject]] = {}
    for obj in left.staging:
        rest = obj.key[len(left.staging_prefix) :]
        folder = rest.split("/", 1)[0] + "/" if "/" in rest else rest
        folders.setdefault(left.staging_prefix + folder, []).append(obj)
    for prefix, objs in sorted(folders.items()):
        age = max(timedelta(0), _aware(now) - _aware(max(o.last_modified for o in objs)))
        size = sum(o.size for o in objs)
        found = Orphan(
            Reason.STALE_STAGING, f"{len(objs)} object(s), {size} bytes of a copy that did not clean up", age
        )
        uri = f"s3://{left.bucket}/{prefix}"
        blockers = [ReasonNote.of(x) for x in found.youth(policy, force=force)]
        b.add(
            Entry(
                id=uri,
                kind="staging",
                action=Action.KEEP if blockers else Action.DELETE,
                reasons=[*blockers, found.note()],
                age_seconds=round(age.total_seconds(), 1),
                monthly_usd=0.0 if blockers else s3_monthly_usd(size, b.prices),
                sweep=True,
            )
        )
        if not blockers:
            b.op(OpKind.DELETE_OBJECTS, uri, bucket=left.bucket, keys=sorted(o.key for o in objs))
    for upload in sorted(left.uploads, key=lambda u: (u.key, u.upload_id)):
        age = max(timedelta(0), _aware(now) - _aware(upload.initiated))
        found = Orphan(Reason.UNFINISHED_UPLOAD, f"started {_age_text(age)} ago, never completed", age)
        blockers = [ReasonNote.of(x) for x in found.youth(policy, force=force)]
        b.add(
            Entry(
                id=upload.uri,
                kind="upload",
                action=Action.KEEP if blockers else Action.DELETE,
                reasons=[*blockers, found.note()],
                age_seconds=round(age.total_seconds(), 1),
                sweep=True,
            )
        )
        if not blockers:
            b.op(OpKind.ABORT_UPLOAD, upload.uri, bucket=left.bucket, keys=[upload.key], upload_id=upload.upload_id)
