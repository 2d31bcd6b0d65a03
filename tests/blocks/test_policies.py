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


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_hourly_usd", 0),
        ("max_daily_usd", 1e9),
        ("max_accumulated_usd", 0),
        ("job_budget_usd", -10),
        ("job_budget_usd", 0),
        ("job_budget_usd", 5e6),
        ("max_hourly_cost", 0),
        ("max_hourly_cost", 50_000),
        ("idle_gpu_percent", 0),
        ("idle_gpu_percent", 101),
        ("idle_minutes", -1),
        ("idle_minutes", 60 * 24 * 30),
    ],
)
def test_cost_policy_refuses_zero_negative_or_absurd_values_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(ValidationError) as exc:
        CostPolicy(**{field: value})
    assert f"{field}: {value:g} is not valid" in str(exc.value)


def test_cost_policy_new_fields_and_thresholds() -> None:
    policy = CostPolicy(job_budget_usd=40, max_hourly_cost=2.5, idle_gpu_percent=10, idle_minutes=20)
    limits = policy.thresholds({"big": 300})
    assert (limits.hourly_usd, limits.daily_usd, limits.accumulated_usd) == (50, 100, 500)
    assert limits.budget_of("big") == 300 and limits.budget_of("other") == 40
    assert CostPolicy().job_budget_usd is None and CostPolicy().max_hourly_cost is None


def test_block_types_distinct_and_named() -> None:
    slugs = {cls.get_block_type_slug() for cls in (AwsAccount, SafetyPolicy, CostPolicy)}
    assert slugs == {"trainctl-aws-account", "trainctl-safety-policy", "trainctl-cost-policy"}
