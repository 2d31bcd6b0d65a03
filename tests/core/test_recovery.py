"""core.recovery.decide: what spot-watch does next with a job, as a table of situations → act.

Every record is built as the flows build it (JobRecord.first, then with_status / with_new_attempt), every instance
as observe_training_instances lists it, with a fixed clock.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.jobs import (
    AgentStatus,
    AttemptRecord,
    InterruptionRecord,
    JobRecord,
    JobSpec,
    JobStatus,
    RecoveryStrategy,
    ResumePolicy,
    StopReason,
    TemplateSpec,
)
from core.models import Instance
from core.recovery import (
    CAPACITY_RETRY_BACKOFF,
    INSTANCE_END_GRACE,
    LAUNCH_LEASE_MARGIN,
    Act,
    CapacityView,
    Decision,
    Observation,
    best_other_zone,
    decide,
    launch_capacity,
)

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)  # attempt 1 claimed
NOTICE = T0 + timedelta(hours=3)  # spot's notice / the interruption
NOW = NOTICE + timedelta(minutes=3)
AZ = "us-east-1a"
VOLUME = "vol-0123456789abcdef0"
OLD, NEW = "i-0123456789abcdef0", "i-0fedcba9876543210"
LEASE = timedelta(seconds=600) + LAUNCH_LEASE_MARGIN  # online_timeout_s's default + the margin
NO_CAPACITY = CapacityView()
THREE_AZS = CapacityView(offered=["us-east-1a", "us-east-1b", "us-east-1c"], scores={"us-east-1b": 3, "us-east-1c": 9})
S = RecoveryStrategy


def spec(
    *, volume: str | None = VOLUME, keep_instance: bool = False, online_timeout_s: int = 600, **resume: Any
) -> JobSpec:
    return JobSpec(
        name="llm",
        bucket="trainctl-test",
        template=TemplateSpec(instance_type="g5.xlarge"),
        command=["python", "train.py"],
        data_volume_id=volume,
        keep_instance=keep_instance,
        online_timeout_s=online_timeout_s,
        resume=ResumePolicy(**resume),
    )


def pending(job: JobSpec | None = None) -> JobRecord:
    return JobRecord.first(job or spec(), now=T0)


def running(job: JobSpec | None = None) -> JobRecord:
    launched = pending(job).with_attempt(instance_id=OLD, availability_zone=AZ, capacity_type="spot", launched_at=T0)
    return launched.with_status(JobStatus.RUNNING)


def interrupted(job: JobSpec | None = None) -> JobRecord:
    return running(job).with_status(JobStatus.INTERRUPTED, finished_at=NOTICE + timedelta(minutes=2))


def resuming(job: JobSpec | None = None, **attempt: Any) -> JobRecord:
    """Attempt 2 claimed by spot-watch in the volume's AZ (its fields as the launch left them)."""
    old = interrupted(job)
    new = AttemptRecord(
        number=2, launched_by="spot-watch", availability_zone=AZ, volume_id=old.volume_id, created_at=NOW
    )
    return old.with_new_attempt(new, JobStatus.RESUMING).with_attempt(**attempt)


def refused(
    job: JobSpec | None = None, *, for_: timedelta, last_try_ago: timedelta = timedelta(minutes=2)
) -> JobRecord:
    """Resuming, spot capacity refused in the volume's AZ since `for_` before NOW, last tried `last_try_ago`."""
    return resuming(job, capacity_refused_at=NOW - for_, last_try_at=NOW - last_try_ago, tries=3)


def ended(status: JobStatus, job: JobSpec | None = None, *, at: datetime = NOTICE) -> JobRecord:
    return running(job).with_status(status, exit_code=0, finished_at=at)


def instance(state: str = "running", *, request: str | None = "active", reason: str | None = None) -> Instance:
    return Instance(
        id=OLD,
        created_at=T0,
        state=state,
        availability_zone=AZ,
        instance_type="g5.xlarge",
        lifecycle="spot",
        spot_request_id="sir-abcdefgh",
        spot_request_status=request,
        state_reason_code=reason,
    )


def agent(status: str, attempt: int = 1, **fields: Any) -> AgentStatus:
    return AgentStatus.model_validate(
        {"job": "llm", "attempt": attempt, "instance_id": OLD, "status": status, **fields}
    )


def notice(attempt: int = 1) -> InterruptionRecord:
    return InterruptionRecord(job="llm", instance_id=OLD, attempt=attempt, notice_seen_at=NOTICE, checkpoint_seq=7)


def seen(record: JobRecord, up: Instance | None = None, *, looked: bool = True, **fields: Any) -> Observation:
    fields.setdefault("latest_checkpoint", 7)
    return Observation(record=record, looked=looked, instance=up, **fields)


UP = instance()
MARKED = instance(request="marked-for-termination")
TAKEN = instance("terminated", request="instance-terminated-no-capacity", reason="Server.SpotInstanceTermination")
SHUTTING = instance("shutting-down", request="instance-terminated-by-price", reason="Server.SpotInstanceTermination")
BY_USER = instance("terminated", request="instance-terminated-by-user", reason="Client.UserInitiatedShutdown")


def _check(decision: Decision, expected: dict[str, Any]) -> None:
    assert {field: getattr(decision, field) for field in expected} == expected, decision.reason


# -- a live job (pending or running) ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("observation", "expected"),
    [
        pytest.param(seen(running(), UP), {"act": Act.NOTHING}, id="healthy-running"),
        pytest.param(seen(running(), UP, agent=agent("running")), {"act": Act.NOTHING}, id="healthy-agent-running"),
        # The notice: the request is marked, or the agent recorded it; with overlap the interruption is recorded
        # at once so that the replacement boots during the two minutes.
        pytest.param(seen(running(), MARKED), {"act": Act.RECORD_INTERRUPTION}, id="marked-overlap"),
        pytest.param(seen(running(), UP, interruption=notice()), {"act": Act.RECORD_INTERRUPTION}, id="notice-overlap"),
        pytest.param(seen(running(spec(overlap_notice=False)), MARKED), {"act": Act.NOTHING}, id="marked-no-overlap"),
        pytest.param(
            seen(running(spec(overlap_notice=False)), UP, interruption=notice()),
            {"act": Act.NOTHING},
            id="notice-no-overlap",
        ),
        # Overlap only when there is something to resume: otherwise the agent just checkpoints.
        pytest.param(seen(running(spec(max_attempts=1)), MARKED), {"act": Act.NOTHING}, id="marked-last-attempt"),
        pytest.param(seen(running(spec(strategy=S.NONE)), MARKED), {"act": Act.NOTHING}, id="marked-strategy-none"),
        pytest.param(
            seen(running(), MARKED, latest_checkpoint=None), {"act": Act.NOTHING}, id="marked-no-checkpoint-yet"
        ),
        # Interrupted: spot's StateReason, or the agent's own final word (even once EC2 no longer lists it).
        pytest.param(seen(running(), TAKEN), {"act": Act.RECORD_INTERRUPTION}, id="spot-terminated"),
        pytest.param(seen(running(), SHUTTING), {"act": Act.RECORD_INTERRUPTION}, id="spot-shutting-down"),
        pytest.param(
            seen(running(), UP, agent=agent("interrupted")), {"act": Act.RECORD_INTERRUPTION}, id="agent-interrupted"
        ),
        pytest.param(
            seen(running(), None, agent=agent("interrupted")),
            {"act": Act.RECORD_INTERRUPTION},
            id="agent-interrupted-instance-gone",
        ),
        pytest.param(
            seen(running(), None, interruption=notice()), {"act": Act.RECORD_INTERRUPTION}, id="notice-instance-gone"
        ),
        # Gone without spot's or the agent's word: the attempt is lost, not interrupted.
        pytest.param(seen(running(), None), {"act": Act.RECORD_LOST}, id="instance-gone"),
        pytest.param(seen(running(), BY_USER), {"act": Act.RECORD_LOST}, id="terminated-by-user"),
        pytest.param(seen(running(), instance("stopped", request=None)), {"act": Act.RECORD_LOST}, id="stopped"),
        # The agent of the current attempt ended it: the record follows.
        pytest.param(
            seen(running(), UP, agent=agent("succeeded", exit_code=0)), {"act": Act.RECORD_END}, id="agent-succeeded"
        ),
        pytest.param(seen(running(), UP, agent=agent("failed", exit_code=1)), {"act": Act.RECORD_END}, id="failed"),
        pytest.param(
            seen(running(), BY_USER, agent=agent("failed", exit_code=1)), {"act": Act.RECORD_END}, id="failed-by-user"
        ),
        # `failed` on an instance spot took (a notice shorter than the agent's poll; the shutdown's SIGTERM ended
        # the trainer): an interruption, resumed as one.
        pytest.param(
            seen(running(), TAKEN, agent=agent("failed", exit_code=143)),
            {"act": Act.RECORD_INTERRUPTION},
            id="failed-spot-took-it",
        ),
        pytest.param(
            seen(running(), MARKED, agent=agent("failed", exit_code=143)),
            {"act": Act.RECORD_INTERRUPTION},
            id="failed-spot-taking-it",
        ),
        pytest.param(
            seen(running(spec(overlap_notice=False)), MARKED, agent=agent("failed", exit_code=143)),
            {"act": Act.RECORD_INTERRUPTION},
            id="failed-spot-taking-it-no-overlap",
        ),
        pytest.param(
            seen(running(), TAKEN, looked=False, agent=agent("failed", exit_code=143)),
            {"act": Act.NOTHING},
            id="failed-unseen",
        ),
        pytest.param(seen(pending(), None, agent=agent("stopped")), {"act": Act.RECORD_END}, id="pending-stopped"),
        # Another attempt's words change nothing.
        pytest.param(
            seen(running(), UP, agent=agent("succeeded", attempt=2, exit_code=0)),
            {"act": Act.NOTHING},
            id="other-attempt-succeeded",
        ),
        pytest.param(
            seen(running(), UP, agent=agent("interrupted", attempt=2)), {"act": Act.NOTHING}, id="other-interrupted"
        ),
        pytest.param(seen(running(), UP, interruption=notice(attempt=2)), {"act": Act.NOTHING}, id="other-notice"),
    ],
)
def test_a_live_job(observation: Observation, expected: dict[str, Any]) -> None:
    _check(decide(observation, THREE_AZS, NOW), expected)


# -- a launch in progress, or one that stopped moving -----------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "since", "expected"),
    [
        (pending(), timedelta(minutes=5), {"act": Act.NOTHING}),
        (pending(), LEASE - timedelta(seconds=1), {"act": Act.NOTHING}),
        (pending(), LEASE + timedelta(seconds=1), {"act": Act.ABANDON_LAUNCH}),
        (pending().with_attempt(instance_id=OLD), LEASE + timedelta(seconds=1), {"act": Act.ABANDON_LAUNCH}),
        (pending(spec(online_timeout_s=3600)), LEASE + timedelta(seconds=1), {"act": Act.NOTHING}),
        # spot-watch's own launch is continued, never abandoned: its launch key finds the instance it made.
        (resuming(last_try_at=NOW), LEASE - timedelta(seconds=1), {"act": Act.NOTHING}),
        (
            resuming(last_try_at=NOW),
            LEASE + timedelta(seconds=1),
            {"act": Act.RESUME, "attempt": 2, "new_attempt": False, "capacity": "spot", "zone": AZ},
        ),
        (
            resuming(last_try_at=NOW, capacity_type="on-demand"),
            LEASE + timedelta(seconds=1),
            {"act": Act.RESUME, "attempt": 2, "new_attempt": False, "capacity": "on-demand"},
        ),
    ],
    ids=[
        "young",
        "just-in-lease",
        "stale",
        "stale-with-instance",
        "longer-timeout",
        "resuming",
        "stale-resuming",
        "stale-resuming-on-demand",
    ],
)
def test_a_launch_under_way_or_stale(record: JobRecord, since: timedelta, expected: dict[str, Any]) -> None:
    # The launch's last sign of life was `since` ago (its last try, else its claim).
    now = (record.current.last_try_at or record.current.created_at) + since
    _check(decide(seen(record, UP if record.instance_id else None), THREE_AZS, now), expected)


# -- after an interruption ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("observation", "expected"),
    [
        pytest.param(
            seen(interrupted(), TAKEN),
            {
                "act": Act.RESUME,
                "attempt": 2,
                "new_attempt": True,
                "capacity": "spot",
                "zone": AZ,
                "resume_from_seq": 7,
                "overlap": False,
                "move_volume": False,
            },
            id="resume-in-its-az",
        ),
        pytest.param(
            seen(interrupted(), MARKED),
            {"act": Act.RESUME, "attempt": 2, "new_attempt": True, "overlap": True},
            id="resume-during-the-notice",
        ),
        pytest.param(seen(interrupted(), None), {"act": Act.RESUME, "overlap": False}, id="old-instance-gone"),
        pytest.param(seen(interrupted(spec(max_attempts=1)), TAKEN), {"act": Act.GIVE_UP}, id="max-attempts-1"),
        pytest.param(seen(interrupted(spec(max_attempts=2)), TAKEN), {"act": Act.RESUME}, id="one-attempt-left"),
        pytest.param(seen(interrupted(), TAKEN, latest_checkpoint=None), {"act": Act.GIVE_UP}, id="no-checkpoint"),
        pytest.param(
            seen(interrupted(spec(from_scratch=True)), TAKEN, latest_checkpoint=None),
            {"act": Act.RESUME, "attempt": 2, "resume_from_seq": None},
            id="no-checkpoint-from-scratch",
        ),
        pytest.param(seen(interrupted(spec(strategy=S.NONE)), TAKEN), {"act": Act.NOTHING}, id="strategy-none"),
        *[
            pytest.param(seen(interrupted(spec(strategy=s)), TAKEN), {"act": Act.RESUME, "zone": AZ}, id=f"first-{s}")
            for s in (S.SAME_AZ, S.SAME_AZ_THEN_MOVE, S.SAME_AZ_THEN_ON_DEMAND)
        ],
    ],
)
def test_after_an_interruption(observation: Observation, expected: dict[str, Any]) -> None:
    _check(decide(observation, THREE_AZS, NOW), expected)


def test_after_the_third_attempt_of_three_is_interrupted_the_job_gives_up() -> None:
    record = interrupted(spec(max_attempts=3))
    for number in (2, 3):
        claim = AttemptRecord(number=number, launched_by="spot-watch", availability_zone=AZ, created_at=NOW)
        record = record.with_new_attempt(claim, JobStatus.RESUMING).with_attempt(instance_id=OLD)
        record = record.with_status(JobStatus.RUNNING).with_status(JobStatus.INTERRUPTED)
    decision = decide(seen(record, TAKEN), THREE_AZS, NOW)
    assert decision.act == Act.GIVE_UP and "3 attempts" in decision.reason


# -- resuming when spot capacity is refused --------------------------------------------------------------------

WAIT = timedelta(minutes=10)  # ResumePolicy.capacity_wait_minutes's default
BEFORE = WAIT - timedelta(minutes=3)
AFTER = WAIT + timedelta(minutes=1)
RETRY_SAME_AZ = {"act": Act.RESUME, "attempt": 2, "new_attempt": False, "capacity": "spot", "zone": AZ}
ON_DEMAND = {"act": Act.RESUME, "attempt": 2, "capacity": "on-demand", "zone": AZ, "move_volume": False}


@pytest.mark.parametrize(
    ("record", "capacity", "expected"),
    [
        # Before the wait is over every strategy retries spot where the volume is (once the backoff passed).
        *[
            pytest.param(refused(spec(strategy=s), for_=BEFORE), THREE_AZS, RETRY_SAME_AZ, id=f"before-{s}")
            for s in (S.SAME_AZ, S.SAME_AZ_THEN_MOVE, S.SAME_AZ_THEN_ON_DEMAND)
        ],
        pytest.param(
            refused(for_=BEFORE, last_try_ago=CAPACITY_RETRY_BACKOFF - timedelta(seconds=1)),
            THREE_AZS,
            {"act": Act.NOTHING},
            id="within-backoff",
        ),
        pytest.param(
            refused(spec(strategy=S.SAME_AZ_THEN_MOVE), for_=AFTER, last_try_ago=timedelta(seconds=5)),
            THREE_AZS,
            {"act": Act.NOTHING},
            id="after-wait-within-backoff",
        ),
        # After it: the strategy's next step.
        pytest.param(refused(spec(strategy=S.SAME_AZ), for_=AFTER), THREE_AZS, {"act": Act.GIVE_UP}, id="same-az"),
        pytest.param(
            refused(spec(strategy=S.SAME_AZ, on_demand_fallback=True), for_=AFTER),
            THREE_AZS,
            ON_DEMAND,
            id="same-az-with-fallback",
        ),
        pytest.param(
            refused(spec(strategy=S.SAME_AZ_THEN_ON_DEMAND), for_=AFTER), THREE_AZS, ON_DEMAND, id="then-on-demand"
        ),
        pytest.param(
            refused(spec(strategy=S.SAME_AZ_THEN_MOVE), for_=AFTER),
            THREE_AZS,
            {"act": Act.RESUME, "attempt": 2, "capacity": "spot", "zone": "us-east-1c", "move_volume": True},
            id="then-move-best-score",
        ),
        pytest.param(
            refused(spec(strategy=S.SAME_AZ_THEN_MOVE, volume=None), for_=AFTER),
            THREE_AZS,
            {"act": Act.RESUME, "zone": "us-east-1c", "move_volume": False},
            id="then-move-without-volume",
        ),
        pytest.param(
            refused(spec(strategy=S.SAME_AZ_THEN_MOVE), for_=AFTER),
            CapacityView(offered=["us-east-1a", "us-east-1d", "us-east-1b"], scores={"us-east-1d": 4, "us-east-1b": 4}),
            {"act": Act.RESUME, "zone": "us-east-1d", "move_volume": True},
            id="then-move-equal-scores-keep-order",
        ),
        pytest.param(
            refused(spec(strategy=S.SAME_AZ_THEN_MOVE), for_=AFTER),
            CapacityView(offered=[AZ]),
            {"act": Act.GIVE_UP},
            id="then-move-nowhere-else",
        ),
        # The strategy comes first; the fallback only where the strategy has no step left.
        pytest.param(
            refused(spec(strategy=S.SAME_AZ_THEN_MOVE, on_demand_fallback=True), for_=AFTER),
            THREE_AZS,
            {"act": Act.RESUME, "zone": "us-east-1c", "capacity": "spot", "move_volume": True},
            id="then-move-with-fallback-moves",
        ),
        pytest.param(
            refused(spec(strategy=S.SAME_AZ_THEN_MOVE, on_demand_fallback=True), for_=AFTER),
            CapacityView(offered=[AZ]),
            ON_DEMAND,
            id="then-move-nowhere-else-with-fallback",
        ),
        pytest.param(
            refused(spec(strategy=S.SAME_AZ_THEN_ON_DEMAND, capacity_wait_minutes=0), for_=timedelta(0)),
            THREE_AZS,
            ON_DEMAND,
            id="no-wait",
        ),
        # Without a wait the next step comes at once, not after the retry backoff.
        pytest.param(
            refused(
                spec(strategy=S.SAME_AZ_THEN_ON_DEMAND, capacity_wait_minutes=0),
                for_=timedelta(seconds=5),
                last_try_ago=timedelta(seconds=6),
            ),
            THREE_AZS,
            ON_DEMAND,
            id="no-wait-on-demand-at-once",
        ),
        pytest.param(
            refused(
                spec(strategy=S.SAME_AZ_THEN_MOVE, capacity_wait_minutes=0),
                for_=timedelta(seconds=5),
                last_try_ago=timedelta(seconds=6),
            ),
            THREE_AZS,
            {"act": Act.RESUME, "capacity": "spot", "zone": "us-east-1c", "move_volume": True},
            id="no-wait-move-at-once",
        ),
    ],
)
def test_resuming_with_capacity_refused(record: JobRecord, capacity: CapacityView, expected: dict[str, Any]) -> None:
    _check(decide(seen(record, TAKEN), capacity, NOW), expected)


# -- a finished job whose instance still runs -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("observation", "now", "act"),
    [
        (seen(ended(JobStatus.SUCCEEDED), UP), NOTICE + INSTANCE_END_GRACE - timedelta(seconds=1), Act.NOTHING),
        (seen(ended(JobStatus.SUCCEEDED), UP), NOTICE + INSTANCE_END_GRACE + timedelta(seconds=1), Act.END_INSTANCE),
        (seen(ended(JobStatus.FAILED), instance("pending")), NOW + INSTANCE_END_GRACE, Act.END_INSTANCE),
        (seen(ended(JobStatus.STOPPED), UP), NOW + INSTANCE_END_GRACE, Act.END_INSTANCE),
        (seen(ended(JobStatus.SUCCEEDED, spec(keep_instance=True)), UP), NOW + timedelta(days=2), Act.NOTHING),
        (seen(ended(JobStatus.SUCCEEDED), instance("terminated")), NOW + timedelta(days=2), Act.NOTHING),
        (seen(ended(JobStatus.SUCCEEDED), None), NOW + timedelta(days=2), Act.NOTHING),
        # No end time recorded: the agent's end counts, else the record's last write.
        (
            seen(ended(JobStatus.SUCCEEDED).with_attempt(finished_at=None), UP, agent=agent("succeeded", ended_at=NOW)),
            NOW + timedelta(minutes=1),
            Act.NOTHING,
        ),
        (
            seen(ended(JobStatus.SUCCEEDED).with_attempt(finished_at=None).model_copy(update={"updated_at": NOW}), UP),
            NOW + timedelta(minutes=1),
            Act.NOTHING,
        ),
        (
            seen(ended(JobStatus.SUCCEEDED).with_attempt(finished_at=None).model_copy(update={"updated_at": NOW}), UP),
            NOW + INSTANCE_END_GRACE + timedelta(seconds=1),
            Act.END_INSTANCE,
        ),
    ],
    ids=[
        "in-grace",
        "after-grace",
        "failed-pending",
        "stopped",
        "keep-instance",
        "terminated",
        "not-listed",
        "agent-end-in-grace",
        "updated-in-grace",
        "updated-after-grace",
    ],
)
def test_a_finished_job_ends_its_instance_after_the_grace(observation: Observation, now: datetime, act: Act) -> None:
    assert decide(observation, THREE_AZS, now).act == act


def test_gave_up_job_whose_instance_still_runs_has_it_ended() -> None:
    record = interrupted().with_status(JobStatus.GAVE_UP, message="no attempts left")
    assert decide(seen(record, UP), THREE_AZS, NOTICE + timedelta(hours=1)).act == Act.END_INSTANCE


# -- what is never done ---------------------------------------------------------------------------------------


STATES = {
    "pending-stale": pending(),
    "running": running(),
    "interrupted": interrupted(),
    "resuming-stale": resuming(last_try_at=T0),
    "resuming-capacity-wait-over": refused(spec(strategy=S.SAME_AZ_THEN_MOVE), for_=timedelta(days=1)),
    "succeeded-long-ago": ended(JobStatus.SUCCEEDED, at=T0),
}


@pytest.mark.parametrize("name", list(STATES))
@pytest.mark.parametrize("listed", [None, UP, TAKEN], ids=["not-listed", "up", "taken"])
def test_a_pass_that_could_not_look_changes_nothing(name: str, listed: Instance | None) -> None:
    """SkyPilot #10155: transient status errors caused needless recoveries. Whatever the pass half-saw, a pass
    that EC2 did not answer concludes nothing about the instance."""
    observation = seen(STATES[name], listed, looked=False, interruption=notice())
    assert decide(observation, THREE_AZS, NOW + timedelta(days=1)).act == Act.NOTHING


@pytest.mark.parametrize("record", [running(), interrupted(), refused(for_=AFTER), ended(JobStatus.SUCCEEDED)])
def test_a_record_without_a_spec_is_left_alone(record: JobRecord) -> None:
    foreign = record.model_copy(update={"spec": None})
    observation = seen(foreign, TAKEN, agent=agent("succeeded", attempt=foreign.attempt, exit_code=0))
    assert decide(observation, THREE_AZS, NOW + timedelta(days=1)).act == Act.NOTHING


_any_instance = st.sampled_from([None, UP, MARKED, TAKEN, SHUTTING, BY_USER, instance("pending")])
_any_agent = st.one_of(
    st.none(), st.builds(agent, st.sampled_from(["running", "succeeded", "failed", "stopped", "interrupted"]))
)


def _observations(records: st.SearchStrategy[JobRecord], looked: st.SearchStrategy[bool]) -> Any:
    """Whatever a pass may see of one of `records`: any instance, any word of the agent, a notice or none, any
    latest checkpoint."""
    return st.builds(
        Observation,
        record=records,
        looked=looked,
        instance=_any_instance,
        agent=_any_agent,
        interruption=st.one_of(st.none(), st.just(notice())),
        latest_checkpoint=st.one_of(st.none(), st.integers(0, 10**6)),
    )


_later = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=30))


@given(
    observation=_observations(
        st.sampled_from([pending(), running(), running(spec(strategy=S.SAME_AZ_THEN_ON_DEMAND))]), st.just(False)
    ),
    later=_later,
)
def test_a_live_job_is_never_resumed_or_interrupted_unseen(observation: Observation, later: timedelta) -> None:
    decision = decide(observation, THREE_AZS, T0 + later)
    # Only the agent's own final word (read from S3, not EC2) may move the record.
    agent_status = observation.agent
    allowed = {Act.NOTHING, Act.RECORD_END} if agent_status and agent_status.status != "interrupted" else {Act.NOTHING}
    assert decision.act in allowed


def _stopped_by_cost_watch(reason: StopReason) -> JobRecord:
    record = running(spec(strategy=S.SAME_AZ_THEN_ON_DEMAND, from_scratch=True)).with_status(
        JobStatus.STOPPED, stop_reason=reason, finished_at=NOTICE, message=f"stopped by cost-watch ({reason.value})"
    )
    assert record.current.stop_reason == reason
    return record


@given(
    observation=_observations(st.sampled_from(list(StopReason)).map(_stopped_by_cost_watch), st.booleans()),
    later=_later,
)
def test_a_job_cost_watch_stopped_is_never_resumed(observation: Observation, later: timedelta) -> None:
    """Stopped for its budget or an idle GPU (tasks/jobs.py checkpoint_then_stop): whatever spot-watch sees next —
    the instance taken by spot, a notice, any word of the agent, a checkpoint to resume from —, at most the
    stopped job's instance is ended; no attempt is claimed."""
    assert decide(observation, THREE_AZS, NOTICE + later).act in {Act.NOTHING, Act.END_INSTANCE}


# -- the pure helpers -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("is_spot", "fallback", "spot_refused", "expected"),
    [
        (True, False, False, "spot"),
        (True, True, False, "spot"),
        (True, False, True, None),
        (True, True, True, "on-demand"),
        (False, False, False, "on-demand"),
        (False, False, True, "on-demand"),
    ],
)
def test_launch_capacity(is_spot: bool, fallback: bool, spot_refused: bool, expected: str | None) -> None:
    policy = ResumePolicy(on_demand_fallback=fallback)
    assert launch_capacity(is_spot, policy, spot_refused=spot_refused) == expected


@pytest.mark.parametrize(
    ("offered", "scores", "current", "expected"),
    [
        (["us-east-1a", "us-east-1b", "us-east-1c"], {"us-east-1b": 3, "us-east-1c": 9}, AZ, "us-east-1c"),
        (["us-east-1a", "us-east-1b", "us-east-1c"], {"us-east-1b": 9, "us-east-1c": 9}, AZ, "us-east-1b"),
        (["us-east-1c", "us-east-1b", "us-east-1a"], {"us-east-1b": 5, "us-east-1c": 5}, AZ, "us-east-1c"),
        (["us-east-1c", "us-east-1b", "us-east-1a"], None, AZ, "us-east-1c"),
        (["us-east-1a", "us-east-1b"], {"us-east-1a": 10, "us-east-1b": 1}, AZ, "us-east-1b"),
        (["us-east-1a"], {"us-east-1a": 10}, AZ, None),
        ([], None, AZ, None),
        (["us-east-1b", "us-east-1c"], {"us-east-1c": 2}, None, "us-east-1c"),
    ],
    ids=[
        "best",
        "equal-keep-order",
        "equal-keep-given-order",
        "no-scores",
        "never-the-current",
        "only-current",
        "none-offered",
        "no-current",
    ],
)
def test_best_other_zone(
    offered: list[str], scores: dict[str, int] | None, current: str | None, expected: str | None
) -> None:
    assert best_other_zone(CapacityView(offered=offered, scores=scores), current) == expected
