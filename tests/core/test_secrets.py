"""Secrets by reference in the job spec, and the plain --env values that look like secrets."""

from __future__ import annotations

import json
from typing import Any

import pytest

from core.errors import InvalidInputError
from core.jobs import JobSpec, TemplateSpec
from core.launch import agent_spec
from core.secrets import NOT_SHOWN, ParsedRef, looks_secret, parse_secret_ref, secret_like

SECRET_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/db-AbCdEf"
PARAMETER_ARN = "arn:aws:ssm:us-west-2:123456789012:parameter/team/db/password"
VALID = {
    "ssm:/db/password": ParsedRef("ssm", "/db/password"),
    "ssm:db-password": ParsedRef("ssm", "db-password"),
    "ssm:/db/password:3": ParsedRef("ssm", "/db/password:3"),
    f"ssm:{PARAMETER_ARN}": ParsedRef("ssm", PARAMETER_ARN),
    "secretsmanager:prod/db": ParsedRef("secretsmanager", "prod/db"),
    "secretsmanager:prod/db#password": ParsedRef("secretsmanager", "prod/db", "password"),
    f"secretsmanager:{SECRET_ARN}#user name": ParsedRef("secretsmanager", SECRET_ARN, "user name"),
}
INVALID = ["ssm:", "ssm:a b", "ssm:/a//b", "secretsmanager:", "secretsmanager:a#", "secretsmanager:a b", "vault:x"]


@pytest.mark.parametrize(("ref", "parsed"), VALID.items())
def test_reference_forms(ref: str, parsed: ParsedRef) -> None:
    assert parse_secret_ref(ref) == parsed


@pytest.mark.parametrize("ref", INVALID)
def test_malformed_references_are_refused(ref: str) -> None:
    with pytest.raises(InvalidInputError, match="ssm:/path/to/param or secretsmanager:"):
        parse_secret_ref(ref)


def spec(**fields: Any) -> JobSpec:
    base: dict[str, Any] = {
        "name": "llm",
        "bucket": "ml-jobs",
        "template": TemplateSpec(instance_type="t3.micro"),
        "command": ["python", "t.py"],
    }
    return JobSpec(**{**base, **fields})


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"secret_env": {"DB_PASSWORD": "ssm:"}}, "secret_env.DB_PASSWORD"),
        ({"secret_env": {"DB_PASSWORD": 42}}, "secret_env.DB_PASSWORD"),
        ({"secret_env": {"BAD-NAME": "ssm:/x"}}, "secret_env"),
        ({"secret_env": {"TRAINCTL_JOB": "ssm:/x"}}, "secret_env"),
        ({"secret_env": {"DB": "ssm:/x"}, "env": {"DB": "plain"}}, "secret_env"),
    ],
)
def test_bad_secret_env_names_the_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInputError) as err:
        spec(**fields)
    assert err.value.field == field and str(err.value).startswith(f"{field}:")


def test_a_value_given_where_a_reference_belongs_is_not_repeated_in_the_error() -> None:
    with pytest.raises(InvalidInputError) as err:
        spec(secret_env={"DB_PASSWORD": "hunter2-correct-horse"})
    assert "hunter2" not in str(err.value) and NOT_SHOWN in str(err.value)
    with pytest.raises(InvalidInputError) as err:
        spec(secret_env={"DB_PASSWORD": "ssm:bad name"})
    assert "ssm:bad name" in str(err.value)  # meant as a reference: shown, so the typo can be found


def test_references_travel_to_the_agent_as_references() -> None:
    refs = {"DB_PASSWORD": "ssm:/db/password", "API_TOKEN": "secretsmanager:prod/api#token"}
    s = spec(env={"EPOCHS": "3"}, secret_env=refs)
    doc = agent_spec(s, attempt=1, instance_id="i-0123456789abcdef0")
    assert doc["secret_env"] == refs and doc["env"] == {"EPOCHS": "3"}
    assert json.loads(json.dumps(doc))["secret_env"] == refs  # as agent-spec.json carries it
    assert JobSpec.model_validate_json(s.model_dump_json()) == s  # a Prefect parameter round trip


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DB_PASSWORD", "x"),
        ("wandb_api_key", "x"),
        ("HF_TOKEN", "x"),
        ("CLIENT_SECRET", "x"),
        ("CREDS", "AKIAIOSFODNN7EXAMPLE"),
        ("CREDS", "ASIAIOSFODNN7EXAMPLE"),
        ("X", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
        ("X", "sk-TVicdvrCKzW2AfrJyxbL6MMZIjUMms0SfUQo7moGytCTZABT"),
        ("X", "e971b87fefdbbdc41bda067de771385b"),
    ],
)
def test_secret_looking_variables(name: str, value: str) -> None:
    assert looks_secret(name, value)


@pytest.mark.parametrize(
    "value",
    [
        "3",
        "meta-llama/Llama-2-7b-hf",
        "runs/experiment-2024-01-01",
        "experiment_20240101_123456",
        "2024-01-01T00:00:00Z",
        "s3://bucket/data/train/",
        "/mnt/data/imagenet/train-shards-0001",
        "3f2504e0-4f89-11d3-9a0c-0305e82c3301",
        "us-east-1a,us-east-1b,us-east-1c",
    ],
)
def test_ordinary_values_are_not_taken_for_secrets(value: str) -> None:
    assert not looks_secret("MODEL", value)


def test_secret_like_names_only_the_variables() -> None:
    assert secret_like({"EPOCHS": "3", "DB_PASSWORD": "hunter2", "CREDS": "AKIAIOSFODNN7EXAMPLE"}) == [
        "DB_PASSWORD",
        "CREDS",
    ]
