"""The agent's copies equal trainctl's (the agent is shipped as files and cannot import core): the job layout
(agent/layout.py, core/jobs.py) and the secret reference grammar (agent/spec.py, core/secrets.py)."""

from __future__ import annotations

import pytest

from agent import layout
from agent import spec as agent_spec
from agent.errors import SpecError
from core import jobs

NAMES = (
    "JOBS_ROOT",
    "INSTANCE_JOBS_DIR",
    "PID_FILE",
    "LOG_FILE",
    "PROGRESS_FILE",
    "EXIT_CODE_FILE",
    "AGENT_PID_FILE",
    "AGENT_LOG_FILE",
    "CODE_DIR",
    "CHECKPOINT_DIR",
    "MANIFEST_NAME",
    "LATEST_NAME",
)


@pytest.mark.parametrize("name", NAMES)
def test_constants_match(name: str) -> None:
    assert getattr(layout, name) == getattr(jobs, name)


def test_job_name_rule_matches() -> None:
    assert layout.JOB_NAME.pattern == jobs.JOB_NAME.pattern
    for name in ("a", "train-1", "x" * 63, "", "-a", "A", "a_b", "x" * 64, "a/b"):
        assert bool(layout.JOB_NAME.match(name)) == bool(jobs.JOB_NAME.match(name)), name


@pytest.mark.parametrize(
    ("bucket", "job", "attempt", "instance"), [("bkt", "demo", 1, "i-0abc"), ("my.bucket", "j-2", 12, "i-1")]
)
def test_keys_match(bucket: str, job: str, attempt: int, instance: str) -> None:
    assert layout.log_uri(bucket, job, attempt) == jobs.log_uri(bucket, job, attempt)
    assert layout.status_uri(bucket, job, attempt) == jobs.status_uri(bucket, job, attempt)
    assert layout.interruption_uri(bucket, job, instance) == jobs.interruption_uri(bucket, job, instance)
    assert layout.default_checkpoint_uri(bucket, job) == jobs.default_checkpoint_uri(bucket, job)
    assert layout.instance_job_dir(job) == jobs.instance_job_dir(job)
    for seq in (1, 42, 999999):
        assert layout.checkpoint_folder(seq) == jobs.checkpoint_folder(seq)


@pytest.mark.parametrize(
    "ref",
    [
        "ssm:/db/password",
        "ssm:db:3",
        "ssm:arn:aws:ssm:us-west-2:123456789012:parameter/db/pw",
        "secretsmanager:prod/db#password",
        "secretsmanager:arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/db-AbCdEf#k",
        "secretsmanager:prod/db",
        "ssm:",
        "ssm:a b",
        "secretsmanager:a#",
        "vault:x",
        "no-scheme",
    ],
)
def test_secret_reference_grammar_matches(ref: str) -> None:
    from core.errors import InvalidInputError
    from core.secrets import parse_secret_ref

    try:
        parsed = parse_secret_ref(ref)
        ours: tuple[str, str, str | None] | None = (parsed.kind, parsed.id, parsed.json_key)
    except InvalidInputError:
        ours = None
    try:
        theirs: tuple[str, str, str | None] | None = agent_spec.parse_secret_ref(ref)
    except SpecError:
        theirs = None
    assert ours == theirs
    assert agent_spec.ENV_NAME.pattern == jobs._ENV_NAME.pattern
