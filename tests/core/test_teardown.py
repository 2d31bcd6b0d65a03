"""The teardown planner, rule by rule (each test reads like one of the seeds' edge cases), then properties that
must hold for any inventory hypothesis can make up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import tags as t
from core.jobs import CheckpointSet, JobStorage, TrainingState
from core.models import Instance, Inventory, Snapshot, StoredObject, Volume, VolumeAttachment
from core.teardown import (
    STEPS,
    Action,
    BucketLeftovers,
    OpKind,
    PendingUpload,
    Plan,
    Scope,
    Step,
    TeardownPolicy,
    plan_markdown,
    plan_teardown,
)

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
OLD = timedelta(hours=3)
ALL = Scope(all_managed=True)
REGION = "us-east-1"


def _hex(n: int) -> str:
    return f"{n:017x}"


def instance(
    n: int, *, age: timedelta = OLD, job: str | None = "j1", role: str = "train", state: str = "running", **tags: str
) -> Instance:
    base = {t.MANAGED: "true", t.ROLE: role, **({t.JOB: job} if job else {}), **tags}
    return Instance(
        id=f"i-{_hex(n)}",
        tags=base,
        created_at=NOW - age,
        state=state,
        availability_zone="us-east-1a",
        instance_type="m5.large",
    )


def volume(
    n: int,
    *,
    age: timedelta = OLD,
    on: Instance | None = None,
    persistent: bool = False,
    protected: bool = False,
    managed: bool = True,
    job: str | None = "j1",
    snapshots: list[str] | None = None,
) -> Volume:
    tags: dict[str, str] = {t.MANAGED: "true" if managed else "false"}
    if job:
        tags[t.JOB] = job
    if persistent:
        tags[t.PERSISTENT] = "true"
    if protected:
        tags[t.PROTECTED] = "true"
    return Volume(
        id=f"vol-{_hex(n)}",
        tags=tags,
        created_at=NOW - age,
        state="in-use" if on else "available",
        availability_zone="us-east-1a",
        size_gib=100,
        volume_type="gp3",
        attachments=[VolumeAttachment(instance_id=on.id, device=f"/dev/sd{'fghij'[n % 5]}", state="attached")]
        if on
        else [],
        snapshot_ids=snapshots or [],
    )


def snapshot(n: int, vol: Volume, *, age: timedelta = OLD, protected: bool = False) -> Snapshot:
    tags = {t.MANAGED: "true", **({t.PROTECTED: "true"} if protected else {})}
    return Snapshot(
        id=f"snap-{_hex(n)}", tags=tags, created_at=NOW - age, state="completed", volume_id=vol.id, size_gib=100
    )


def inv(instances: list[Instance] = [], volumes: list[Volume] = [], snapshots: list[Snapshot] = []) -> Inventory:  # noqa: B006
    return Inventory.assemble(region=REGION, taken_at=NOW, instances=instances, volumes=volumes, snapshots=snapshots)


def idle(*instances: Instance) -> dict[str, TrainingState]:
    return {i.id: TrainingState(instance_id=i.id, status="idle") for i in instances}


def running(i: Instance, job: str = "j1") -> dict[str, TrainingState]:
    return {i.id: TrainingState(instance_id=i.id, status="running", jobs=[job])}


def reasons(plan: Plan, rid: str) -> set[str]:
    entry = plan.entry(rid)
    assert entry is not None, rid
    return {r.reason for r in entry.reasons if r.blocking}


# -- rule by rule ---------------------------------------------------------------------------------------------


def test_persistent_volume_is_detached_and_kept_before_its_instance_is_terminated() -> None:
    i = instance(1)
    data = volume(1, on=i, persistent=True)
    scratch = volume(2, on=i)
    plan = plan_teardown(inv([i], [data, scratch]), scope=ALL, now=NOW, training=idle(i))
    assert plan.entry(i.id).action is Action.TERMINATE  # type: ignore[union-attr]
    assert plan.entry(data.id).action is Action.DETACH_AND_KEEP  # type: ignore[union-attr]
    assert plan.entry(scratch.id).action is Action.DELETE  # type: ignore[union-attr]
    ids = [o.id for o in plan.operations]
    assert ids.index(f"detach:{data.id}") < ids.index(f"terminate:{i.id}") < ids.index(f"delete-volume:{scratch.id}")
    assert f"detach:{data.id}" in plan.operation(f"terminate:{i.id}").depends_on  # type: ignore[union-attr]
    assert plan.operation(f"delete-volume:{scratch.id}").depends_on == [f"wait-terminated:{i.id}"]  # type: ignore[union-attr]


def test_ephemeral_volumes_are_kept_detached_when_the_policy_says_keep() -> None:
    i = instance(1)
    scratch = volume(2, on=i)
    plan = plan_teardown(
        inv([i], [scratch]), scope=ALL, now=NOW, training=idle(i), policy=TeardownPolicy(ephemeral_volumes="keep")
    )
    assert plan.entry(scratch.id).action is Action.DETACH_AND_KEEP  # type: ignore[union-attr]


def test_running_training_blocks_termination_and_force_does_not_lift_it() -> None:
    i = instance(1)
    data = volume(1, on=i, persistent=True)
    for force in (False, True):
        plan = plan_teardown(inv([i], [data]), scope=ALL, now=NOW, training=running(i), force=force)
        assert plan.entry(i.id).action is Action.KEEP  # type: ignore[union-attr]
        assert "training running" in reasons(plan, i.id)
        assert plan.entry(data.id).action is Action.KEEP  # type: ignore[union-attr]
        assert {"attached", "persistent"} <= reasons(plan, data.id)
        assert plan.operations == []


def test_unknown_training_state_counts_as_possibly_running() -> None:
    i = instance(1)
    plan = plan_teardown(inv([i]), scope=ALL, now=NOW, training={})
    assert reasons(plan, i.id) == {"training state unknown"}


def test_force_training_stops_the_job_and_flushes_before_terminating() -> None:
    i = instance(1)
    plan = plan_teardown(inv([i]), scope=ALL, now=NOW, training=running(i), force_training=True)
    ids = [o.id for o in plan.operations]
    assert ids[:4] == [f"stop-job:{i.id}", f"flush:{i.id}", f"terminate:{i.id}", f"wait-terminated:{i.id}"]
    assert plan.entry("job:j1").action is Action.STOP  # type: ignore[union-attr]


def test_wait_for_training_waits_then_terminates() -> None:
    i = instance(1)
    plan = plan_teardown(inv([i]), scope=ALL, now=NOW, training=running(i), wait_for_training=True)
    assert plan.operation(f"terminate:{i.id}").depends_on == [f"wait-training:{i.id}"]  # type: ignore[union-attr]


def test_young_resources_need_force() -> None:
    young = volume(1, age=timedelta(minutes=1))
    plan = plan_teardown(inv([], [young]), scope=ALL, now=NOW)
    assert reasons(plan, young.id) == {"younger than the minimum age"}
    forced = plan_teardown(inv([], [young]), scope=ALL, now=NOW, force=True)
    assert forced.entry(young.id).action is Action.DELETE  # type: ignore[union-attr]


def test_protected_and_persistent_volumes_survive_even_force() -> None:
    vols = [volume(1, protected=True), volume(2, persistent=True)]
    plan = plan_teardown(inv([], vols), scope=ALL, now=NOW, force=True)
    assert reasons(plan, vols[0].id) == {"protected"}
    assert reasons(plan, vols[1].id) == {"persistent"}
    assert plan.operations == []


def test_attached_volume_of_a_kept_instance_is_never_deleted() -> None:
    i = instance(1, protected="true")
    scratch = volume(2, on=i)
    plan = plan_teardown(inv([i], [scratch]), scope=Scope(ids=[scratch.id]), now=NOW, force=True)
    assert reasons(plan, scratch.id) == {"attached"}


def test_volume_with_snapshots_lists_them_and_they_remain() -> None:
    v = volume(1)
    s = snapshot(1, v)
    plan = plan_teardown(inv([], [v], [s]), scope=ALL, now=NOW)
    entry = plan.entry(v.id)
    assert entry is not None and entry.action is Action.DELETE
    assert any(r.reason == "has snapshots" and s.id in r.detail and not r.blocking for r in entry.reasons)
    assert plan.entry(s.id).action is Action.KEEP  # type: ignore[union-attr]


def test_named_ids_that_are_missing_unmanaged_or_malformed_get_a_clear_keep() -> None:
    v = volume(1)
    decoy = volume(9, managed=False, job=None)
    ids = [v.id, decoy.id, "vol-0000000000000dead", "not-an-id"]
    plan = plan_teardown(inv([], [v]), scope=Scope(ids=ids), now=NOW, unmanaged={decoy.id: decoy}, force=True)
    assert plan.entry(v.id).action is Action.DELETE  # type: ignore[union-attr]
    assert reasons(plan, decoy.id) == {"not managed"}
    assert reasons(plan, "vol-0000000000000dead") == {"not found"}
    assert "another region" in plan.entry("vol-0000000000000dead").reasons[0].detail  # type: ignore[union-attr]
    assert reasons(plan, "not-an-id") == {"not found"}


def test_unmanaged_volume_on_a_managed_instance_is_protected_from_delete_on_termination() -> None:
    i = instance(1).model_copy(update={"volume_ids": ["vol-00000000000000bad"]})
    plan = plan_teardown(inv([i]), scope=ALL, now=NOW, training=idle(i))
    assert reasons(plan, "vol-00000000000000bad") == {"not managed"}
    term = plan.operation(f"terminate:{i.id}")
    assert term is not None and "keep-on-termination:vol-00000000000000bad" in term.depends_on


def _ckpt(seq: int, age: timedelta, *, complete: bool = True) -> CheckpointSet:
    prefix = f"trainctl/jobs/j1/checkpoints/ckpt-{seq:06d}/"
    objs = [StoredObject(key=prefix + "model.pt", size=1000, last_modified=NOW - age)]
    if complete:
        objs.append(StoredObject(key=prefix + "MANIFEST.json", size=10, last_modified=NOW - age))
    return CheckpointSet(bucket="b", prefix=prefix, seq=seq, objects=objs, complete=complete)


def storage(status: str, *ckpts: CheckpointSet, staging_age: timedelta = OLD) -> JobStorage:
    return JobStorage(
        job="j1",
        bucket="b",
        status=status,
        staging_prefix="trainctl/jobs/j1/staging/",
        staging=[
            StoredObject(key="trainctl/jobs/j1/staging/attempt-1/code.tar.gz", size=5, last_modified=NOW - staging_age)
        ],
        checkpoint_prefix="trainctl/jobs/j1/checkpoints/",
        checkpoints=list(ckpts),
    )


def test_checkpoints_recent_or_latest_complete_are_never_deleted() -> None:
    store = storage(
        "running",
        _ckpt(1, timedelta(hours=5)),
        _ckpt(2, timedelta(hours=4)),
        _ckpt(3, timedelta(minutes=10), complete=False),
    )
    plan = plan_teardown(inv(), scope=Scope(job="j1"), now=NOW, storage=[store], sweep=True)
    assert plan.entry(_ckpt(1, OLD).uri).action is Action.DELETE  # type: ignore[union-attr]
    assert reasons(plan, _ckpt(2, OLD).uri) == {"latest complete checkpoint"}
    assert reasons(plan, _ckpt(3, OLD).uri) == {"recent checkpoint"}
    assert reasons(plan, "s3://b/trainctl/jobs/j1/staging/") == {"job unfinished"}
    without_sweep = plan_teardown(inv(), scope=Scope(job="j1"), now=NOW, storage=[store])
    assert reasons(without_sweep, _ckpt(1, OLD).uri) == {"retained"}


def test_staging_of_a_finished_job_goes_last_after_its_instances() -> None:
    i = instance(1)
    plan = plan_teardown(inv([i]), scope=Scope(job="j1"), now=NOW, training=idle(i), storage=[storage("succeeded")])
    op = plan.operations[-1]
    assert op.kind is OpKind.DELETE_OBJECTS and op.depends_on == [f"wait-terminated:{i.id}"]
    assert op.object_keys == ["trainctl/jobs/j1/staging/attempt-1/code.tar.gz"]


def test_sweep_finds_old_prewarm_instances_orphan_volumes_and_snapshots_beyond_retention() -> None:
    prewarm_old = instance(1, role="prewarm", age=timedelta(hours=2), job=None)
    prewarm_new = instance(2, role="prewarm", age=timedelta(minutes=30), job=None)
    orphan = volume(1, age=timedelta(days=3))
    keep = volume(2, age=timedelta(days=3), persistent=True)
    snaps = [snapshot(n, keep, age=timedelta(days=n)) for n in range(1, 6)]
    protected_old = snapshot(6, keep, age=timedelta(days=9), protected=True)
    plan = plan_teardown(
        inv([prewarm_old, prewarm_new], [orphan, keep], [*snaps, protected_old]),
        scope=Scope(),
        now=NOW,
        training=idle(prewarm_old, prewarm_new),
        sweep=True,
    )
    deleted = {e.id for e in plan.entries if e.destroys}
    assert deleted == {prewarm_old.id, orphan.id, snaps[3].id, snaps[4].id}
    assert reasons(plan, protected_old.id) == {"protected"}
    assert plan.entry(orphan.id).monthly_usd == 8.0  # type: ignore[union-attr]  # 100 GiB gp3
    assert plan.monthly_savings > 8


def test_the_markdown_plan_nests_each_resource_under_its_owner_and_names_every_step_and_kept_reason() -> None:
    # A plan with operations in all eight steps and resources kept for several reasons.
    i = instance(1)
    data = volume(1, on=i, persistent=True)
    vols = [data, volume(2, protected=True), volume(3), volume(4, age=timedelta(minutes=1))]
    snaps = [snapshot(n, data, age=timedelta(days=n)) for n in range(1, 6)]
    store = storage("running", _ckpt(1, timedelta(hours=5)), _ckpt(2, timedelta(hours=4)))
    inventory = inv([i], vols, snaps)
    plan = plan_teardown(
        inventory, scope=ALL, now=NOW, training=running(i), force_training=True, storage=[store], sweep=True
    )
    assert {o.step for o in plan.operations} == set(STEPS)
    text = plan_markdown(plan, inventory)
    assert "```" not in text and "mermaid" not in text  # the open-source UI shows fenced mermaid as raw text
    lines = text.splitlines()

    def line_of(rid: str) -> str:
        return next(line for line in lines if f"`{rid}` (" in line)

    # instance → its volume → that volume's snapshots: each one list level deeper than its owner
    depth = {rid: len(line_of(rid)) - len(line_of(rid).lstrip()) for rid in [i.id, data.id, snaps[0].id]}
    assert depth == {i.id: 0, data.id: 2, snaps[0].id: 4}
    assert line_of(i.id).lstrip().startswith("- **terminate**")
    assert line_of(data.id).lstrip().startswith("- **detach-and-keep**")
    # every step numbered in order, each operation under its step with what it waits for
    titles = [line for line in lines if line[:1].isdigit()]
    assert titles == [f"{n + 1}. **{step.value}**" for n, step in enumerate(STEPS)]
    for op in plan.operations:
        after = f" — after {', '.join(f'`{d}`' for d in op.depends_on)}" if op.depends_on else ""
        assert f"    - {op.kind.value} `{op.target}`{after}" in lines, op.id
    kept = {e.id: next(r.reason for r in e.reasons if r.blocking) for e in plan.entries if e.action is Action.KEEP}
    assert set(kept.values()) == {
        "protected",
        "younger than the minimum age",
        "retained",
        "latest complete checkpoint",
        "job unfinished",
    }
    for rid, why in kept.items():
        assert line_of(rid).lstrip().startswith(f"- **keep** `{rid}`") and why in line_of(rid), rid
    assert f"saves about ${plan.monthly_savings:.2f}/month" in text


# -- the sweep's orphan rules ---------------------------------------------------------------------------------
# Each rule: the orphan is found with its reason; the same resource younger than the rule's age is kept as too
# young (and taken with force); protected (and, for volumes, persistent) ones are kept whatever the flags.

YOUNG = timedelta(minutes=8)  # older than min_age (5 min), younger than every orphan rule (15 min and more)
BEAT_OLD = NOW - timedelta(minutes=40)
BEAT_NEW = NOW - timedelta(seconds=30)


def record(status: str = "running", attempt: int = 1, on: Instance | None = None, **beats: datetime) -> JobStorage:
    return JobStorage(
        job="j1",
        bucket="b",
        status=status,
        attempt=attempt,
        instance_id=on.id if on else None,
        heartbeats={int(k.removeprefix("a")): v for k, v in beats.items()},
    )


def attempt(n: int, k: int = 1, *, protected: bool = False, **kw: Any) -> Instance:
    tags: dict[str, Any] = {t.ATTEMPT: str(k), **({t.PROTECTED: "true"} if protected else {})}
    return instance(n, **tags, **kw)


def tagged(v: Volume, **tags: str) -> Volume:
    return v.model_copy(update={"tags": {**v.tags, **tags}})


def _unrecorded(age: timedelta, **kw: Any) -> tuple[Inventory, list[JobStorage], str]:
    i = attempt(1, 2, age=age, **kw)  # attempt 2 launched; the record still says attempt 2 without an instance
    return inv([i]), [record("pending", 2)], i.id


def _old_attempt(age: timedelta, **kw: Any) -> tuple[Inventory, list[JobStorage], str]:
    old, current = attempt(1, 1, age=age, **kw), attempt(2, 2)
    return inv([old, current]), [record("running", 2, current, a2=BEAT_NEW)], old.id


def _never_started(age: timedelta, **kw: Any) -> tuple[Inventory, list[JobStorage], str]:
    i = attempt(1, age=age, **kw)
    return inv([i]), [record("pending", 1, i)], i.id


def _silent(age: timedelta, **kw: Any) -> tuple[Inventory, list[JobStorage], str]:
    i = attempt(1, age=age, **kw)
    return inv([i]), [record("running", 1, i, a1=BEAT_OLD)], i.id


def _stopped_of_ended(age: timedelta, **kw: Any) -> tuple[Inventory, list[JobStorage], str]:
    i = attempt(1, age=age, state="stopped", **kw)
    return inv([i]), [record("succeeded", 1, i, a1=BEAT_OLD)], i.id


def _prewarm_left(age: timedelta, **kw: Any) -> tuple[Inventory, list[JobStorage], str]:
    i = attempt(1, role="prewarm", job=None, age=age, **kw)
    return inv([i]), [], i.id


def _prewarm_volume(age: timedelta, **kw: Any) -> tuple[Inventory, list[JobStorage], str]:
    v = tagged(volume(1, age=age, job=None, **kw), **{t.PREWARM: t.PREWARM_PENDING, t.ROLE: "data"})
    return inv([], [v]), [], v.id


def _root_volume(age: timedelta, **kw: Any) -> tuple[Inventory, list[JobStorage], str]:
    v = tagged(volume(1, age=age, **kw), **{t.ROLE: "train"})
    return inv([], [v]), [], v.id


def _unattached(age: timedelta, **kw: Any) -> tuple[Inventory, list[JobStorage], str]:
    v = volume(1, age=age, **kw)
    return inv([], [v]), [], v.id


RULES = {
    "attempt not in the job record": (_unrecorded, YOUNG),
    "attempt not in the job record ": (_old_attempt, YOUNG),  # an older attempt, the record moved on
    "agent never started": (_never_started, YOUNG),
    "agent heartbeat stopped": (_silent, YOUNG),
    "job ended": (_stopped_of_ended, timedelta(minutes=2)),  # its rule is the minimum age
    "prewarm instance left running": (_prewarm_left, timedelta(minutes=30)),
    "left by an unfinished prewarm": (_prewarm_volume, timedelta(minutes=30)),
    "root volume of a gone instance": (_root_volume, YOUNG),
    "unattached volume": (_unattached, timedelta(hours=20)),
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_each_orphan_rule_finds_its_orphan_keeps_it_while_young_and_force_lifts_only_youth(rule: str) -> None:
    build, young_age = RULES[rule]
    reason = rule.strip()
    inventory, stores, rid = build(timedelta(days=3))
    idle_all = idle(*inventory.instances)
    plan = plan_teardown(inventory, scope=Scope(), now=NOW, training=idle_all, storage=stores, sweep=True)
    entry = plan.entry(rid)
    assert entry is not None and entry.destroys and entry.sweep, entry
    assert reason in {r.reason for r in entry.reasons}

    inventory, stores, rid = build(young_age)
    plan = plan_teardown(inventory, scope=Scope(), now=NOW, training=idle_all, storage=stores, sweep=True)
    assert reasons(plan, rid) == {"younger than the minimum age"}
    assert plan.entry(rid).action is Action.KEEP  # type: ignore[union-attr]
    forced = plan_teardown(inventory, scope=Scope(), now=NOW, training=idle_all, storage=stores, sweep=True, force=True)
    assert forced.entry(rid).destroys  # type: ignore[union-attr]

    inventory, stores, rid = build(timedelta(days=3), protected=True)
    plan = plan_teardown(inventory, scope=Scope(), now=NOW, training=idle_all, storage=stores, sweep=True, force=True)
    assert "protected" in reasons(plan, rid) and not plan.entry(rid).destroys  # type: ignore[union-attr]
    if rid.startswith("vol-"):
        inventory, stores, rid = build(timedelta(days=3), persistent=True)
        plan = plan_teardown(inventory, scope=Scope(), now=NOW, storage=stores, sweep=True, force=True)
        entry = plan.entry(rid)
        if rule == "left by an unfinished prewarm":  # reported, and kept: persistent data is never swept
            assert entry is not None and entry.action is Action.KEEP and reasons(plan, rid) == {"persistent"}
            assert "left by an unfinished prewarm" in {r.reason for r in entry.reasons}
        else:
            assert entry is None  # a persistent volume is no orphan


def test_training_instances_without_a_record_live_heartbeats_and_running_jobs_are_no_orphans() -> None:
    no_record = attempt(1)  # the sweep's bucket holds no record of its job (another bucket?): never guessed
    beating = attempt(2, job="j2")
    busy = attempt(3, job="j3")
    stores = [
        JobStorage(job="j2", bucket="b", status="running", attempt=1, instance_id=beating.id, heartbeats={1: BEAT_NEW}),
        JobStorage(job="j3", bucket="b", status="running", attempt=1, instance_id=busy.id, heartbeats={1: BEAT_OLD}),
    ]
    plan = plan_teardown(
        inv([no_record, beating, busy]),
        scope=Scope(),
        now=NOW,
        training=running(busy, "j3"),
        storage=stores,
        sweep=True,
    )
    assert plan.entry(no_record.id) is None and plan.entry(beating.id) is None
    assert reasons(plan, busy.id) == {"training running"}  # silent agent, live trainer: force does not lift it
    forced = plan_teardown(
        inv([busy]), scope=Scope(), now=NOW, training=running(busy, "j3"), storage=stores, sweep=True, force=True
    )
    assert reasons(forced, busy.id) == {"training running"}


def test_a_killed_launch_goes_whole_after_its_instance_and_a_prewarm_volume_is_detached_and_kept() -> None:
    launched = attempt(1, 1)  # killed after RunInstances, with a persistent data volume attached
    data = volume(1, on=launched, persistent=True)
    prewarm = instance(2, role="prewarm", job=None)
    filling = tagged(volume(2, on=prewarm, persistent=True, job=None), **{t.PREWARM: t.PREWARM_PENDING})
    store = record("pending", 1).model_copy(
        update={
            "staging_prefix": "trainctl/jobs/j1/staging/",
            "staging": [
                StoredObject(key="trainctl/jobs/j1/staging/attempt-1/code.tar.gz", size=9, last_modified=NOW - OLD)
            ],
        }
    )
    plan = plan_teardown(
        inv([launched, prewarm], [data, filling]),
        scope=Scope(),
        now=NOW,
        training=idle(launched, prewarm),
        storage=[store],
        sweep=True,
    )
    assert {e.id for e in plan.entries if e.destroys} == {launched.id, prewarm.id, "s3://b/trainctl/jobs/j1/staging/"}
    assert plan.entry(data.id).action is Action.DETACH_AND_KEEP  # type: ignore[union-attr]
    kept = plan.entry(filling.id)
    assert kept is not None and kept.action is Action.DETACH_AND_KEEP
    assert "left by an unfinished prewarm" in {r.reason for r in kept.reasons}
    staging = plan.operation("delete-objects:s3://b/trainctl/jobs/j1/staging/")
    assert staging is not None and staging.depends_on == [f"wait-terminated:{launched.id}"]
    assert "staging no instance uses" in {r.reason for r in plan.entry(staging.target).reasons}  # type: ignore[union-attr]


def test_staging_of_a_job_whose_instance_runs_stays_and_fresh_abandoned_staging_is_too_young() -> None:
    live = attempt(1)
    beat = {1: BEAT_NEW}
    objs = [StoredObject(key="trainctl/jobs/j1/staging/attempt-1/code.tar.gz", size=9, last_modified=NOW - YOUNG)]
    store = JobStorage(
        job="j1",
        bucket="b",
        status="running",
        attempt=1,
        instance_id=live.id,
        heartbeats=beat,
        staging_prefix="trainctl/jobs/j1/staging/",
        staging=objs,
    )
    uri = "s3://b/trainctl/jobs/j1/staging/"
    plan = plan_teardown(inv([live]), scope=Scope(), now=NOW, storage=[store], sweep=True)
    assert reasons(plan, uri) == {"job unfinished"}
    gone = plan_teardown(inv(), scope=Scope(), now=NOW, storage=[store], sweep=True)
    assert reasons(gone, uri) == {"younger than the minimum age"}  # the rule waits 15 min: a launch in progress
    assert plan_teardown(inv(), scope=Scope(), now=NOW, storage=[store], sweep=True, force=True).entry(uri).destroys  # type: ignore[union-attr]


def test_old_transfer_staging_and_unfinished_uploads_go_young_ones_stay_unless_forced() -> None:
    def obj(key: str, age: timedelta) -> StoredObject:
        return StoredObject(key=key, size=100, last_modified=NOW - age)

    left = BucketLeftovers(
        bucket="b",
        staging=[
            obj("trainctl/staging/transfer-old/a.bin", timedelta(days=2)),
            obj("trainctl/staging/transfer-old/b.bin", timedelta(days=3)),
            obj("trainctl/staging/transfer-new/a.bin", timedelta(hours=2)),
        ],
        uploads=[
            PendingUpload(
                bucket="b",
                key="trainctl/jobs/j1/staging/attempt-1/code.tar.gz",
                upload_id="U1",
                initiated=NOW - timedelta(days=2),
            ),
            PendingUpload(
                bucket="b", key="trainctl/staging/transfer-new/big", upload_id="U2", initiated=NOW - timedelta(hours=1)
            ),
        ],
    )
    plan = plan_teardown(inv(), scope=Scope(), now=NOW, sweep=True, leftovers=[left])
    old_uri, new_uri = "s3://b/trainctl/staging/transfer-old/", "s3://b/trainctl/staging/transfer-new/"
    assert plan.entry(old_uri).destroys and reasons(plan, new_uri) == {"younger than the minimum age"}  # type: ignore[union-attr]
    assert plan.operation(f"delete-objects:{old_uri}").object_keys == [  # type: ignore[union-attr]
        "trainctl/staging/transfer-old/a.bin",
        "trainctl/staging/transfer-old/b.bin",
    ]
    u1, u2 = left.uploads
    abort = plan.operation(f"abort-upload:{u1.uri}")
    assert (
        abort is not None
        and abort.upload_id == "U1"
        and abort.object_keys == [u1.key]
        and abort.step is Step.DELETE_OBJECTS
    )
    assert "unfinished multipart upload" in {r.reason for r in plan.entry(u1.uri).reasons}  # type: ignore[union-attr]
    assert reasons(plan, u2.uri) == {"younger than the minimum age"}
    forced = plan_teardown(inv(), scope=Scope(), now=NOW, sweep=True, force=True, leftovers=[left])
    assert forced.entry(new_uri).destroys and forced.entry(u2.uri).destroys  # type: ignore[union-attr]
    assert plan_teardown(inv(), scope=ALL, now=NOW, leftovers=[left]).entries == []  # the sweep's only


# -- properties -----------------------------------------------------------------------------------------------


@st.composite
def inventories(draw: st.DrawFn) -> tuple[Inventory, dict[str, TrainingState], list[JobStorage]]:
    ages = st.sampled_from([timedelta(seconds=30), timedelta(minutes=4), timedelta(hours=2), timedelta(days=3)])
    n_inst = draw(st.integers(0, 4))
    insts = [
        instance(
            n,
            age=draw(ages),
            role=draw(st.sampled_from(["train", "prewarm"])),
            state=draw(st.sampled_from(["running", "running", "stopped", "shutting-down"])),
            job=draw(st.sampled_from(["j1", "j2", None])),
            **({t.PROTECTED: "true"} if draw(st.booleans()) and draw(st.booleans()) else {}),
            **({t.ATTEMPT: str(draw(st.integers(1, 2)))} if draw(st.booleans()) else {}),
        )
        for n in range(1, n_inst + 1)
    ]
    vols = []
    for n in range(1, draw(st.integers(0, 7)) + 1):
        on = draw(st.sampled_from([None, *insts])) if insts else None
        vols.append(
            volume(
                n,
                age=draw(ages),
                on=on,
                persistent=draw(st.booleans()),
                protected=draw(st.booleans()) and draw(st.booleans()),
                managed=draw(st.integers(0, 5)) > 0,
                job=draw(st.sampled_from(["j1", "j2", None])),
            )
        )
        if draw(st.booleans()):  # a prewarm's (maybe unfinished) volume, or a root volume
            extra = draw(st.sampled_from([{t.PREWARM: t.PREWARM_PENDING}, {t.ROLE: "train"}, {t.ROLE: "prewarm"}]))
            vols[-1] = vols[-1].model_copy(update={"tags": {**vols[-1].tags, **extra}})
    snaps = [
        snapshot(n, draw(st.sampled_from(vols)), age=draw(ages), protected=draw(st.booleans()))
        for n in range(1, draw(st.integers(0, 5)) + 1)
        if vols
    ]
    training = {
        i.id: TrainingState(instance_id=i.id, status=draw(st.sampled_from(["running", "idle", "unknown"])))
        for i in insts
        if draw(st.booleans())
    }
    stores = [
        JobStorage(
            job=job,
            bucket="b",
            status=draw(st.sampled_from(["running", "succeeded", None])),
            attempt=draw(st.sampled_from([None, 1, 2])),
            instance_id=draw(st.sampled_from([None, *(i.id for i in insts)])),
            heartbeats={1: NOW - draw(ages)} if draw(st.booleans()) else {},
            checkpoints=[
                CheckpointSet(
                    bucket="b",
                    prefix=f"trainctl/jobs/{job}/checkpoints/ckpt-{seq:06d}/",
                    seq=seq,
                    complete=draw(st.booleans()),
                    objects=[
                        StoredObject(
                            key=f"trainctl/jobs/{job}/checkpoints/ckpt-{seq:06d}/f{k}",
                            size=1,
                            last_modified=NOW - draw(ages),
                        )
                        for k in range(draw(st.integers(1, 3)))
                    ],
                )
                for seq in range(1, draw(st.integers(0, 4)) + 1)
            ],
        )
        for job in ("j1", "j2")
    ]
    # Managed volumes must be in the inventory for ownership to mean anything: unmanaged ones are not listed
    # (the inventory filters them), but they can ride on managed instances (as block devices).
    listed = [v for v in vols if v.managed]
    unlisted = [v for v in vols if not v.managed]
    insts = [
        i.model_copy(update={"volume_ids": [v.id for v in unlisted if v.attached_instance_id == i.id]}) for i in insts
    ]
    return inv(insts, listed, snaps), training, stores


options = st.fixed_dictionaries(
    {
        "force": st.booleans(),
        "wait_for_training": st.booleans(),
        "force_training": st.booleans(),
        "sweep": st.booleans(),
        "scope": st.sampled_from([ALL, Scope(job="j1"), Scope(job="j2"), Scope()]),
    }
)


@settings(max_examples=300, deadline=None)
@given(inventories(), options)
def test_no_plan_destroys_what_must_survive(
    world: tuple[Inventory, dict[str, TrainingState], list[JobStorage]], opts: dict[str, object]
) -> None:
    inventory, training, stores = world
    policy = TeardownPolicy()
    plan = plan_teardown(inventory, now=NOW, training=training, storage=stores, policy=policy, **opts)  # type: ignore[arg-type]
    volumes = {v.id: v for v in inventory.volumes}
    terminated = {o.target for o in plan.operations if o.kind is OpKind.TERMINATE}
    for op in plan.operations:
        if op.kind is OpKind.DELETE_VOLUME:
            v = volumes[op.target]
            assert v.managed and not v.persistent and not v.protected
            # attached only to an instance this plan terminates, and deleted after it is gone
            assert v.attached_instance_id is None or v.attached_instance_id in terminated
            if v.attached_instance_id:
                assert op.depends_on == [f"wait-terminated:{v.attached_instance_id}"]
        if op.kind is OpKind.DELETE_SNAPSHOT:
            s = next(s for s in inventory.snapshots if s.id == op.target)
            assert s.managed and not s.protected
        if op.kind in {OpKind.TERMINATE, OpKind.DELETE_VOLUME, OpKind.DELETE_SNAPSHOT}:
            r = inventory.get(op.target)
            assert r is not None and r.managed
            if not opts["force"]:
                assert r.age(NOW) >= policy.min_age
        if op.kind is OpKind.TERMINATE:
            i = next(i for i in inventory.instances if i.id == op.target)
            assert not i.protected
            state = training.get(i.id)
            if i.state == "running" and (state is None or state.status != "idle"):
                # training running (or unknown) is lifted only by its own flags, never by force alone
                assert opts["force_training"] or opts["wait_for_training"]
                first = f"{'stop-job' if opts['force_training'] else 'wait-training'}:{i.id}"
                assert plan.operation(first) is not None
            # every volume attached to it: persistent ones are detached before the terminate
            for v in inventory.volumes_of(i.id):
                if v.persistent or v.protected:
                    assert f"detach:{v.id}" in op.depends_on
            for vid in i.volume_ids:
                if vid not in volumes:
                    assert f"keep-on-termination:{vid}" in op.depends_on
        if op.kind is OpKind.DELETE_OBJECTS:
            store = next(s for s in stores if s.job == op.job)
            for ckpt in store.checkpoints:
                if any(k.startswith(ckpt.prefix) for k in op.object_keys):
                    assert ckpt.newest_age(NOW) >= policy.checkpoint_recency
                    assert ckpt.seq != store.latest_complete
    # steps in DESIGN.md order, dependencies point backwards
    order = [STEPS.index(o.step) for o in plan.operations]
    assert order == sorted(order)
    position = {o.id: n for n, o in enumerate(plan.operations)}
    assert all(position[dep] < position[op.id] for op in plan.operations for dep in op.depends_on)
    # every resource named in an operation has an entry saying why
    assert {o.target for o in plan.operations if o.kind is not OpKind.KEEP_ON_TERMINATION} <= {
        e.id for e in plan.entries
    }


@settings(max_examples=100, deadline=None)
@given(inventories(), options)
def test_plans_are_deterministic(
    world: tuple[Inventory, dict[str, TrainingState], list[JobStorage]], opts: dict[str, object]
) -> None:
    inventory, training, stores = world
    first = plan_teardown(inventory, now=NOW, training=training, storage=stores, **opts)  # type: ignore[arg-type]
    shuffled = Inventory(
        region=inventory.region,
        taken_at=inventory.taken_at,
        instances=list(reversed(inventory.instances)),
        volumes=list(reversed(inventory.volumes)),
        snapshots=list(reversed(inventory.snapshots)),
    )
    again = plan_teardown(
        shuffled,
        now=NOW,
        training=dict(reversed(training.items())),
        storage=list(reversed(stores)),
        **opts,  # type: ignore[arg-type]
    )
    assert first.model_dump() == again.model_dump()
    assert plan_markdown(first, inventory) == plan_markdown(again, shuffled)


def test_a_thousand_resources_are_all_planned() -> None:
    # How fast: bench/teardown_plan.py (speed is measured by benchmarks, not asserted in unit tests).
    insts = [instance(n) for n in range(1, 301)]
    vols = [volume(n, on=insts[n % 300], persistent=n % 2 == 0) for n in range(1, 601)]
    snaps = [snapshot(n, vols[n % 600]) for n in range(1, 101)]
    plan = plan_teardown(inv(insts, vols, snaps), scope=ALL, now=NOW, training=idle(*insts), sweep=True)
    # Every resource has its one entry, with what its kind and tags call for.
    expected = {
        **{i.id: Action.TERMINATE for i in insts},
        **{v.id: Action.DETACH_AND_KEEP if v.persistent else Action.DELETE for v in vols},
        **{s.id: Action.KEEP for s in snaps},  # backups: only named ones or those beyond retention go
    }
    assert len(plan.entries) == len(expected) == 1000
    assert {e.id: e.action for e in plan.entries} == expected
    # ... and each destroying or detaching entry its operations, in order.
    ops = {o.id: o for o in plan.operations}
    wanted = {f"{kind}:{i.id}" for i in insts for kind in ("terminate", "wait-terminated")}
    wanted |= {f"detach:{v.id}" if v.persistent else f"delete-volume:{v.id}" for v in vols}
    assert set(ops) == wanted
    for v in vols:
        if not v.persistent:
            assert ops[f"delete-volume:{v.id}"].depends_on == [f"wait-terminated:{v.attachments[0].instance_id}"]
