"""The safety rules of DESIGN.md section 3 as pure functions: a verdict per resource, with every reason.

Every destructive action (delete, terminate, detach-and-delete) asks here first. A verdict lists blockers; each
blocker names the override that lifts it (`force`, `adopt`), or none when nothing may lift it (an attached volume
is never deleted: detach it first). `now` is a parameter so tests control time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from core.errors import ADOPT_MEANS, SafetyRefusalError
from core.models import ManagedResource, Snapshot, Volume

# Rule 6: younger than this needs `force` (SafetyPolicy.min_age_minutes' default, readable without Prefect).
DEFAULT_MIN_AGE_MINUTES = 5.0


class Reason(StrEnum):
    NOT_MANAGED = "not managed"
    PERSISTENT = "persistent"
    PROTECTED = "protected"
    TOO_YOUNG = "younger than the minimum age"
    ATTACHED = "attached"
    HAS_SNAPSHOTS = "has snapshots"
    TRAINING_RUNNING = "training running"
    RECENT_CHECKPOINT = "recent checkpoint"
    # Added for the teardown planner (core/teardown.py): cleanup's own reasons to keep something.
    NOT_FOUND = "not found"
    TRAINING_UNKNOWN = "training state unknown"
    LATEST_CHECKPOINT = "latest complete checkpoint"
    JOB_UNFINISHED = "job unfinished"
    RETAINED = "retained"
    # The sweep's orphan rules (core/teardown.py `find_orphans`): why something no job needs goes. Information
    # next to the action, never a reason to keep; the rule's age threshold is TeardownPolicy.rule_age.
    PREWARM_LEFT = "prewarm instance left running"
    UNRECORDED_ATTEMPT = "attempt not in the job record"
    AGENT_NEVER_STARTED = "agent never started"
    AGENT_SILENT = "agent heartbeat stopped"
    JOB_ENDED = "job ended"
    UNFINISHED_PREWARM = "left by an unfinished prewarm"
    LEAKED_ROOT_VOLUME = "root volume of a gone instance"
    UNATTACHED_VOLUME = "unattached volume"
    STAGING_ABANDONED = "staging no instance uses"
    STALE_STAGING = "old staging"
    UNFINISHED_UPLOAD = "unfinished multipart upload"


@dataclass(frozen=True)
class Blocker:
    reason: Reason
    detail: str
    override: str | None  # the option that lifts it; None = nothing lifts it

    def __str__(self) -> str:
        lift = f" (override: {self.override})" if self.override else ""
        return f"{self.detail}{lift}"


@dataclass(frozen=True)
class Verdict:
    resource_id: str
    action: str
    blockers: tuple[Blocker, ...] = ()
    notes: tuple[str, ...] = ()
    snapshots: tuple[str, ...] = field(default=())

    @property
    def allowed(self) -> bool:
        return not self.blockers

    def raise_if_refused(self) -> None:
        """Raise one SafetyRefusalError listing every blocker and how to lift it."""
        if self.allowed:
            return
        reasons = "; ".join(str(b) for b in self.blockers)
        overrides = sorted({b.override for b in self.blockers if b.override})
        spelled = [f"{o}=True (CLI: --{o.replace('_', '-')})" for o in overrides]
        fix = (
            f"If you are sure, pass {' and '.join(spelled)}."
            if all(b.override for b in self.blockers)
            else "Resolve the blockers without an override first (e.g. detach the volume)."
        )
        if "adopt" in overrides:
            fix += f" Adopting will {ADOPT_MEANS}."
        raise SafetyRefusalError(f"refusing to {self.action} {self.resource_id}: {reasons}", fix=fix)


def _format_age(age: timedelta) -> str:
    seconds = int(age.total_seconds())
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds < 3600 else f"{seconds // 3600}h{seconds % 3600 // 60}m"


def common_blockers(
    resource: ManagedResource, *, now: datetime, min_age: timedelta, force: bool, adopt: bool = False
) -> list[Blocker]:
    """The rules every destructive action shares: ownership, protection marks, youth."""
    blockers: list[Blocker] = []
    if not resource.managed and not adopt:
        blockers.append(Blocker(Reason.NOT_MANAGED, f"{resource.id} was not created by trainctl", "adopt"))
    if force:
        return blockers
    if resource.protected:
        blockers.append(Blocker(Reason.PROTECTED, f"{resource.id} is tagged protected", "force"))
    age = resource.age(now)
    if age < min_age:
        blockers.append(
            Blocker(
                Reason.TOO_YOUNG,
                f"{resource.id} is {_format_age(age)} old, younger than {_format_age(min_age)}",
                "force",
            )
        )
    return blockers


def volume_delete_verdict(
    volume: Volume,
    *,
    snapshots: Sequence[Snapshot],
    now: datetime,
    min_age: timedelta,
    force: bool = False,
    adopt: bool = False,
    delete_snapshots: bool = False,
) -> Verdict:
    """May this volume be deleted? Attached: never (detach first). Persistent/protected/young: only with force.

    Snapshots never block (they are independent of the volume) but are always listed; with `delete_snapshots`
    they are deleted too, under the same ownership and protection rules.
    """
    blockers = common_blockers(volume, now=now, min_age=min_age, force=force, adopt=adopt)
    if volume.persistent and not force:
        blockers.append(Blocker(Reason.PERSISTENT, f"{volume.id} is a persistent data volume", "force"))
    if volume.attached:
        blockers.append(
            Blocker(Reason.ATTACHED, f"{volume.id} is attached to {volume.attached_instance_id}; detach it first", None)
        )
    notes: list[str] = []
    snapshot_ids = tuple(s.id for s in snapshots)
    if snapshots:
        if delete_snapshots:
            notes.append(f"its {len(snapshots)} snapshot(s) will be deleted too: {', '.join(snapshot_ids)}")
            for snapshot in snapshots:
                blockers.extend(common_blockers(snapshot, now=now, min_age=min_age, force=force, adopt=adopt))
        else:
            notes.append(
                f"it has {len(snapshots)} snapshot(s) that will remain: {', '.join(snapshot_ids)} "
                "(pass delete_snapshots to remove them)"
            )
    return Verdict(volume.id, "delete volume", tuple(blockers), tuple(notes), snapshot_ids)


def snapshot_delete_verdict(
    snapshot: Snapshot, *, now: datetime, min_age: timedelta, force: bool = False, adopt: bool = False
) -> Verdict:
    blockers = common_blockers(snapshot, now=now, min_age=min_age, force=force, adopt=adopt)
    return Verdict(snapshot.id, "delete snapshot", tuple(blockers))


def cleanup_blockers(resource: ManagedResource, *, now: datetime, min_age: timedelta, force: bool) -> list[Blocker]:
    """Cleanup is stricter than an explicit delete (DESIGN.md section 2): `force` lifts only youth.

    Unmanaged, protected and persistent resources are never destroyed by cleanup, whatever the flags; deleting
    one of those is an explicit, single-resource act (`trainctl ebs delete --force`), never a side effect.
    """
    blockers: list[Blocker] = []
    for blocker in common_blockers(resource, now=now, min_age=min_age, force=False):
        if blocker.reason is Reason.TOO_YOUNG:
            if not force:
                blockers.append(blocker)
        elif blocker.reason is Reason.PROTECTED:
            blockers.append(
                Blocker(Reason.PROTECTED, f"{resource.id} is tagged protected; cleanup never deletes it", None)
            )
        else:
            blockers.append(Blocker(blocker.reason, blocker.detail, None))  # no adopt in cleanup
    if resource.persistent:
        blockers.append(Blocker(Reason.PERSISTENT, f"{resource.id} is persistent; cleanup keeps it", None))
    return blockers


def training_blockers(
    instance_id: str,
    status: str | None,
    jobs: Sequence[str],
    *,
    wait_for_training: bool,
    force_training: bool,
) -> list[Blocker]:
    """Rule 2: a live training job blocks termination. `force` never lifts this: only `force_training` (stop the
    job, flushing its checkpoint) or `wait_for_training` (wait until it ends) do. A state we could not read
    (SSM unreachable) counts as possibly running."""
    if status == "idle" or force_training or wait_for_training:
        return []
    if status == "running":
        names = ", ".join(jobs) or "a training process"
        return [
            Blocker(
                Reason.TRAINING_RUNNING,
                f"{instance_id} is running {names}",
                "force_training or wait_for_training",
            )
        ]
    return [
        Blocker(
            Reason.TRAINING_UNKNOWN,
            f"could not check training on {instance_id} over SSM ({status or 'not checked'})",
            "force_training",
        )
    ]


def checkpoint_blockers(
    checkpoint_id: str, *, newest_age: timedelta, recency: timedelta, latest_complete: bool
) -> list[Blocker]:
    """Rule 7: checkpoint objects younger than the recency, and a job's latest complete checkpoint, stay."""
    blockers: list[Blocker] = []
    if newest_age < recency:
        blockers.append(
            Blocker(
                Reason.RECENT_CHECKPOINT,
                f"{checkpoint_id} has objects {_format_age(newest_age)} old, younger than {_format_age(recency)}",
                None,
            )
        )
    if latest_complete:
        blockers.append(
            Blocker(Reason.LATEST_CHECKPOINT, f"{checkpoint_id} is the job's latest complete checkpoint", None)
        )
    return blockers
