"""The generated IAM policies (core/iam.py): shape, scoping, and no drift from the AWS calls the tasks make."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core import iam
from core.errors import InvalidInputError

ROOT = Path(__file__).resolve().parents[2]
SCOPE = iam.Scope.of(["ml-jobs"], data=["s3://datasets/imagenet/"], secrets=["ssm:/team/wandb", "secretsmanager:hf"])
MUTATING_EC2 = {
    "ec2:RunInstances",
    "ec2:CreateVolume",
    "ec2:CreateSnapshot",
    "ec2:CreateTags",
    "ec2:TerminateInstances",
    "ec2:ModifyInstanceAttribute",
    "ec2:AttachVolume",
    "ec2:DetachVolume",
    "ec2:DeleteVolume",
    "ec2:DeleteSnapshot",
}
# Calls whose IAM action is not the service prefix + the call's name. S3 calls are named by their IAM action in
# the tasks (tasks/s3.py), so none is here: one named otherwise maps to "ec2:..." and is found ungranted.
IAM_ACTION_OF = {
    "GetParameter": "ssm:GetParameter",
    "DescribeInstanceInformation": "ssm:DescribeInstanceInformation",
    "GetCommandInvocation": "ssm:GetCommandInvocation",
    "wait instance_running": "ec2:DescribeInstances",
    "wait instance_terminated": "ec2:DescribeInstances",
    "wait volume_available": "ec2:DescribeVolumes",
    "wait snapshot_completed": "ec2:DescribeSnapshots",
}


def _operations_in_tasks() -> set[str]:
    """Every operation name the tasks translate errors for (each names the AWS call made inside)."""
    found: set[str] = set()
    for path in (ROOT / "tasks").glob("*.py"):
        found |= set(re.findall(r'translate\(\s*"([^"]+)"', path.read_text()))
    return found


def _iam_action(operation: str) -> str:
    if operation in IAM_ACTION_OF:
        return IAM_ACTION_OF[operation]
    return operation if ":" in operation else f"ec2:{operation}"


def test_every_call_the_tasks_make_is_granted_to_the_caller() -> None:
    policy = iam.caller_policy(SCOPE)
    operations = _operations_in_tasks()
    assert {"RunInstances", "ssm:SendCommand", "s3:AbortMultipartUpload", "s3:ListBucket"} <= operations
    missing = sorted(op for op in operations if not policy.granting(_iam_action(op)))
    assert missing == []
    # The SSM calls that go through the plain `call` helper are granted too.
    for action in ("ssm:GetCommandInvocation", "ssm:DescribeInstanceInformation", "ssm:ListCommands"):
        assert policy.granting(action)


@pytest.mark.parametrize("role", iam.ROLES)
def test_documents_are_valid_iam_shapes(role: iam.Role) -> None:
    policy = iam.policy_for(role, SCOPE)
    doc = policy.document()
    assert doc["Version"] == "2012-10-17"
    sids = [s["Sid"] for s in doc["Statement"]]
    assert len(sids) == len(set(sids)) and all(re.fullmatch(r"[A-Za-z0-9]+", sid) for sid in sids)
    for statement in doc["Statement"]:
        actions = statement["Action"]
        assert statement["Effect"] == "Allow" and actions
        assert all(re.fullmatch(r"[a-z0-9]+:[A-Za-z]+", a) for a in actions), actions  # no wildcards
    assert all(s.purpose for s in policy.statements)


def test_caller_mutates_only_what_carries_the_managed_tag() -> None:
    for statement in iam.caller_policy(SCOPE).statements:
        mutating = MUTATING_EC2 & set(statement.actions)
        if not mutating:
            continue
        condition = str(statement.condition)
        untagged = all(
            ":image/" in r
            or ":subnet/" in r
            or "security-group" in r
            or "network-interface" in r
            or "key-pair" in r
            or "spot-instances-request" in r
            or "::snapshot/" in r
            for r in statement.resources
        )
        # Either the managed tag (on the resource, or requested at creation), tags only at creation, or only the
        # resources a launch reads (AMI, subnet, ...) or makes without tags (ENI, spot request).
        assert (
            "trainctl:managed" in condition
            or "ec2:CreateAction" in condition
            or (mutating == {"ec2:RunInstances"} and untagged)
        ), statement.sid


def test_s3_is_scoped_to_trainctl_and_the_data_prefixes() -> None:
    caller = iam.caller_policy(SCOPE)
    objects = next(s for s in caller.statements if s.sid == "ReadWriteTrainctlObjects")
    # A prewarm puts its list of keys to copy in trainctl/staging beside its source (and removes it).
    assert set(objects.resources) == {
        "arn:aws:s3:::ml-jobs/trainctl/*",
        "arn:aws:s3:::datasets/imagenet/*",
        "arn:aws:s3:::datasets/trainctl/staging/*",
    }
    listings = [s for s in caller.statements if "s3:ListBucket" in s.actions]
    assert {s.resources for s in listings} == {("arn:aws:s3:::ml-jobs",), ("arn:aws:s3:::datasets",)}
    prefixes = {s.resources[0]: s.condition["StringLikeIfExists"]["s3:prefix"] for s in listings}
    assert prefixes["arn:aws:s3:::ml-jobs"] == ["trainctl", "trainctl/*"]
    assert prefixes["arn:aws:s3:::datasets"] == ["imagenet", "imagenet/*", "trainctl/staging", "trainctl/staging/*"]
    read_source = next(s for s in iam.prewarm_policy(SCOPE).statements if s.sid == "ReadSource")
    assert set(read_source.resources) == {
        "arn:aws:s3:::datasets/imagenet/*",
        "arn:aws:s3:::datasets/trainctl/staging/*",
    }

    instance = iam.instance_policy(SCOPE)
    objects = next(s for s in instance.statements if s.sid == "ReadWriteJobObjects")
    assert "s3:DeleteObject" not in objects.actions  # the instance never deletes
    assert set(objects.resources) == {"arn:aws:s3:::ml-jobs/trainctl/jobs/*", "arn:aws:s3:::ml-jobs/trainctl/staging/*"}
    prewarm = iam.prewarm_policy(SCOPE)
    s3_actions = {a for s in prewarm.statements for a in s.actions if a.startswith("s3:")}
    assert s3_actions == {"s3:ListBucket", "s3:GetObject"}
    assert {r for s in prewarm.statements for r in s.resources if r.startswith("arn:aws:s3")} == {
        "arn:aws:s3:::datasets",
        "arn:aws:s3:::datasets/imagenet/*",
        "arn:aws:s3:::datasets/trainctl/staging/*",  # the prewarm's list of keys to copy
    }


def test_the_instance_reads_the_datasets_and_writes_only_the_jobs_prefixes() -> None:
    instance = iam.instance_policy(
        iam.Scope.of(["ml-jobs"], data=["s3://datasets/imagenet/"], writes=["s3://ckpts/x/"])
    )
    on_data = [s for s in instance.statements if "arn:aws:s3:::datasets/imagenet/*" in s.resources]
    assert [(s.sid, s.actions) for s in on_data] == [("ReadDatasets", ("s3:GetObject",))]
    listings = {
        s.resources[0]: s.condition["StringLikeIfExists"]["s3:prefix"]
        for s in instance.statements
        if s.actions == ("s3:ListBucket",)
    }
    assert listings["arn:aws:s3:::datasets"] == ["imagenet", "imagenet/*"]
    # Writing: the job's own prefixes and the ones named with --write (a checkpoint_uri elsewhere), nothing else.
    writing = {r for s in instance.statements if "s3:PutObject" in s.actions for r in s.resources}
    assert writing == {
        "arn:aws:s3:::ml-jobs/trainctl/jobs/*",
        "arn:aws:s3:::ml-jobs/trainctl/staging/*",
        "arn:aws:s3:::ckpts/x/*",
    }
    mutating = {"s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"}
    assert not any(mutating & set(s.actions) for s in on_data)
    # No dataset, no dataset statement; the caller may still write a --write prefix (teardown of checkpoints).
    assert "ReadDatasets" not in iam.instance_policy(iam.Scope.of(["ml-jobs"])).sids()
    caller = iam.caller_policy(iam.Scope.of(["ml-jobs"], writes=["s3://ckpts/x/"]))
    assert (
        "arn:aws:s3:::ckpts/x/*" in next(s for s in caller.statements if s.sid == "ReadWriteTrainctlObjects").resources
    )


def test_secrets_and_roles_are_named_exactly() -> None:
    instance = iam.instance_policy(SCOPE)
    by_sid = {s.sid: s for s in instance.statements}
    assert by_sid["ReadJobParameters"].resources == ("arn:aws:ssm:*:*:parameter/team/wandb",)
    assert by_sid["ReadJobSecrets"].resources == ("arn:aws:secretsmanager:*:*:secret:hf-??????",)
    assert not iam.instance_policy(iam.Scope.of(["ml-jobs"])).granting("ssm:GetParameter")  # none unless named
    caller = iam.caller_policy(iam.Scope.of(["ml-jobs"], instance_role="ml-train"))
    pass_role = next(s for s in caller.statements if s.sid == "PassInstanceRoles")
    assert pass_role.resources == ("arn:aws:iam::*:role/ml-train", "arn:aws:iam::*:role/trainctl-prewarm")
    assert pass_role.condition == {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}


def test_without_removes_one_statement_and_refuses_unknown_sids() -> None:
    caller = iam.caller_policy(SCOPE)
    less = caller.without("DescribeEc2")
    assert "DescribeEc2" not in less.sids() and len(less.sids()) == len(caller.sids()) - 1
    with pytest.raises(KeyError):
        caller.without("NoSuchSid")


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: iam.Scope.of(["s3://ml-jobs/prefix"]), "bucket"),
        (lambda: iam.Scope.of(["ml-jobs/prefix"]), "bucket"),
        (lambda: iam.Scope.of(["ml-jobs"], data=["ml-jobs/x"]), "data"),
        (lambda: iam.Scope.of(["ml-jobs"], writes=["/ckpt"]), "write"),
        (lambda: iam.Scope.of(["ml-jobs"], secrets=["vault:x"]), "secret"),
        (lambda: iam.Scope.of(["ml-jobs"], secrets=["ssm:/team/*"]), "secret"),
        (lambda: iam.Scope.of(["ml-jobs"], instance_role="bad role"), "instance_role"),
        (lambda: iam.caller_policy(iam.Scope.of([])), "bucket"),
        (lambda: iam.prewarm_policy(iam.Scope.of(["ml-jobs"])), "data"),
    ],
)
def test_bad_input_names_the_field(call: object, field: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        call()  # type: ignore[operator]
    assert caught.value.field == field


def test_profile_setup_commands_name_the_role_and_policy_file() -> None:
    policy = iam.instance_policy(SCOPE)
    assert iam.profile_role("instance", SCOPE) == "trainctl-instance" and iam.profile_role("caller", SCOPE) is None
    commands = iam.setup_commands(policy, "trainctl-instance")
    assert "--policy-document file://trainctl-instance.json" in commands[1]
    assert commands[-1].endswith("--instance-profile-name trainctl-instance --role-name trainctl-instance")
    assert iam.EC2_TRUST_POLICY["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}


def test_a_bucket_given_as_s3_uri_is_that_bucket() -> None:
    """`--bucket s3://ml-jobs` means the bucket ml-jobs, as in train and teardown."""
    assert iam.caller_policy(iam.Scope.of(["s3://ml-jobs"])) == iam.caller_policy(iam.Scope.of(["ml-jobs"]))
