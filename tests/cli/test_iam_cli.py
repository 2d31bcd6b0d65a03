"""`trainctl iam policy`: prints what core/iam.py builds; no AWS call, so no sandbox."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli.main import app
from core import iam

runner = CliRunner()


def test_json_is_the_policy_with_purposes_and_the_profile_recipe() -> None:
    result = runner.invoke(
        app,
        ["iam", "policy", "--for", "instance", "--bucket", "ml-jobs", "--secret", "ssm:/team/wandb", "--json"],
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    scope = iam.Scope.of(["ml-jobs"], secrets=["ssm:/team/wandb"])
    assert out["policy"] == iam.instance_policy(scope).document()
    assert set(out["purposes"]) == set(iam.instance_policy(scope).sids())
    assert out["role_name"] == out["instance_profile_name"] == "trainctl-instance"
    assert out["trust_policy"]["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}
    assert any("add-role-to-instance-profile" in c for c in out["commands"])


def test_text_comments_each_statement_then_prints_valid_json() -> None:
    result = runner.invoke(
        app, ["iam", "policy", "--for", "caller", "--bucket", "ml-jobs", "--data", "s3://datasets/x/"]
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    policy = iam.caller_policy(iam.Scope.of(["ml-jobs"], data=["s3://datasets/x/"]))
    for sid in policy.sids():
        assert any(line.startswith(f"#   {sid}: ") for line in lines), sid
    start = lines.index("{")
    end = lines.index("}", start)
    assert json.loads("\n".join(lines[start : end + 1])) == policy.document()
    assert "put-user-policy" in result.stdout and "trust-ec2.json" not in result.stdout


def test_instance_roles_get_their_profile_commands_in_text() -> None:
    result = runner.invoke(app, ["iam", "policy", "--for", "prewarm", "--data", "s3://datasets/imagenet/"])
    assert result.exit_code == 0, result.output
    assert "aws iam create-instance-profile --instance-profile-name trainctl-prewarm" in result.stdout
    assert '"Service": "ec2.amazonaws.com"' in result.stdout


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--for", "caller", "--bucket", "s3://ml-jobs/prefix"], "bucket"),
        (["--for", "caller"], "bucket"),
        (["--for", "prewarm"], "data"),
        (["--for", "instance", "--bucket", "ml-jobs", "--secret", "vault:x"], "secret"),
        (["--for", "caller", "--bucket", "ml-jobs", "--instance-role", "no spaces"], "instance_role"),
    ],
)
def test_bad_input_is_one_line_exit_2_naming_the_option(args: list[str], named: str) -> None:
    result = runner.invoke(app, ["iam", "policy", *args])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {named}: ") and result.stderr.count("\n") == 1
