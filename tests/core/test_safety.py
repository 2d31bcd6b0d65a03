"""The safety rules read like the seeds' edge cases: each test is one rule."""

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core import tags as t
from core.errors import SafetyRefusalError
from core.models import Snapshot, Volume, VolumeAttachment
from core.safety import Reason, volume_delete_verdict

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
MIN_AGE = timedelta(minutes=5)


def volume(
    *, age: timedelta = timedelta(hours=2), attached: bool = False, tags: dict[str, str] | None = None
) -> Volume:
    return Volume(
        id="vol-0123456789abcdef0",
        tags={t.MANAGED: "true", **(tags or {})},
        created_at=NOW - age,
        state="in-use" if attached else "available",
        availability_zone="us-east-1a",
        size_gib=10,
        volume_type="gp3",
        attachments=[VolumeAttachment(instance_id="i-0123456789abcdef0", device="/dev/sdf", state="attached")]
        if attached
        else [],
    )


def snapshot(age: timedelta = timedelta(hours=1)) -> Snapshot:
    return Snapshot(
        id="snap-0123456789abcdef0",
        tags={t.MANAGED: "true"},
        created_at=NOW - age,
        state="completed",
        volume_id="vol-0123456789abcdef0",
    )


def reasons(v: Volume, **kwargs: object) -> set[Reason]:
    verdict = volume_delete_verdict(v, snapshots=[], now=NOW, min_age=MIN_AGE, **kwargs)  # type: ignore[arg-type]
    return {b.reason for b in verdict.blockers}


def test_an_old_ephemeral_managed_volume_may_be_deleted() -> None:
    assert reasons(volume()) == set()


def test_persistent_volume_needs_force() -> None:
    assert reasons(volume(tags={t.PERSISTENT: "true"})) == {Reason.PERSISTENT}
    assert reasons(volume(tags={t.PERSISTENT: "true"}), force=True) == set()


@pytest.mark.parametrize("key", ["trainctl:protected", "trainctl:important", "runctl:protected", "runctl:important"])
def test_protected_volume_needs_force_with_either_prefix(key: str) -> None:
    assert reasons(volume(tags={key: "true"})) == {Reason.PROTECTED}


def test_young_volume_needs_force() -> None:
    assert reasons(volume(age=timedelta(minutes=1))) == {Reason.TOO_YOUNG}
    assert reasons(volume(age=timedelta(minutes=1)), force=True) == set()


def test_attached_volume_is_never_deleted_even_with_force() -> None:
    verdict = volume_delete_verdict(volume(attached=True), snapshots=[], now=NOW, min_age=MIN_AGE, force=True)
    assert {b.reason for b in verdict.blockers} == {Reason.ATTACHED}
    with pytest.raises(SafetyRefusalError, match="detach"):
        verdict.raise_if_refused()


def test_unmanaged_volume_needs_adopt_not_force() -> None:
    unmanaged = volume().model_copy(update={"tags": {}})
    assert reasons(unmanaged, force=True) == {Reason.NOT_MANAGED}
    assert reasons(unmanaged, adopt=True) == set()


def test_snapshots_are_listed_and_deleted_only_when_asked() -> None:
    kept = volume_delete_verdict(volume(), snapshots=[snapshot()], now=NOW, min_age=MIN_AGE)
    assert kept.allowed and "will remain" in kept.notes[0] and kept.snapshots == ("snap-0123456789abcdef0",)
    young_snapshot = volume_delete_verdict(
        volume(), snapshots=[snapshot(timedelta(minutes=1))], now=NOW, min_age=MIN_AGE, delete_snapshots=True
    )
    assert {b.reason for b in young_snapshot.blockers} == {Reason.TOO_YOUNG}


def test_refusal_message_names_every_reason_and_the_override() -> None:
    verdict = volume_delete_verdict(
        volume(age=timedelta(minutes=1), tags={t.PERSISTENT: "true"}), snapshots=[], now=NOW, min_age=MIN_AGE
    )
    with pytest.raises(SafetyRefusalError) as err:
        verdict.raise_if_refused()
    assert "persistent" in str(err.value) and "old, younger than" in str(err.value) and "force" in str(err.value)


tag_values = st.sampled_from(["true", "True", "false", "", "yes"])


@given(
    persistent=tag_values,
    protected=tag_values,
    legacy=tag_values,
    age_s=st.integers(min_value=0, max_value=10_000),
    attached=st.booleans(),
    managed=st.booleans(),
)
def test_property_never_deletes_what_must_survive_without_force(
    persistent: str, protected: str, legacy: str, age_s: int, attached: bool, managed: bool
) -> None:
    v = volume(
        age=timedelta(seconds=age_s),
        attached=attached,
        tags={t.PERSISTENT: persistent, t.PROTECTED: protected, "runctl:important": legacy},
    )
    if not managed:
        v = v.model_copy(update={"tags": {k: val for k, val in v.tags.items() if k != t.MANAGED}})
    verdict = volume_delete_verdict(v, snapshots=[], now=NOW, min_age=MIN_AGE)
    if verdict.allowed:
        assert v.managed and not v.persistent and not v.protected and not v.attached
        assert v.age(NOW) >= MIN_AGE
