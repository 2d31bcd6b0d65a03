"""The tag schema, legacy runctl keys included (DESIGN.md section 2)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core import tags as t


@pytest.mark.parametrize(
    ("tags", "managed"),
    [
        ({"trainctl:managed": "true"}, True),
        ({"trainctl:managed": "True"}, True),
        ({"CreatedBy": "runctl"}, True),
        ({"CreatedBy": "trainctl"}, True),
        ({"CreatedBy": "terraform"}, False),
        ({"trainctl:managed": "false"}, False),
        ({"Name": "trainctl-data"}, False),
        ({}, False),
    ],
)
def test_managed(tags: dict[str, str], managed: bool) -> None:
    assert t.is_managed(tags) is managed


@pytest.mark.parametrize("prefix", ["trainctl:", "runctl:"])
def test_protection_keys_of_both_prefixes(prefix: str) -> None:
    assert t.is_protected({f"{prefix}protected": "true"})
    assert t.is_protected({f"{prefix}important": "true"})
    assert t.is_persistent({f"{prefix}persistent": "true"})
    assert not t.is_protected({f"{prefix}protected": "false"})
    assert not t.is_persistent({f"{prefix}persistent": "no"})


def test_managed_tags_schema_wins_over_extra() -> None:
    tags = t.managed_tags(
        job="llm",
        role=t.Role.DATA,
        attempt=3,
        name="data-1",
        persistent=True,
        protected=True,
        extra={"trainctl:managed": "false", "team": "ml"},
    )
    assert tags == {
        "trainctl:managed": "true",
        "trainctl:job": "llm",
        "trainctl:role": "data",
        "trainctl:attempt": "3",
        "Name": "data-1",
        "trainctl:persistent": "true",
        "trainctl:protected": "true",
        "team": "ml",
    }
    assert t.tag_specifications("volume", tags)[0]["ResourceType"] == "volume"


def test_filter_sets_cover_both_markers() -> None:
    sets = t.managed_filter_sets()
    names = [f[0]["Name"] for f in sets]
    assert names == ["tag:trainctl:managed", "tag:CreatedBy"]
    assert "runctl" in sets[1][0]["Values"]


@given(st.dictionaries(st.text(min_size=1, max_size=20), st.text(max_size=20), max_size=8))
def test_aws_round_trip(tags: dict[str, str]) -> None:
    assert t.from_aws(t.to_aws(tags)) == tags


def test_managed_means_exactly_what_the_server_side_filter_matches() -> None:
    from core import tags as tg

    assert tg.is_managed({"trainctl:managed": "true"})
    assert not tg.is_managed({"trainctl:managed": "yes"})  # the filter would never list it
    assert not tg.is_managed({"trainctl:managed": "false", "CreatedBy": "runctl"})  # explicit false wins
    assert tg.is_managed({"CreatedBy": "runctl"})
