"""SSM run-command: wait until an instance is Online, run a shell script there, and wait for its result.

No SSH and no open ports: everything that happens on an instance goes through here (DESIGN.md section 4).
Scripts must be built with `core.shell` (every interpolated value quoted). Output beyond the 24,000 characters
SSM returns inline is read from the S3 output location when one is given.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel

from blocks.aws import load_account
from core.errors import TrainctlError, UsageError
from core.ids import validate_id
from core.s3uri import parse_s3_uri
from tasks.aws import aws_task, is_transient, translate
from tasks.s3 import client

SSM_INLINE_LIMIT = 24_000
TERMINAL = {"Success", "Failed", "TimedOut", "Cancelled"}
# SSM may keep Status "Pending"/"InProgress" briefly while StatusDetails already says it is over.
TERMINAL_DETAILS = {"Undeliverable", "Terminated", "DeliveryTimedOut", "ExecutionTimedOut", "Cancelled"}


class CommandResult(BaseModel):
    command_id: str
    instance_id: str
    status: str
    status_details: str = ""
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "Success"

    def describe_failure(self) -> str:
        tail = (self.stderr or self.stdout).strip().splitlines()[-5:]
        detail = " | ".join(tail) if tail else "no output"
        return f"command {self.command_id} on {self.instance_id} ended {self.status} (exit {self.exit_code}): {detail}"


class CommandFailedError(TrainctlError):
    """A script ran on the instance and failed; the message carries its exit code and last lines of output."""

    def __init__(self, result: CommandResult, what: str) -> None:
        self.result = result
        super().__init__(f"{what} failed: {result.describe_failure()}")


def _poll_delay(attempt: int) -> float:
    """The pause before poll `attempt` of a command's result: 0.1 s growing by 1.4x to 5 s. Most commands end
    within a few seconds; doubling from 0.25 s found a 1 s command done at 1.75 s and a 2 s one at 3.75 s, where
    this finds them at 1.1 s and 2.4 s (at most 40 % late) for a few more cheap GetCommandInvocation calls."""
    return min(0.1 * 1.4 ** min(attempt, 12), 5.0)


def _retry_delay(attempt: int) -> float:
    """The pause before retrying a throttled or failed call: doubling from 0.25 s, at most 5 s."""
    return min(0.25 * (2**attempt), 5.0)


def _call_tolerating_transient(call: Any, operation: str, **kwargs: Any) -> Any:
    """Polling must survive throttling without re-sending the command (a task retry would run it twice)."""
    for attempt in range(8):
        try:
            with translate(operation):
                return call(**kwargs)
        except Exception as exc:
            if not is_transient(exc) or attempt == 7:
                raise
            time.sleep(_retry_delay(attempt))
    raise AssertionError("unreachable")


# Codes with which AWS refuses a call without carrying it out: sending again cannot run the command twice.
_REFUSED = frozenset({"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded"})
_SEND_ATTEMPTS = 5


def _send_once(account: str | None, instance_id: str, request: dict[str, Any]) -> str:
    """SendCommand, carried out once even when an answer is lost.

    botocore's retries are off for this call: after a read timeout, a dropped connection or a 5xx the command may
    have been accepted, so it is looked up first (ListCommands on the instance, by a token in its Comment) and
    sent again only if it is not there. A throttled call was refused, and is sent again after a pause."""
    aws = load_account(account)
    token = uuid.uuid4().hex[:16]
    request = {**request, "Comment": f"{request.get('Comment', '')} [{token}]".lstrip()}
    since = datetime.now(UTC) - timedelta(minutes=10)  # a margin for clock skew
    for attempt in range(_SEND_ATTEMPTS):
        try:
            with translate("ssm:SendCommand"):
                return str(aws.client("ssm", retries=False).send_command(**request)["Command"]["CommandId"])
        except Exception as exc:
            if not is_transient(exc) or attempt == _SEND_ATTEMPTS - 1:
                raise
            refused = getattr(exc, "code", None) in _REFUSED
            time.sleep(_retry_delay(attempt + 1))
            if not refused:
                found = _sent_with(aws.client("ssm"), instance_id, token, since)
                if found is not None:
                    return found
    raise AssertionError("unreachable")


def _sent_with(ssm: Any, instance_id: str, token: str, since: datetime) -> str | None:
    """The command sent to the instance since `since` whose Comment ends with the token, if any."""
    filters = [{"key": "InvokedAfter", "value": since.strftime("%Y-%m-%dT%H:%M:%SZ")}]
    with translate("ssm:ListCommands"):
        for page in ssm.get_paginator("list_commands").paginate(InstanceId=instance_id, Filters=filters):
            for command in page.get("Commands", []):
                if str(command.get("Comment", "")).endswith(f"[{token}]"):
                    return str(command["CommandId"])
    return None


@aws_task(name="wait-ssm-online", task_run_name="wait-ssm-online {instance_id}", tags=["aws-ssm"])
def wait_online(instance_id: str, *, timeout_s: float = 600, account: str | None = None) -> None:
    """Wait until the instance's SSM agent reports PingStatus Online (its readiness for commands)."""
    validate_id("instance", instance_id)
    ssm = load_account(account).client("ssm")
    deadline = time.monotonic() + timeout_s
    attempt = 0
    while True:
        info = _call_tolerating_transient(
            ssm.describe_instance_information,
            "DescribeInstanceInformation",
            Filters=[{"Key": "InstanceIds", "Values": [instance_id]}],
        )["InstanceInformationList"]
        if any(i.get("PingStatus") == "Online" for i in info):
            return
        if time.monotonic() > deadline:
            raise UsageError(
                f"{instance_id} did not come Online in SSM within {timeout_s:.0f} s",
                fix="Check that the instance profile allows the SSM agent (`trainctl iam policy --for instance`), "
                "that the AMI runs the SSM agent, and that the subnet reaches the SSM endpoints (NAT, VPC endpoints).",
            )
        time.sleep(_poll_delay(attempt))
        attempt += 1


def _read_s3_output(account: str | None, url: str) -> str | None:
    """SSM's StandardOutputUrl is an https URL of the object; take the bucket/key from it."""
    if not url:
        return None
    s3 = client(account)
    # https://s3.<region>.amazonaws.com/<bucket>/<key>  or  https://<bucket>.s3.amazonaws.com/<key>
    path = url.split("://", 1)[-1].split("/", 1)[-1]
    host = url.split("://", 1)[-1].split("/", 1)[0]
    if host.startswith("s3.") or host.startswith("s3-") or ":" in host or host.startswith("127."):
        bucket, _, key = path.partition("/")
    else:
        bucket, key = host.split(".s3", 1)[0], path
    with translate("s3:GetObject"):
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return str(body.decode("utf-8", errors="replace"))


def run_script(
    instance_id: str,
    script: list[str],
    *,
    timeout_s: int = 3600,
    output_s3_uri: str | None = None,
    comment: str = "",
    account: str | None = None,
) -> CommandResult:
    """Send one AWS-RunShellScript command and wait for it to finish (plain function; see `run_command`)."""
    validate_id("instance", instance_id)
    if not script:
        raise UsageError("an empty script was given to run on the instance")
    ssm = load_account(account).client("ssm")
    command_id = _send_once(account, instance_id, _send_request(instance_id, script, timeout_s, output_s3_uri, comment))
    inv = _wait_invocation(ssm, command_id, instance_id, deadline=time.monotonic() + timeout_s + 660)
    stdout, stderr = inv.get("StandardOutputContent", ""), inv.get("StandardErrorContent", "")
    if len(stdout) >= SSM_INLINE_LIMIT and output_s3_uri:
        stdout = _read_s3_output(account, inv.get("StandardOutputUrl", "")) or stdout
    if len(stderr) >= SSM_INLINE_LIMIT and output_s3_uri:
        stderr = _read_s3_output(account, inv.get("StandardErrorUrl", "")) or stderr
    code = inv.get("ResponseCode")
    return CommandResult(
        command_id=command_id,
        instance_id=instance_id,
        status=inv["Status"],
        status_details=inv.get("StatusDetails", ""),
        exit_code=code if isinstance(code, int) and code >= 0 else None,
        stdout=stdout,
        stderr=stderr,
    )


def _send_request(
    instance_id: str, script: list[str], timeout_s: int, output_s3_uri: str | None, comment: str
) -> dict[str, Any]:
    """The SendCommand request; output beyond SSM's inline limit goes to `output_s3_uri` when given."""
    request: dict[str, Any] = {
        "InstanceIds": [instance_id],
        "DocumentName": "AWS-RunShellScript",
        "Parameters": {"commands": script, "executionTimeout": [str(int(timeout_s))]},
        "Comment": comment[:80],
        "TimeoutSeconds": 600,
    }
    if output_s3_uri:
        out = parse_s3_uri(output_s3_uri, field="output_s3_uri")
        request["OutputS3BucketName"] = out.bucket
        if out.key:
            request["OutputS3KeyPrefix"] = out.key.rstrip("/")
    return request


def _wait_invocation(ssm: Any, command_id: str, instance_id: str, *, deadline: float) -> dict[str, Any]:
    """Poll GetCommandInvocation with backoff until the command ends (or the deadline); its last answer."""
    attempt = 0
    while True:
        time.sleep(_poll_delay(attempt))
        attempt = min(attempt + 1, 12)
        try:
            inv: dict[str, Any] = _call_tolerating_transient(
                ssm.get_command_invocation,
                "GetCommandInvocation",
                CommandId=command_id,
                InstanceId=instance_id,
            )
        except Exception as exc:
            # Right after SendCommand the invocation may not exist yet: that is not a failure.
            if getattr(exc, "code", "") == "InvocationDoesNotExist" and time.monotonic() < deadline:
                continue
            raise
        if inv["Status"] in TERMINAL or inv.get("StatusDetails") in TERMINAL_DETAILS or time.monotonic() > deadline:
            return inv


@aws_task(name="run-command", task_run_name="run-{what} {instance_id}", tags=["aws-ssm"], retries=0)
def run_command(
    instance_id: str,
    script: list[str],
    *,
    timeout_s: int = 3600,
    output_s3_uri: str | None = None,
    comment: str = "",
    check: bool = True,
    what: str = "script",
    account: str | None = None,
) -> CommandResult:
    """Run a script on the instance; with `check` a non-Success result raises CommandFailedError.

    Not retried as a whole: a retry would run the script twice. Polling survives throttling on its own.
    """
    result = run_script(
        instance_id, script, timeout_s=timeout_s, output_s3_uri=output_s3_uri, comment=comment, account=account
    )
    if check and not result.ok:
        raise CommandFailedError(result, what)
    return result


# -- one command for many instances ---------------------------------------------------------------------------

SEND_LIMIT = 50  # InstanceIds per SendCommand
_ERROR_MARK = "\n----------ERROR-------\n"  # how CommandPlugins[].Output appends stderr


def online_instances(instance_ids: list[str], *, account: str | None = None) -> list[str]:
    """Those of `instance_ids` whose SSM agent is Online (DescribeInstanceInformation, 50 IDs a call)."""
    ssm = load_account(account).client("ssm")
    online: set[str] = set()
    for start in range(0, len(instance_ids), SEND_LIMIT):
        token: str | None = None
        while True:
            page = _call_tolerating_transient(
                ssm.describe_instance_information,
                "DescribeInstanceInformation",
                Filters=[{"Key": "InstanceIds", "Values": instance_ids[start : start + SEND_LIMIT]}],
                **({"NextToken": token} if token else {}),
            )
            online.update(i["InstanceId"] for i in page["InstanceInformationList"] if i.get("PingStatus") == "Online")
            token = page.get("NextToken")
            if not token:
                break
    return [i for i in instance_ids if i in online]


def run_script_on_instances(
    instance_ids: list[str], script: list[str], *, timeout_s: int = 60, comment: str = "", account: str | None = None
) -> dict[str, CommandResult]:
    """Run one script (no per-instance input) on many instances: one SendCommand per 50 of those Online in SSM
    (SSM refuses a whole call for one that is not), then ListCommandInvocations with Details until each one ended
    (`timeout_s` is each one's execution timeout; one still undelivered a few seconds later is reported as it
    stands). Instances not Online are absent from the answer; a result's stdout is the first 2,500
    characters SSM keeps in the listing. Not retried as a whole (the script would run twice)."""
    for instance_id in instance_ids:
        validate_id("instance", instance_id)
    if not script:
        raise UsageError("an empty script was given to run on the instances")
    online = online_instances(instance_ids, account=account)
    commands: list[str] = []
    for start in range(0, len(online), SEND_LIMIT):
        batch = online[start : start + SEND_LIMIT]
        request: dict[str, Any] = {
            "InstanceIds": batch,
            "DocumentName": "AWS-RunShellScript",
            "Parameters": {"commands": script, "executionTimeout": [str(int(timeout_s))]},
            "Comment": comment[:80],
            "TimeoutSeconds": max(30, int(timeout_s)),
        }
        command_id = _send_to_online(account, batch, request)
        if command_id is not None:
            commands.append(command_id)
    ssm = load_account(account).client("ssm")
    deadline = time.monotonic() + timeout_s + 5  # SSM's own execution timeout ends them first: TimedOut
    results: dict[str, CommandResult] = {}
    for command_id in commands:
        results.update(_collect_invocations(ssm, command_id, deadline))
    return results


def _send_to_online(account: str | None, batch: list[str], request: dict[str, Any]) -> str | None:
    """SendCommand to the batch; when one of them went offline since it was listed Online (SSM then refuses the
    whole call), once more to those still Online. None when none is."""
    try:
        return _send_once(account, batch[0], request)
    except TrainctlError as exc:
        if getattr(exc, "code", None) != "InvalidInstanceId":
            raise
    batch = online_instances(batch, account=account)
    return _send_once(account, batch[0], {**request, "InstanceIds": batch}) if batch else None


def _collect_invocations(ssm: Any, command_id: str, deadline: float) -> dict[str, CommandResult]:
    """Every invocation of the command, once all ended or at the deadline (then some may still be InProgress)."""
    attempt = 0
    while True:
        time.sleep(_poll_delay(attempt))
        attempt = min(attempt + 1, 12)
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            page = _call_tolerating_transient(
                ssm.list_command_invocations,
                "ListCommandInvocations",
                CommandId=command_id,
                Details=True,
                **({"NextToken": token} if token else {}),
            )
            items.extend(page.get("CommandInvocations", []))
            token = page.get("NextToken")
            if not token:
                break
        ended = all(i["Status"] in TERMINAL or i.get("StatusDetails") in TERMINAL_DETAILS for i in items)
        if (items and ended) or time.monotonic() > deadline:
            return {str(i["InstanceId"]): _listed_result(command_id, i) for i in items}


def _listed_result(command_id: str, item: dict[str, Any]) -> CommandResult:
    plugin = (item.get("CommandPlugins") or [{}])[0]
    stdout, _, stderr = str(plugin.get("Output", "")).partition(_ERROR_MARK)
    code = plugin.get("ResponseCode")
    return CommandResult(
        command_id=command_id,
        instance_id=str(item["InstanceId"]),
        status=str(item["Status"]),
        status_details=str(item.get("StatusDetails", "")),
        exit_code=code if isinstance(code, int) and code >= 0 else None,
        stdout=stdout,
        stderr=stderr,
    )
