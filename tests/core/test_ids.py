"""ID patterns: checked before any call, with an error naming the field and an example."""

from __future__ import annotations

import pytest

from core.errors import InvalidInputError
from core.ids import kind_of, validate_availability_zone, validate_id


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("i-0123456789abcdef0", "instance"),
        ("i-12345678", "instance"),
        ("vol-0123456789abcdef0", "volume"),
        ("snap-0123456789abcdef0", "snapshot"),
        ("ami-12c6146b", "image"),
        ("vol-", None),
        ("i-XYZ", None),
        ("vol-0123456789abcdef", None),
        ("", None),
    ],
)
def test_kind_of(value: str, kind: str | None) -> None:
    assert kind_of(value) == kind


@pytest.mark.parametrize("bad", ["vol-", "vol-12345", "i-0123456789abcdef0", "VOL-0123456789ABCDEF0"])
def test_validate_volume_rejects(bad: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        validate_id("volume", bad, field="--volume")
    assert "--volume" in str(info.value) and "vol-0123456789abcdef0" in str(info.value)
    assert info.value.exit_code == 2


def test_validate_accepts_and_strips() -> None:
    assert validate_id("instance", " i-0123456789abcdef0 ") == "i-0123456789abcdef0"
    assert validate_availability_zone("us-east-1a") == "us-east-1a"
    with pytest.raises(InvalidInputError):
        validate_availability_zone("us-east-1")
