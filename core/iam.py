"""The least-privilege IAM policies trainctl needs, as data: one function per role, each statement with a Sid.

Three roles (README "IAM: least privilege"):

- caller: the identity that runs the CLI and the flows (EC2, SSM run-command, iam:PassRole, S3 on trainctl's
  prefixes of the job buckets);
- instance: the training instance's profile (the SSM agent's run-command actions, S3 read/write on the job's
  prefixes, read-only on the datasets, the secrets a job's --secret-env names);
- prewarm: the prewarm flow's temporary instance (the SSM agent, S3 read on the source prefixes).

Mutations of existing EC2 resources are scoped by `aws:ResourceTag/trainctl:managed`, creations by
`aws:RequestTag/trainctl:managed` (and tagging by `ec2:CreateAction`), S3 by the buckets' `trainctl/` prefixes
plus the data prefixes given. Describe* and the SSM command-status actions do not support resource-level
permissions on AWS, so they are `*`. What each flow calls is in tasks/*.py (each `translate("...")` names it)
and agent/ (the instance side: s3.py, secret_env.py).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from core import tags as t
from core.errors import InvalidInputError
from core.s3uri import S3Uri, parse_s3_uri, validate_bucket

Role = Literal["caller", "instance", "prewarm"]
ROLES: tuple[Role, ...] = ("caller", "instance", "prewarm")
VERSION = "2012-10-17"
TRAINCTL_PREFIX = "trainctl"
DEFAULT_INSTANCE_ROLE = "trainctl-instance"
DEFAULT_PREWARM_ROLE = "trainctl-prewarm"
# The names an EC2 ARN needs, any region and this account ('*' keeps the policy portable across regions).
EC2_ARN = "arn:aws:ec2:*:*:{}/*"
# Public AMI parameters (the AMI lookup's /aws/service/ami-amazon-linux-latest/...) are owned by AWS: no account.
PUBLIC_AMI_PARAMETERS = "arn:aws:ssm:*::parameter/aws/service/*"
_ROLE_NAME = re.compile(r"^[\w+=,.@-]{1,64}$")
_SECRET = re.compile(r"^(ssm|secretsmanager):(.+)$")

Condition = dict[str, dict[str, str | list[str]]]


@dataclass(frozen=True)
class Statement:
    """One Allow statement. `purpose` says why trainctl needs it (shown in the text output, not in the JSON)."""

    sid: str
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    purpose: str
    condition: Condition = field(default_factory=dict)

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "Sid": self.sid,
            "Effect": "Allow",
            "Action": list(self.actions),
            "Resource": self.resources[0] if len(self.resources) == 1 else list(self.resources),
        }
        if self.condition:
            doc["Condition"] = self.condition
        return doc


@dataclass(frozen=True)
class Policy:
    role: Role
    name: str  # the policy's name for put-role-policy / put-user-policy
    statements: tuple[Statement, ...]

    def document(self) -> dict[str, Any]:
        return {"Version": VERSION, "Statement": [s.document() for s in self.statements]}

    def sids(self) -> list[str]:
        return [s.sid for s in self.statements]

    def without(self, *sids: str) -> Policy:
        """The same policy less the named statements (tests: each statement is needed)."""
        unknown = set(sids) - set(self.sids())
        if unknown:
            raise KeyError(f"no statement {sorted(unknown)} in the {self.role} policy")
        return replace(self, statements=tuple(s for s in self.statements if s.sid not in sids))

    def granting(self, action: str) -> list[str]:
        """The Sids of the statements that allow `action` (exact names; the policies use no wildcards)."""
        return [s.sid for s in self.statements if action in s.actions]


@dataclass(frozen=True)
class Secret:
    """A secret a job reads by reference: an SSM parameter name or a Secrets Manager secret ID/name."""

    service: Literal["ssm", "secretsmanager"]
    name: str

    @property
    def arn(self) -> str:
        if self.service == "ssm":
            return f"arn:aws:ssm:*:*:parameter/{self.name.lstrip('/')}"
        if self.name.startswith("arn:"):
            return self.name
        # Secrets Manager appends a random 6-character suffix to a secret's ARN: match it.
        return f"arn:aws:secretsmanager:*:*:secret:{self.name}-??????"


def parse_secret(value: str) -> Secret:
    """`ssm:/path/name` or `secretsmanager:name` (the same references as `train launch --secret-env`)."""
    match = _SECRET.match(value.strip()) if isinstance(value, str) else None
    if not match or any(c in match.group(2) for c in "*? "):
        raise InvalidInputError("secret", value, "ssm:/parameter/name or secretsmanager:secret-name (no wildcards)")
    if match.group(1) == "ssm":
        return Secret(service="ssm", name=match.group(2))
    return Secret(service="secretsmanager", name=match.group(2))


@dataclass(frozen=True)
class Scope:
    """What the policies are scoped to: the job buckets (their trainctl/ prefix), data prefixes (datasets, prewarm
    sources, transfer sources and destinations: instances only read them), prefixes jobs write outside trainctl/
    (a checkpoint_uri elsewhere), secrets, and the instance roles."""

    buckets: tuple[str, ...]
    data: tuple[S3Uri, ...] = ()
    writes: tuple[S3Uri, ...] = ()
    secrets: tuple[Secret, ...] = ()
    instance_role: str = DEFAULT_INSTANCE_ROLE
    prewarm_role: str = DEFAULT_PREWARM_ROLE

    @classmethod
    def of(
        cls,
        buckets: Sequence[str] = (),
        *,
        data: Sequence[str] = (),
        writes: Sequence[str] = (),
        secrets: Sequence[str] = (),
        instance_role: str = DEFAULT_INSTANCE_ROLE,
        prewarm_role: str = DEFAULT_PREWARM_ROLE,
    ) -> Scope:
        """Validated from user input: each bucket a bucket name, each data or write prefix an s3:// URI, each
        secret a reference, each role an IAM role name."""
        names = tuple(dict.fromkeys(_bucket_name(b) for b in buckets))
        prefixes = tuple(dict.fromkeys(parse_s3_uri(d, field="data") for d in data))
        written = tuple(dict.fromkeys(parse_s3_uri(w, field="write") for w in writes))
        for field_name, role in (("instance_role", instance_role), ("prewarm_role", prewarm_role)):
            if not _ROLE_NAME.match(role):
                raise InvalidInputError(field_name, role, "an IAM role name (1–64 of letters, digits, +=,.@_-)")
        return cls(
            buckets=names,
            data=prefixes,
            writes=written,
            secrets=tuple(dict.fromkeys(parse_secret(s) for s in secrets)),
            instance_role=instance_role,
            prewarm_role=prewarm_role,
        )


def _bucket_name(value: str) -> str:
    try:
        return validate_bucket(value)  # `s3://jobs` is the bucket `jobs`, as everywhere else
    except InvalidInputError:
        raise InvalidInputError(
            "bucket",
            value,
            "a bucket name (3–63 lowercase letters, digits, dots or hyphens)",
            fix="Pass the bucket's name alone (no prefix); other prefixes go in --data s3://BUCKET/PREFIX/",
        ) from None


# -- S3 -----------------------------------------------------------------------------------------------------------


def _prefixes(
    scope: Scope, trainctl_parts: tuple[str, ...], *, data: bool = True, writes: bool = True
) -> dict[str, list[str]]:
    """bucket → key prefixes (no trailing slash): trainctl's own under each job bucket, then the data prefixes
    and the written ones (each when asked)."""
    found: dict[str, list[str]] = {}
    for bucket in scope.buckets:
        for part in trainctl_parts:
            found.setdefault(bucket, []).append(f"{TRAINCTL_PREFIX}/{part}".rstrip("/"))
    extra = (*(scope.data if data else ()), *(scope.writes if writes else ()))
    for uri in extra:
        keys = found.setdefault(uri.bucket, [])
        if uri.key.rstrip("/") not in keys:
            keys.append(uri.key.rstrip("/"))
    return found


def _with_source_staging(prefixes: dict[str, list[str]], scope: Scope) -> dict[str, list[str]]:
    """Plus trainctl/staging in every data bucket: a prewarm puts its list of keys to copy beside its source."""
    found = {bucket: list(keys) for bucket, keys in prefixes.items()}
    for uri in scope.data:
        keys = found.setdefault(uri.bucket, [])
        if not any(k in (TRAINCTL_PREFIX, f"{TRAINCTL_PREFIX}/staging") for k in keys):
            keys.append(f"{TRAINCTL_PREFIX}/staging")
    return found


def _object_arns(prefixes: dict[str, list[str]]) -> tuple[str, ...]:
    return tuple(
        f"arn:aws:s3:::{bucket}/{p}/*" if p else f"arn:aws:s3:::{bucket}/*"
        for bucket, keys in prefixes.items()
        for p in keys
    )


def _list_statement(sid: str, prefixes: dict[str, list[str]], purpose: str) -> list[Statement]:
    """s3:ListBucket per bucket, limited to the prefixes. `IfExists`: HeadBucket (the bucket check before a launch)
    is authorized as s3:ListBucket and sends no prefix; every listing trainctl makes sends one."""
    statements = []
    for n, (bucket, keys) in enumerate(prefixes.items()):
        patterns = sorted({pattern for p in keys for pattern in ((f"{p}/*", p) if p else ("*",))})
        statements.append(
            Statement(
                sid=sid if len(prefixes) == 1 else f"{sid}{n + 1}",
                actions=("s3:ListBucket",),
                resources=(f"arn:aws:s3:::{bucket}",),
                condition={"StringLikeIfExists": {"s3:prefix": patterns}},
                purpose=f"{purpose} (s3://{bucket}/ under {', '.join(p + '/' for p in keys)})",
            )
        )
    return statements


# -- EC2 and SSM (the caller) -------------------------------------------------------------------------------------

_MANAGED_RESOURCE: Condition = {"StringEquals": {f"aws:ResourceTag/{t.MANAGED}": list(t.MANAGED_VALUES)}}
_MANAGED_REQUEST: Condition = {"StringEquals": {f"aws:RequestTag/{t.MANAGED}": "true"}}


def _ec2(*kinds: str) -> tuple[str, ...]:
    return tuple(EC2_ARN.format(k) for k in kinds)


def _ec2_statements() -> list[Statement]:
    describe = ("Instances", "Volumes", "Snapshots", "Images", "InstanceTypes", "InstanceTypeOfferings", "Subnets")
    return [
        Statement(
            "DescribeEc2",
            (
                *(f"ec2:Describe{d}" for d in describe),
                "ec2:DescribeAvailabilityZones",
                "ec2:DescribeSpotInstanceRequests",
                "ec2:DescribeSpotPriceHistory",
                "ec2:GetSpotPlacementScores",
            ),
            ("*",),
            "inventory, validation before any launch, waiters; spot-watch: spot request status, where capacity is; "
            "prices: spot history (Describe* and GetSpotPlacementScores have no resource-level permissions)",
        ),
        Statement(
            "ReadPrices",
            ("pricing:GetProducts",),
            ("*",),
            "on-demand, EBS and S3 list prices for the launch guard and cost-watch (no resource-level permissions)",
        ),
        Statement(
            "LaunchTaggedInstances",
            ("ec2:RunInstances",),
            _ec2("instance", "volume"),
            "launch instances (and their root volumes) only with trainctl:managed=true at creation",
            _MANAGED_REQUEST,
        ),
        Statement(
            "LaunchFromImagesAndSubnets",
            ("ec2:RunInstances",),
            (
                "arn:aws:ec2:*::image/*",
                "arn:aws:ec2:*::snapshot/*",
                *_ec2("subnet", "security-group", "network-interface", "key-pair", "spot-instances-request"),
            ),
            "the other resources a launch touches (AMI, its snapshot, subnet, security groups, ENI, spot request)",
        ),
        Statement(
            "CreateTaggedVolumes",
            ("ec2:CreateVolume",),
            _ec2("volume"),
            "create data volumes only with trainctl:managed=true at creation",
            _MANAGED_REQUEST,
        ),
        Statement(
            "RestoreManagedSnapshots",
            ("ec2:CreateVolume",),
            ("arn:aws:ec2:*:*:snapshot/*",),
            "restore a volume from a trainctl snapshot (ebs restore, ebs move)",
            _MANAGED_RESOURCE,
        ),
        Statement(
            "SnapshotManagedVolumes",
            ("ec2:CreateSnapshot",),
            _ec2("volume"),
            "snapshot trainctl volumes only",
            _MANAGED_RESOURCE,
        ),
        Statement(
            "CreateTaggedSnapshots",
            ("ec2:CreateSnapshot",),
            ("arn:aws:ec2:*:*:snapshot/*",),
            "snapshots only with trainctl:managed=true at creation",
            _MANAGED_REQUEST,
        ),
        Statement(
            "TagOnCreate",
            ("ec2:CreateTags",),
            _ec2("instance", "volume", "snapshot"),
            "tags given at creation (TagSpecifications) and nothing else",
            {"StringEquals": {"ec2:CreateAction": ["RunInstances", "CreateVolume", "CreateSnapshot"]}},
        ),
        Statement(
            "RetagManagedVolumes",
            ("ec2:CreateTags",),
            _ec2("volume"),
            "ebs move renames the original volume, a prewarm marks its volume done (or pending again while it "
            "re-syncs) with its dataset's digest: those tags of trainctl volumes only",
            {
                **_MANAGED_RESOURCE,
                "ForAllValues:StringEquals": {"aws:TagKeys": [t.NAME, t.PREWARM, t.DATASET_DIGEST]},
            },
        ),
        Statement(
            "ChangeManagedInstances",
            ("ec2:TerminateInstances", "ec2:ModifyInstanceAttribute", "ec2:AttachVolume", "ec2:DetachVolume"),
            _ec2("instance"),
            "terminate, keep volumes on termination, attach and detach: trainctl instances only",
            _MANAGED_RESOURCE,
        ),
        Statement(
            "ChangeManagedVolumes",
            ("ec2:AttachVolume", "ec2:DetachVolume", "ec2:DeleteVolume"),
            _ec2("volume"),
            "attach, detach and delete trainctl volumes only (the safety rules decide which)",
            _MANAGED_RESOURCE,
        ),
        Statement(
            "DeleteManagedSnapshots",
            ("ec2:DeleteSnapshot",),
            ("arn:aws:ec2:*:*:snapshot/*",),
            "delete trainctl snapshots only (ebs delete --delete-snapshots, teardown)",
            _MANAGED_RESOURCE,
        ),
    ]


def _ssm_statements() -> list[Statement]:
    return [
        Statement(
            "RunShellOnManagedInstances",
            ("ssm:SendCommand",),
            _ec2("instance"),
            "run scripts (mount, sync, ship code, start the agent, training checks) on trainctl instances only",
            {"StringEquals": {f"ssm:resourceTag/{t.MANAGED}": list(t.MANAGED_VALUES)}},
        ),
        Statement(
            "RunShellDocument",
            ("ssm:SendCommand",),
            ("arn:aws:ssm:*::document/AWS-RunShellScript",),
            "the one SSM document trainctl sends",
        ),
        Statement(
            "FollowCommands",
            (
                "ssm:DescribeInstanceInformation",
                "ssm:GetCommandInvocation",
                "ssm:ListCommandInvocations",
                "ssm:ListCommands",
                "ssm:CancelCommand",
            ),
            ("*",),
            "readiness (PingStatus Online), results, finding a command whose answer was lost, cancelling",
        ),
        Statement(
            "ReadPublicAmiParameters",
            ("ssm:GetParameter",),
            (PUBLIC_AMI_PARAMETERS,),
            "the AMI lookup (/aws/service/ami-amazon-linux-latest/... by default)",
        ),
    ]


def _require_buckets(scope: Scope) -> None:
    if not scope.buckets:
        raise InvalidInputError("bucket", "", "at least one job bucket", fix="Pass --bucket BUCKET")


def caller_policy(scope: Scope) -> Policy:
    """The identity that runs `trainctl` and the flows."""
    _require_buckets(scope)
    prefixes = _with_source_staging(_prefixes(scope, ("",)), scope)
    roles = tuple(dict.fromkeys((scope.instance_role, scope.prewarm_role)))
    statements = [
        *_ec2_statements(),
        Statement(
            "PassInstanceRoles",
            ("iam:PassRole",),
            tuple(f"arn:aws:iam::*:role/{r}" for r in roles),
            "launch instances with the trainctl instance profiles (and no other role)",
            {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}},
        ),
        *_ssm_statements(),
        *_list_statement("ListTrainctlPrefixes", prefixes, "job records, checkpoints, staging, transfer listings"),
        Statement(
            "ReadWriteTrainctlObjects",
            (
                "s3:GetObject",
                "s3:PutObject",
                "s3:DeleteObject",
                "s3:AbortMultipartUpload",
                "s3:ListMultipartUploadParts",
            ),
            _object_arns(prefixes),
            "job records, code and agent staging, logs, checkpoints (teardown deletes old ones), transfers, "
            "prewarm key lists",
        ),
        Statement(
            "ListUnfinishedUploads",
            ("s3:ListBucketMultipartUploads",),
            tuple(f"arn:aws:s3:::{b}" for b in prefixes),
            "find the parts of killed uploads under staging prefixes, to abort them",
        ),
    ]
    return Policy(role="caller", name="trainctl-caller", statements=tuple(statements))


# -- instances ----------------------------------------------------------------------------------------------------

# AmazonSSMManagedInstanceCore less what run-command does not use (patching, inventory, compliance, distributor,
# and its ssm:GetParameter(s) on every parameter): the agent registers, polls for commands and answers them.
SSM_AGENT_ACTIONS: tuple[str, ...] = (
    "ssm:UpdateInstanceInformation",
    "ssm:ListInstanceAssociations",
    "ssm:DescribeAssociation",
    "ssm:UpdateInstanceAssociationStatus",
    "ssm:GetDocument",
    "ssm:DescribeDocument",
    "ssmmessages:CreateControlChannel",
    "ssmmessages:CreateDataChannel",
    "ssmmessages:OpenControlChannel",
    "ssmmessages:OpenDataChannel",
    "ec2messages:AcknowledgeMessage",
    "ec2messages:DeleteMessage",
    "ec2messages:FailMessage",
    "ec2messages:GetEndpoint",
    "ec2messages:GetMessages",
    "ec2messages:SendReply",
)


def _ssm_agent() -> Statement:
    return Statement(
        "SsmAgent", SSM_AGENT_ACTIONS, ("*",), "the SSM agent: register, receive commands, send results (no SSH)"
    )


def _secret_statements(scope: Scope) -> list[Statement]:
    parameters = tuple(s.arn for s in scope.secrets if s.service == "ssm")
    secrets = tuple(s.arn for s in scope.secrets if s.service == "secretsmanager")
    found = []
    if parameters:
        found.append(
            Statement(
                "ReadJobParameters",
                ("ssm:GetParameter",),
                parameters,
                "secrets a job's --secret-env names (SecureString parameters decrypt with the aws/ssm key)",
            )
        )
    if secrets:
        found.append(
            Statement(
                "ReadJobSecrets", ("secretsmanager:GetSecretValue",), secrets, "secrets a job's --secret-env names"
            )
        )
    return found


def instance_policy(scope: Scope) -> Policy:
    """The training instance's profile: the agent reads its code and checkpoints and writes logs, status,
    checkpoints and interruption records; transfers to and from instances stage through trainctl/staging. The
    datasets (`data`) are read-only: a trainer's bug or a compromised job cannot change or delete the data every
    other job reads (only `writes` prefixes, e.g. a checkpoint_uri outside trainctl/, are written)."""
    _require_buckets(scope)
    job_prefixes = _prefixes(scope, ("jobs", "staging"), data=False)
    statements = [
        _ssm_agent(),
        *_list_statement(
            "ListJobPrefixes",
            _prefixes(scope, ("jobs", "staging")),
            "restore the latest checkpoint, transfer listings, list the datasets",
        ),
        Statement(
            "ReadWriteJobObjects",
            ("s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"),
            _object_arns(job_prefixes),
            "code and agent download, checkpoints, logs, status and interruption records, transfer staging",
        ),
    ]
    data = _prefixes(replace(scope, buckets=(), writes=()), ())
    if data:
        statements.append(
            Statement(
                "ReadDatasets",
                ("s3:GetObject",),
                _object_arns(data),
                "read the datasets (direct-s3, the local-cache copy); never write or delete them",
            )
        )
    statements.extend(_secret_statements(scope))
    return Policy(role="instance", name="trainctl-instance", statements=tuple(statements))


def prewarm_policy(scope: Scope) -> Policy:
    """The prewarm flow's temporary instance: it only reads the source prefixes onto the volume."""
    prefixes = _prefixes(scope, (), writes=False)
    if not prefixes:
        raise InvalidInputError(
            "data", "", "the S3 prefix(es) to prewarm from", fix="Pass --data s3://BUCKET/PREFIX/ (the prewarm source)"
        )
    statements = [
        _ssm_agent(),
        *_list_statement("ListSource", prefixes, "list the source before the sync"),
        Statement(
            "ReadSource",
            ("s3:GetObject",),
            _object_arns(_with_source_staging(prefixes, scope)),
            "copy the source onto the volume (and read the list of keys to copy from trainctl/staging)",
        ),
    ]
    return Policy(role="prewarm", name="trainctl-prewarm", statements=tuple(statements))


def policy_for(role: Role, scope: Scope) -> Policy:
    if role == "caller":
        return caller_policy(scope)
    if role == "instance":
        return instance_policy(scope)
    if role == "prewarm":
        return prewarm_policy(scope)
    raise InvalidInputError("for", role, "one of caller, instance, prewarm")


# -- instance profiles ----------------------------------------------------------------------------------------------

EC2_TRUST_POLICY: dict[str, Any] = {
    "Version": VERSION,
    "Statement": [
        {
            "Sid": "Ec2AssumesThisRole",
            "Effect": "Allow",
            "Principal": {"Service": "ec2.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}


def profile_role(role: Role, scope: Scope) -> str | None:
    """The IAM role (and instance profile, same name) a policy belongs to; None for the caller."""
    return {"instance": scope.instance_role, "prewarm": scope.prewarm_role}.get(role)


def setup_commands(policy: Policy, role_name: str) -> list[str]:
    """aws-cli commands that make the role, its inline policy and the instance profile (files named after them)."""
    return [
        f"aws iam create-role --role-name {role_name} --assume-role-policy-document file://trust-ec2.json",
        f"aws iam put-role-policy --role-name {role_name} --policy-name {policy.name} "
        f"--policy-document file://{policy.name}.json",
        f"aws iam create-instance-profile --instance-profile-name {role_name}",
        f"aws iam add-role-to-instance-profile --instance-profile-name {role_name} --role-name {role_name}",
    ]
