"""The agent's copy of the job layout equals core/jobs.py (the agent is shipped as files and cannot import core)."""

from __future__ import annotations

import pytest

from agent import trainctl_agent as agent
from core import jobs

NAMES = (
    "JOBS_ROOT",
    "INSTANCE_JOBS_DIR",
    "PID_FILE",
    "LOG_FILE",
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
    assert getattr(agent, name) == getattr(jobs, name)


def test_job_name_rule_matches() -> None:
    assert agent.JOB_NAME.pattern == jobs.JOB_NAME.pattern
    for name in ("a", "train-1", "x" * 63, "", "-a", "A", "a_b", "x" * 64, "a/b"):
        assert bool(agent.JOB_NAME.match(name)) == bool(jobs.JOB_NAME.match(name)), name


@pytest.mark.parametrize(
    ("bucket", "job", "attempt", "instance"), [("bkt", "demo", 1, "i-0abc"), ("my.bucket", "j-2", 12, "i-1")]
)
def test_keys_match(bucket: str, job: str, attempt: int, instance: str) -> None:
    assert agent.log_uri(bucket, job, attempt) == jobs.log_uri(bucket, job, attempt)
    assert agent.status_uri(bucket, job, attempt) == jobs.status_uri(bucket, job, attempt)
    assert agent.interruption_uri(bucket, job, instance) == jobs.interruption_uri(bucket, job, instance)
    assert agent.default_checkpoint_uri(bucket, job) == jobs.default_checkpoint_uri(bucket, job)
    assert agent.instance_job_dir(job) == jobs.instance_job_dir(job)
    for seq in (1, 42, 999999):
        assert agent.checkpoint_folder(seq) == jobs.checkpoint_folder(seq)


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
        theirs: tuple[str, str, str | None] | None = agent.parse_secret_ref(ref)
    except agent.SpecError:
        theirs = None
    assert ours == theirs
    assert agent.ENV_NAME.pattern == jobs._ENV_NAME.pattern


def test_agent_imports_only_the_standard_library() -> None:
    import ast
    import sys
    from pathlib import Path

    source = Path(agent.__file__).read_text()
    modules: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module.split(".")[0])
    assert modules <= set(sys.stdlib_module_names), modules - set(sys.stdlib_module_names)
