"""The agent's spec (agent/spec.py): defaults, and every field it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import SpecError
from agent.layout import on_instance
from agent.spec import AgentSpec


def test_spec_validation() -> None:
    good = {"job": "j", "attempt": 1, "bucket": "b", "command": ["python3", "x.py"]}
    spec = AgentSpec.from_dict(good)
    assert spec.workdir == "/var/lib/trainctl/jobs/j/code"
    assert spec.checkpoint_dir == "/var/lib/trainctl/jobs/j/checkpoints"
    assert spec.checkpoint_uri == "s3://b/trainctl/jobs/j/checkpoints/"
    assert (spec.sync_interval_s, spec.imds_poll_s, spec.margin_s, spec.max_runtime_s) == (300, 2, 20, None)
    assert spec.heartbeat_s == 60 and spec.keep_instance is False
    assert AgentSpec.from_dict({**good, "keep_instance": True}).keep_instance is True
    assert AgentSpec.from_dict({**good, "secret_env": {"DB": "ssm:/db"}}).secret_env == {"DB": "ssm:/db"}
    for bad in (
        {**good, "command": "python3 x.py"},
        {**good, "command": []},
        {**good, "job": "Bad_Name"},
        {**good, "attempt": 0},
        {**good, "checkpoint_uri": "/local/path"},
        {**good, "imds_poll_s": -1},
        {**good, "heartbeat_s": 0},
        {**good, "surprise": 1},
        {**good, "secret_env": {"DB": "vault:db"}},
        {**good, "secret_env": {"1DB": "ssm:/db"}},
        {**good, "secret_env": ["ssm:/db"]},
        {**good, "keep_instance": "yes"},
        {k: v for k, v in good.items() if k != "bucket"},
    ):
        with pytest.raises(SpecError):
            AgentSpec.from_dict(bad)
    assert on_instance("/var/lib/x", "/tmp/root") == Path("/tmp/root/var/lib/x")
    assert on_instance("/tmp/root/var/lib/x", "/tmp/root") == Path("/tmp/root/var/lib/x")
    assert on_instance("/var/lib/x", "") == Path("/var/lib/x")
