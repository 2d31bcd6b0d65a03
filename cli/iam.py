"""`trainctl iam policy`: the least-privilege IAM policies trainctl needs (core/iam.py), printed, never applied.

    trainctl iam policy --for caller|instance|prewarm [--bucket B ...] [--data s3://B/P ...] [--write s3://B/P ...]
                        [--secret REF ...] [--instance-role R] [--prewarm-role R] [--json]

Text: each statement's purpose as a comment line, then the policy JSON, and for the instance roles the trust
policy and the aws-cli commands that make the role and its instance profile. --json: one document with all of it.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any

import typer

from cli.output import emit_json, state_of, stdout_console
from core.iam import (
    DEFAULT_INSTANCE_ROLE,
    DEFAULT_PREWARM_ROLE,
    EC2_TRUST_POLICY,
    Policy,
    Scope,
    profile_role,
    setup_commands,
)
from core.iam import policy_for as build_policy

app = typer.Typer(help="The IAM permissions trainctl needs (least privilege).", no_args_is_help=True)


class For(StrEnum):
    caller = "caller"
    instance = "instance"
    prewarm = "prewarm"


def policy_json(policy: Policy, scope: Scope) -> dict[str, Any]:
    """What --json prints: the policy, each statement's purpose, and for instance roles how to make the profile."""
    role_name = profile_role(policy.role, scope)
    out: dict[str, Any] = {
        "for": policy.role,
        "policy_name": policy.name,
        "policy": policy.document(),
        "purposes": {s.sid: s.purpose for s in policy.statements},
    }
    if role_name:
        out["role_name"] = role_name
        out["instance_profile_name"] = role_name
        out["trust_policy"] = EC2_TRUST_POLICY
        out["commands"] = setup_commands(policy, role_name)
    return out


def _render(policy: Policy, scope: Scope) -> None:
    console = stdout_console()
    say = console.print
    role_name = profile_role(policy.role, scope)
    who = {"caller": "the identity that runs trainctl", "instance": "training instances", "prewarm": "prewarm"}
    say(f"# {policy.name}: {who[policy.role]}. Statements:", highlight=False, markup=False)
    for statement in policy.statements:
        say(f"#   {statement.sid}: {statement.purpose}", highlight=False, markup=False)
    if policy.role == "instance" and not scope.secrets:
        say(
            "# No secrets: pass --secret ssm:/NAME or --secret secretsmanager:NAME for each secret a job's",
            markup=False,
        )
        say("# --secret-env reads, so the instance may read exactly those.", highlight=False, markup=False)
    say(json.dumps(policy.document(), indent=2), highlight=False, markup=False, soft_wrap=True)
    if role_name:
        say(f"\n# trust-ec2.json: lets EC2 hand the role {role_name} to the instances", highlight=False, markup=False)
        say(json.dumps(EC2_TRUST_POLICY, indent=2), highlight=False, markup=False, soft_wrap=True)
        say(f"\n# Save the policy above as {policy.name}.json, then:", highlight=False, markup=False)
        for line in setup_commands(policy, role_name):
            say(line, highlight=False, markup=False, soft_wrap=True)
    else:
        say(
            "\n# Attach it to the user or role that runs trainctl, e.g.: aws iam put-user-policy --user-name NAME "
            f"--policy-name {policy.name} --policy-document file://{policy.name}.json",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )


@app.command("policy")
def policy(
    ctx: typer.Context,
    role: Annotated[For, typer.Option("--for", help="Whose policy: caller, instance or prewarm.")],
    bucket: Annotated[
        list[str] | None, typer.Option("--bucket", help="A job bucket (its trainctl/ prefix); repeatable.")
    ] = None,
    data: Annotated[
        list[str] | None,
        typer.Option(
            "--data",
            help="An S3 prefix jobs read (datasets, prewarm source; instances get read-only on it); repeatable.",
        ),
    ] = None,
    write: Annotated[
        list[str] | None,
        typer.Option(
            "--write", help="An S3 prefix jobs write outside trainctl/ (e.g. a --checkpoint-uri); repeatable."
        ),
    ] = None,
    secret: Annotated[
        list[str] | None,
        typer.Option("--secret", help="A secret jobs read: ssm:/NAME or secretsmanager:NAME; repeatable."),
    ] = None,
    instance_role: Annotated[
        str, typer.Option("--instance-role", help="Role (and instance profile) of training instances.")
    ] = DEFAULT_INSTANCE_ROLE,
    prewarm_role: Annotated[
        str, typer.Option("--prewarm-role", help="Role (and instance profile) of prewarm instances.")
    ] = DEFAULT_PREWARM_ROLE,
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Print the IAM policy a role needs, scoped to trainctl's tags and the buckets' trainctl/ prefixes."""
    state_of(ctx, json_output=json_output)
    scope = Scope.of(
        bucket or [],
        data=data or [],
        writes=write or [],
        secrets=secret or [],
        instance_role=instance_role,
        prewarm_role=prewarm_role,
    )
    built = build_policy(role.value, scope)
    if json_output:
        emit_json(policy_json(built, scope))
        return
    _render(built, scope)
