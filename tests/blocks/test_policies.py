"""SafetyPolicy and CostPolicy: the documented defaults, validation, and load_or_default without a server."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from blocks import AwsAccount, CostPolicy, SafetyPolicy


def test_safety_defaults() -> None:
    policy = SafetyPolicy.load_or_default(None)
    assert policy.min_age_minutes == 5
    assert policy.checkpoint_recency_minutes == 60
    assert policy.ephemeral_volumes == "delete"
    assert policy.training_wait_timeout_minutes == 60


def test_cost_defaults() -> None:
    policy = CostPolicy.load_or_default()
    assert (policy.max_hourly_usd, policy.max_daily_usd, policy.max_accumulated_usd) == (50, 100, 500)
    assert not policy.stop_idle_instances and not policy.checkpoint_and_stop_over_budget


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_age_minutes": -1},
        {"checkpoint_recency_minutes": -5},
        {"ephemeral_volumes": "shred"},
        {"training_wait_timeout_minutes": 0},
    ],
)
def test_safety_rejects(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        SafetyPolicy(**kwargs)


@pytest.mark.parametrize(
    "kwargs", [{"max_hourly_usd": -1}, {"max_daily_usd": -0.5}, {"max_accumulated_usd": -3}, {"max_hourly_usd": 200}]
)
def test_cost_rejects(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        CostPolicy(**kwargs)


def test_block_types_distinct_and_named() -> None:
    slugs = {cls.get_block_type_slug() for cls in (AwsAccount, SafetyPolicy, CostPolicy)}
    assert slugs == {"trainctl-aws-account", "trainctl-safety-policy", "trainctl-cost-policy"}
