"""Recovery: what spot-watch does next with one job, decided from what one pass saw. Pure: acting stays in the flow.

`decide(observation, capacity, now)` returns one `Decision`; the flow acts on it, re-reads the record and asks
again, until the answer is to wait. The named strategies (ResumePolicy.strategy) are SkyPilot's idea — a recovery
strategy is a name, not four booleans — but here they only decide:

    none                    record the interruption; a human relaunches (the record says how)
    same-az                 relaunch where the data volume is; retry while capacity is refused, up to the
                            policy's capacity wait; then give up
    same-az-then-move       … then move the volume (snapshot → restore) to the AZ with the best spot placement
                            score and launch there
    same-az-then-on-demand  … then launch on-demand in the same AZ

Rules every strategy keeps:
- A pass that could not look (an EC2 error, throttling) concludes nothing about the instance: SkyPilot #10155
  recovered 24 times in 19 h on transient status errors. Only what was seen counts.
- A resume is a new attempt claimed with a conditional write (`resuming`), so two passes cannot both launch; its
  launch key is job + attempt, so a retried or overlapping launch finds the first one's instance.
- The replacement may boot while the old instance serves its notice (`overlap`), but the flow gives it the volume
  and starts its trainer only after the old attempt let go: never two trainers on one volume or checkpoint prefix.
- The spot → on-demand choice at launch (`launch_capacity`) is made here, not in the launch task.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from core.jobs import (
    AgentStatus,
    InterruptionRecord,
    JobRecord,
    JobStatus,
    RecoveryStrategy,
    ResumePolicy,
)
from core.models import Instance
from core.spot import SpotInterruption, spot_interruption

Capacity = Literal["spot", "on-demand"]
_Doc = TypeVar("_Doc", AgentStatus, InterruptionRecord)

# A launch that has not moved for this long past its instance's online timeout was abandoned (its flow killed):
# the next pass takes it over (the launch key makes that safe) or ends it.
LAUNCH_LEASE_MARGIN = timedelta(minutes=10)
# Between two tries of a refused capacity: EC2 capacity comes back in minutes, not seconds.
CAPACITY_RETRY_BACKOFF = timedelta(minutes=1)
# A finished job whose instance still runs this long after the agent's end (its own shutdown failed) is ended.
INSTANCE_END_GRACE = timedelta(minutes=5)


class Act(StrEnum):
    NOTHING = "nothing"  # running well, or a launch under way, or could not look: next pass
    RECORD_END = "record-end"  # the agent said the attempt ended: the record follows (core.jobs.reconcile)
    RECORD_LOST = "record-lost"  # the instance went without the agent's word: the attempt failed
    RECORD_INTERRUPTION = "record-interruption"  # spot took (or is taking) the instance
    RESUME = "resume"  # launch the next attempt, or continue launching the current one
    GIVE_UP = "give-up"
    END_INSTANCE = "end-instance"  # a finished job's instance still runs: terminate it
    ABANDON_LAUNCH = "abandon-launch"  # a user's launch died half-way: end its instance, record it failed


class Observation(BaseModel):
    """What one pass saw of one job."""

    model_config = ConfigDict(frozen=True)

    record: JobRecord
    looked: bool = Field(description="EC2 answered this pass; False: nothing is concluded about the instance")
    instance: Instance | None = Field(
        default=None, description="the current attempt's instance as EC2 lists it; None: not listed, or none yet"
    )
    agent: AgentStatus | None = Field(default=None, description="the current attempt's agent status")
    interruption: InterruptionRecord | None = Field(
        default=None, description="the agent's record of a spot notice on the current attempt's instance"
    )
    latest_checkpoint: int | None = Field(default=None, description="seq of the latest complete checkpoint")


class CapacityView(BaseModel):
    """Where the job's instance type may get spot capacity (asked only when a move is on the table)."""

    model_config = ConfigDict(frozen=True)

    offered: list[str] = Field(default_factory=list, description="AZs that offer the instance type")
    scores: dict[str, int] | None = Field(default=None, description="spot placement score per AZ; None: unknown")


class Decision(BaseModel):
    model_config = ConfigDict(frozen=True)

    act: Act
    reason: str
    attempt: int | None = Field(default=None, description="RESUME: the attempt to launch")
    new_attempt: bool = Field(default=False, description="RESUME: claim it first (else continue the current one)")
    capacity: Capacity | None = None
    zone: str | None = Field(default=None, description="RESUME: the AZ to launch in")
    move_volume: bool = Field(default=False, description="RESUME: restore the volume into `zone` first")
    resume_from_seq: int | None = None
    overlap: bool = Field(default=False, description="RESUME during the notice: wait for the old attempt to go")


def launch_capacity(spot: bool, policy: ResumePolicy, *, spot_refused: bool) -> Capacity | None:
    """The capacity to ask for: spot for a spot job; after spot was refused, on-demand if the policy allows it,
    else None (the launch fails with EC2's reason)."""
    if not spot:
        return "on-demand"
    if not spot_refused:
        return "spot"
    return "on-demand" if policy.on_demand_fallback else None


def best_other_zone(capacity: CapacityView, current: str | None) -> str | None:
    """The AZ to move to: the highest placement score among the others offering the type; with no scores (or all
    equal, as AWS gives for a single type) the first in order. None when no other AZ offers it."""
    others = [zone for zone in capacity.offered if zone != current]
    if not others:
        return None
    scores = capacity.scores or {}
    return sorted(others, key=lambda zone: -scores.get(zone, 0))[0]


def _lease(record: JobRecord) -> timedelta:
    online = timedelta(seconds=record.spec.online_timeout_s if record.spec else 600)
    return online + LAUNCH_LEASE_MARGIN


def decide(observation: Observation, capacity: CapacityView, now: datetime) -> Decision:
    """What to do next with the job (module docstring)."""
    record = observation.record
    if record.spec is None:
        return Decision(act=Act.NOTHING, reason="the record has no spec this version can read: left alone")
    # Only the current attempt's agent and notice speak for the job: another attempt's word changes nothing.
    observation = observation.model_copy(
        update={
            "agent": _current(observation.agent, record),
            "interruption": _current(observation.interruption, record),
        }
    )
    if _agent_ended(observation):
        if not observation.looked and observation.agent is not None and observation.agent.status == "failed":
            # Spot's doing or the trainer's? Only EC2 tells (see _agent_ended): never a failure on a guess.
            return Decision(act=Act.NOTHING, reason="the agent says failed; EC2 could not be read this pass")
        reason = f"the agent says attempt {record.attempt} {_agent_end(observation)}"
        return Decision(act=Act.RECORD_END, reason=reason)
    if record.finished:
        return _finished(observation, now)
    if not observation.looked:
        # Resuming needs the old instance's state (gone, or serving its notice?): never act on a guess.
        return Decision(act=Act.NOTHING, reason="EC2 could not be read this pass: left as it was")
    if record.status == JobStatus.INTERRUPTED:
        return _after_interruption(observation, capacity, now)
    if record.status == JobStatus.RESUMING:
        return _resuming(observation, capacity, now)
    return _live(observation, capacity, now)


def _current(document: _Doc | None, record: JobRecord) -> _Doc | None:
    return document if document is not None and document.attempt == record.attempt else None


def _agent_ended(observation: Observation) -> bool:
    """The agent of the record's current attempt wrote a final status other than `interrupted` (which is
    spot's doing: the interruption path records it) while the record still calls the attempt live. A `failed`
    on an instance EC2 shows taken by spot is spot's doing too: a notice shorter than the agent's poll, the
    trainer then killed by the shutdown."""
    agent, record = observation.agent, observation.record
    live = {JobStatus.PENDING, JobStatus.RUNNING, JobStatus.RESUMING}
    return (
        agent is not None
        and agent.final
        and agent.status != "interrupted"
        and not (agent.status == "failed" and _taken_by_spot(observation))
        and agent.attempt == record.attempt
        and record.status in live
    )


def _taken_by_spot(observation: Observation) -> bool:
    """EC2 (looked at this pass) shows the current attempt's instance interrupted, or being interrupted."""
    instance = observation.instance
    return (
        observation.looked
        and instance is not None
        and instance.id == observation.record.instance_id
        and spot_interruption(instance) != SpotInterruption.NONE
    )


def _agent_end(observation: Observation) -> str:
    agent = observation.agent
    assert agent is not None
    return f"{agent.status} (exit code {agent.exit_code})"


def _finished(observation: Observation, now: datetime) -> Decision:
    record, instance = observation.record, observation.instance
    assert record.spec is not None
    up = instance is not None and instance.state in {"pending", "running"}
    if not observation.looked or not up or record.spec.keep_instance:
        return Decision(act=Act.NOTHING, reason=f"{record.status.value}; nothing runs for it")
    # Without any end time the record's own last write stands in: the grace is never skipped for lack of one.
    ended = record.finished_at or (observation.agent.ended_at if observation.agent else None) or record.updated_at
    if ended is not None and now - ended < INSTANCE_END_GRACE:
        return Decision(act=Act.NOTHING, reason="ended just now; the agent is shutting its instance down")
    return Decision(
        act=Act.END_INSTANCE, reason=f"{record.status.value}, but {instance.id if instance else '?'} still runs"
    )


def _live(observation: Observation, capacity: CapacityView, now: datetime) -> Decision:
    """pending or running: is it healthy, being interrupted, interrupted, or gone?"""
    record, instance = observation.record, observation.instance
    if not observation.looked:
        return Decision(act=Act.NOTHING, reason="EC2 could not be read this pass: left as it was")
    if record.instance_id is None or (record.status == JobStatus.PENDING and observation.agent is None):
        return _launching(observation, now)
    # The agent's word, or its notice record for an instance now gone, counts even once EC2 no longer lists it.
    told = observation.agent is not None and observation.agent.status == "interrupted"
    if told or (instance is None and observation.interruption is not None):
        return Decision(act=Act.RECORD_INTERRUPTION, reason=f"spot took {record.instance_id}")
    if instance is None:
        return Decision(act=Act.RECORD_LOST, reason=f"{record.instance_id} is gone and its agent never said it ended")
    seen = spot_interruption(instance)
    ended = observation.agent is not None and observation.agent.final
    if seen == SpotInterruption.INTERRUPTED or (seen == SpotInterruption.BEING_INTERRUPTED and ended):
        # Being interrupted with its agent already ended: nothing more to checkpoint, spot takes it now.
        return Decision(act=Act.RECORD_INTERRUPTION, reason=f"spot took {instance.id}")
    if seen == SpotInterruption.BEING_INTERRUPTED or observation.interruption is not None:
        assert record.spec is not None
        if record.spec.resume.overlap_notice and _resumable(observation) is None:
            return Decision(act=Act.RECORD_INTERRUPTION, reason=f"spot notice on {instance.id}: resuming at once")
        return Decision(act=Act.NOTHING, reason=f"spot notice on {instance.id}: the agent is checkpointing")
    if instance.state in {"pending", "running"}:
        return Decision(act=Act.NOTHING, reason=f"running on {instance.id}")
    return Decision(act=Act.RECORD_LOST, reason=f"{instance.id} is {instance.state} without the agent's final word")


def _launching(observation: Observation, now: datetime) -> Decision:
    """A user's launch (pending) that has no instance, or whose agent has not started yet."""
    record = observation.record
    since = record.current.last_try_at or record.current.launched_at or record.current.created_at
    if now - since < _lease(record):
        return Decision(act=Act.NOTHING, reason="a launch is under way")
    return Decision(
        act=Act.ABANDON_LAUNCH, reason=f"its launch stopped moving {int((now - since).total_seconds())} s ago"
    )


def _resumable(observation: Observation) -> str | None:
    """Why the job cannot be resumed, or None."""
    record = observation.record
    assert record.spec is not None
    policy = record.spec.resume
    if policy.strategy == RecoveryStrategy.NONE:
        return "its resume policy is none"
    if len(record.attempts) >= policy.max_attempts:
        return f"all {policy.max_attempts} attempts used"
    if observation.latest_checkpoint is None and not policy.from_scratch:
        return "it has no complete checkpoint (resume.from_scratch allows starting over)"
    return None


def _after_interruption(observation: Observation, capacity: CapacityView, now: datetime) -> Decision:
    record = observation.record
    assert record.spec is not None
    why_not = _resumable(observation)
    if why_not is not None:
        if record.spec.resume.strategy == RecoveryStrategy.NONE:
            return Decision(act=Act.NOTHING, reason=f"interrupted; {why_not}: relaunch it to resume")
        return Decision(act=Act.GIVE_UP, reason=f"interrupted and {why_not}")
    # The old instance may still serve its notice: the replacement boots meanwhile and waits for it.
    old = observation.instance
    overlap = old is not None and old.state in {"pending", "running"}
    return Decision(
        act=Act.RESUME,
        reason="interrupted: resuming in its AZ" + (" while the old instance serves its notice" if overlap else ""),
        attempt=record.attempt + 1,
        new_attempt=True,
        capacity=launch_capacity(record.spec.spot, record.spec.resume, spot_refused=False),
        zone=record.availability_zone,
        resume_from_seq=observation.latest_checkpoint,
        overlap=overlap,
    )


def _resuming(observation: Observation, capacity: CapacityView, now: datetime) -> Decision:
    """spot-watch claimed the current attempt: continue a launch that stopped, retry refused capacity, or move on
    as the strategy says."""
    record = observation.record
    current = record.current
    assert record.spec is not None
    base = Decision(act=Act.RESUME, reason="", attempt=record.attempt, resume_from_seq=observation.latest_checkpoint)
    if current.capacity_refused_at is None:
        since = current.last_try_at or current.created_at
        if now - since < _lease(record):
            return Decision(act=Act.NOTHING, reason=f"attempt {record.attempt} is being launched")
        capacity_type: Capacity = "on-demand" if current.capacity_type == "on-demand" else "spot"
        return base.model_copy(
            update={
                "reason": f"the launch of attempt {record.attempt} stopped moving: continuing it",
                "capacity": capacity_type,
                "zone": current.availability_zone,
            }
        )
    policy = record.spec.resume
    # Without a wait the strategy's next step comes at once: the backoff is between tries of the same step.
    backoff = CAPACITY_RETRY_BACKOFF if policy.capacity_wait_minutes else timedelta(0)
    if current.last_try_at is not None and now - current.last_try_at < backoff:
        return Decision(act=Act.NOTHING, reason="no capacity a moment ago: trying again next pass")
    zone = current.availability_zone
    if now - current.capacity_refused_at < timedelta(minutes=policy.capacity_wait_minutes):
        reason = f"no spot capacity in {zone} yet: trying again"
        return base.model_copy(update={"reason": reason, "capacity": "spot", "zone": zone})
    return _capacity_exhausted(observation, capacity, zone, base)


def _capacity_exhausted(observation: Observation, capacity: CapacityView, zone: str | None, base: Decision) -> Decision:
    record = observation.record
    assert record.spec is not None
    policy = record.spec.resume
    waited = f"no spot capacity in {zone} for {policy.capacity_wait_minutes} min"
    # The named strategy comes first; the launch's on-demand fallback is the last resort of any strategy.
    target = best_other_zone(capacity, zone) if policy.strategy == RecoveryStrategy.SAME_AZ_THEN_MOVE else None
    if target is not None:
        return base.model_copy(
            update={
                "reason": f"{waited}: moving the volume to {target}",
                "capacity": "spot",
                "zone": target,
                "move_volume": record.volume_id is not None,
            }
        )
    if policy.strategy == RecoveryStrategy.SAME_AZ_THEN_ON_DEMAND or policy.on_demand_fallback:
        return base.model_copy(update={"reason": f"{waited}: on-demand", "capacity": "on-demand", "zone": zone})
    if policy.strategy == RecoveryStrategy.SAME_AZ_THEN_MOVE:
        return Decision(act=Act.GIVE_UP, reason=f"{waited}, and no other AZ offers {record.instance_type}")
    return Decision(act=Act.GIVE_UP, reason=f"{waited} (strategy {policy.strategy.value})")
