"""SSM Run Command, implemented by the sandbox (moto's records commands and runs nothing).

SendCommand (AWS-RunShellScript) runs the commands as a bash script on each named instance, in the background,
in the instance's root with its environment (`InstanceRuntime.spawn`). The script and its output live where the
SSM agent keeps them (`<root>/var/lib/amazon/ssm/<instance>/document/orchestration/<command>/...`); the API shows
the first 24,000 characters and, with OutputS3BucketName, the full output goes to S3 under the agent's key layout.
Every other SSM action (parameters, documents, ...) passes through to moto.
"""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from werkzeug.wrappers import Response

from sandbox.protocol import ACCOUNT_ID, AwsRequest, json_error, json_response
from sandbox.runtime import InstanceDown, InstanceRecord, InstanceRuntime

if TYPE_CHECKING:
    from sandbox.server import Sandbox

DOCUMENT = "AWS-RunShellScript"
PLUGIN = "aws:runShellScript"
PLUGIN_DIR = "awsrunShellScript/0.awsrunShellScript"
OUTPUT_LIMIT = 24_000  # characters of stdout/stderr in GetCommandInvocation, as SSM
PLUGIN_OUTPUT_LIMIT = 2_500  # characters of CommandPlugins[].Output, as SSM
DEFAULT_EXECUTION_TIMEOUT = 3600
MAX_EXECUTION_TIMEOUT = 172_800
TERMINAL = frozenset({"Success", "Failed", "TimedOut", "Cancelled"})
POLL = 0.05  # how often a running command checks for cancel/timeout/instance loss


def _epoch(when: datetime | None) -> float | None:
    return when.timestamp() if when else None


def _string_time(when: datetime | None) -> str:
    """GetCommandInvocation's StringDateTime: `2026-01-02T03:04:05.678Z` (empty until it happens)."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z" if when else ""


def _exit_code(returncode: int) -> int:
    """A shell's view of a signal death (128 + signal), as the agent reports it."""
    return 128 - returncode if returncode < 0 else returncode


@dataclass
class Command:
    id: str
    comment: str
    parameters: dict[str, list[str]]
    instance_ids: list[str]
    targets: list[dict[str, Any]]
    requested: datetime
    timeout_seconds: int
    execution_timeout: int
    working_directory: str
    bucket: str
    prefix: str
    s3_region: str
    invocations: dict[str, Invocation] = field(default_factory=dict)


@dataclass
class Invocation:
    command: Command
    instance_id: str
    workdir: Path
    status: str = "Pending"
    details: str = "Pending"
    response_code: int = -1
    started: datetime | None = None
    ended: datetime | None = None
    cancel_requested: bool = False
    instance_lost: bool = False
    stdout_url: str = ""
    stderr_url: str = ""
    # Set while the output is being put to S3: as the SSM agent, which uploads the output and only then reports
    # the end, the invocation shows InProgress until then (a poller must find the output URLs with the result).
    uploading: bool = False

    @property
    def shown(self) -> tuple[str, str]:
        """(Status, StatusDetails) as the API reports them."""
        if self.uploading and self.status in TERMINAL:
            return "InProgress", "InProgress"
        return self.status, self.details

    def read(self, name: str, limit: int | None = OUTPUT_LIMIT) -> str:
        try:
            with (self.workdir / name).open("rb") as f:
                data = f.read() if limit is None else f.read(limit * 4)  # utf-8: at most 4 bytes a character
        except OSError:
            return ""
        text = data.decode(errors="replace")
        return text if limit is None else text[:limit]


class RunCommand:
    def __init__(self, sandbox: Sandbox, runtime: InstanceRuntime) -> None:
        self.sandbox = sandbox
        self.runtime = runtime
        self._lock = threading.RLock()
        self.commands: dict[str, Command] = {}
        self._threads: list[threading.Thread] = []
        runtime.add_down_listener(self._instance_down)
        runtime.add_quiesce(self._join)

    # -- lifecycle -----------------------------------------------------------------------------------------
    def _instance_down(self, instance_id: str) -> None:
        with self._lock:
            for command in self.commands.values():
                inv = command.invocations.get(instance_id)
                if inv is not None and inv.status not in TERMINAL:
                    inv.instance_lost = True

    def _join(self) -> None:
        with self._lock:
            threads, self._threads = self._threads, []
        for thread in threads:
            thread.join(timeout=15)

    def reset(self) -> None:
        self._join()  # the runtime's reset already ended every process (and called _join)
        with self._lock:
            self.commands.clear()

    def stop(self) -> None:
        self.runtime.shutdown()
        self._join()

    # -- API -----------------------------------------------------------------------------------------------
    def send_command(self, req: AwsRequest) -> Response:
        body: dict[str, Any] = req.json or {}
        checked = _send_parameters(body)
        if isinstance(checked, Response):
            return checked
        parameters, execution_timeout = checked
        targets = list(body.get("Targets") or [])
        instance_ids = self._send_targets(body, targets, req.region)
        if isinstance(instance_ids, Response):
            return instance_ids
        command = Command(
            id=str(uuid.uuid4()),
            comment=str(body.get("Comment", "")),
            parameters=parameters,
            instance_ids=instance_ids,
            targets=targets,
            requested=datetime.now(UTC),
            timeout_seconds=int(body.get("TimeoutSeconds") or 3600),
            execution_timeout=execution_timeout,
            working_directory=(parameters.get("workingDirectory") or [""])[0],
            bucket=str(body.get("OutputS3BucketName") or ""),
            prefix=str(body.get("OutputS3KeyPrefix") or "").strip("/"),
            s3_region=str(body.get("OutputS3Region") or req.region),
        )
        with self._lock:
            self._start(command)
            return json_response({"Command": self._command_json(command)})

    def _send_targets(self, body: dict[str, Any], targets: list[dict[str, Any]], region: str) -> list[str] | Response:
        """The instances a SendCommand runs on (those of Targets that are online), or SSM's refusal."""
        instance_ids = [str(i) for i in body.get("InstanceIds") or []]
        if instance_ids and targets:
            return json_error("InvalidParameters", "Specify either InstanceIds or Targets, not both.")
        if targets:
            instance_ids = self._resolve_targets(targets, region)
        elif not instance_ids:
            return json_error("InvalidParameters", "InstanceIds or Targets is required.")
        if len(set(instance_ids)) != len(instance_ids):
            return json_error("DuplicateInstanceId", "Instance Id list contains duplicates.")
        if len(instance_ids) > 50:
            return json_error("InvalidParameters", "Too many instance IDs (at most 50).")
        offline = [i for i in instance_ids if not self.runtime.is_online(i)]
        if offline and not targets:
            # As SSM: one instance that is unknown, stopped, terminated or not yet registered fails the call.
            return json_error(
                "InvalidInstanceId", f"Instances [[{', '.join(offline)}]] not in a valid state for account."
            )
        return [i for i in instance_ids if i not in offline]

    def _start(self, command: Command) -> None:
        """Record the command and run it on each of its instances, in the background (under self._lock)."""
        for instance_id in command.instance_ids:
            workdir = (
                self.runtime.instance_root(instance_id)
                / "var/lib/amazon/ssm"
                / instance_id
                / "document/orchestration"
                / command.id
                / PLUGIN_DIR
            )
            command.invocations[instance_id] = Invocation(command, instance_id, workdir, uploading=bool(command.bucket))
        self.commands[command.id] = command
        for inv in command.invocations.values():
            thread = threading.Thread(target=self._run, args=(inv,), name=f"ssm-{command.id[:8]}", daemon=True)
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
            thread.start()

    def _resolve_targets(self, targets: list[dict[str, Any]], region: str) -> list[str]:
        """Targets by `InstanceIds` or `tag:Key` (read from moto's EC2 backend)."""
        found: list[str] = []
        for target in targets:
            key, values = str(target.get("Key", "")), [str(v) for v in target.get("Values") or []]
            if key == "InstanceIds":
                found.extend(values)
            elif key.startswith("tag:") or key == "tag-key":
                with self.sandbox.ec2_lock:
                    instances = self.sandbox.ec2_backend(region).all_instances(filters={key: values})
                found.extend(i.id for i in instances)
        return list(dict.fromkeys(found))

    def get_command_invocation(self, req: AwsRequest) -> Response:
        body: dict[str, Any] = req.json or {}
        plugin = body.get("PluginName")
        with self._lock:
            command = self.commands.get(str(body.get("CommandId", "")))
            inv = command.invocations.get(str(body.get("InstanceId", ""))) if command else None
            if inv is None or (plugin and plugin != PLUGIN):
                return json_error("InvocationDoesNotExist", "")
            elapsed = ""
            if inv.started:
                seconds = ((inv.ended or datetime.now(UTC)) - inv.started).total_seconds()
                elapsed = f"PT{seconds:.3f}S"
            payload = {
                "CommandId": inv.command.id,
                "InstanceId": inv.instance_id,
                "Comment": inv.command.comment,
                "DocumentName": DOCUMENT,
                "DocumentVersion": "$DEFAULT",
                "PluginName": PLUGIN,
                "ResponseCode": inv.response_code,
                "ExecutionStartDateTime": _string_time(inv.started),
                "ExecutionElapsedTime": elapsed,
                "ExecutionEndDateTime": _string_time(inv.ended),
                "Status": inv.shown[0],
                "StatusDetails": inv.shown[1],
                "StandardOutputContent": inv.read("stdout"),
                "StandardOutputUrl": inv.stdout_url,
                "StandardErrorContent": inv.read("stderr"),
                "StandardErrorUrl": inv.stderr_url,
                "CloudWatchOutputConfig": {"CloudWatchLogGroupName": "", "CloudWatchOutputEnabled": False},
            }
        return json_response(payload)

    def list_command_invocations(self, req: AwsRequest) -> Response:
        body: dict[str, Any] = req.json or {}
        details = bool(body.get("Details"))
        with self._lock:
            commands = self._select_commands(body)
            if isinstance(commands, Response):
                return commands
            invocations = [
                inv
                for command in commands
                for inv in command.invocations.values()
                if not body.get("InstanceId") or inv.instance_id == body["InstanceId"]
            ]
            invocations = [inv for inv in invocations if self._matches(inv.shown[0], inv.command, body)]
            page, token = _paginate(invocations, body, default=50)
            if isinstance(page, Response):
                return page
            items = [self._invocation_json(inv, details) for inv in page]
        payload: dict[str, Any] = {"CommandInvocations": items}
        if token:
            payload["NextToken"] = token
        return json_response(payload)

    def list_commands(self, req: AwsRequest) -> Response:
        body: dict[str, Any] = req.json or {}
        with self._lock:
            commands = self._select_commands(body)
            if isinstance(commands, Response):
                return commands
            if body.get("InstanceId"):
                commands = [c for c in commands if body["InstanceId"] in c.invocations]
            commands = [c for c in commands if self._matches(self._command_status(c)[0], c, body)]
            page, token = _paginate(commands, body, default=50)
            if isinstance(page, Response):
                return page
            items = [self._command_json(c) for c in page]
        payload: dict[str, Any] = {"Commands": items}
        if token:
            payload["NextToken"] = token
        return json_response(payload)

    def cancel_command(self, req: AwsRequest) -> Response:
        body: dict[str, Any] = req.json or {}
        with self._lock:
            command = self.commands.get(str(body.get("CommandId", "")))
            if command is None:
                return json_error("InvalidCommandId", "")
            wanted = body.get("InstanceIds") or list(command.invocations)
            for instance_id in wanted:
                inv = command.invocations.get(str(instance_id))
                if inv is None:
                    return json_error("InvalidInstanceId", f"Instance {instance_id} is not a target of the command.")
            for instance_id in wanted:
                inv = command.invocations[str(instance_id)]
                if inv.status not in TERMINAL:
                    inv.cancel_requested = True  # the command's thread ends the process group and reports it
        return json_response({})

    def describe_instance_information(self, req: AwsRequest) -> Response:
        body: dict[str, Any] = req.json or {}
        wanted = _info_filters(body)
        if isinstance(wanted, Response):
            return wanted
        max_results = body.get("MaxResults")
        if max_results is not None and not 5 <= int(max_results) <= 50:
            return json_error("ValidationException", "MaxResults must be between 5 and 50.")
        items: list[dict[str, Any]] = []
        with self.runtime._lock:
            records = [r for r in self.runtime.instances.values() if r.region == req.region]
        for rec in records:
            info = self._instance_information(rec)
            if info is None:
                continue
            checks = {
                "InstanceIds": rec.id,
                "PingStatus": info["PingStatus"],
                "PlatformTypes": "Linux",
                "ResourceType": "EC2Instance",
                "AgentVersion": info["AgentVersion"],
            }
            if all(checks.get(key) in values for key, values in wanted.items() if key in checks):
                items.append(info)
        items.sort(key=lambda i: str(i["InstanceId"]))
        page, token = _paginate(items, body, default=50)
        if isinstance(page, Response):
            return page
        payload: dict[str, Any] = {"InstanceInformationList": page}
        if token:
            payload["NextToken"] = token
        return json_response(payload)

    def _instance_information(self, rec: InstanceRecord) -> dict[str, Any] | None:
        """What SSM knows of an instance's agent; None when it has not registered (booting) or is terminated."""
        if rec.state == "terminated":
            return None
        if rec.state == "running":
            if not self.runtime.is_online(rec.id):
                return None  # still booting: the agent has not registered yet
            ping = "Online"
        else:
            ping = "ConnectionLost"
        return {
            "InstanceId": rec.id,
            "PingStatus": ping,
            "LastPingDateTime": time.time(),
            "AgentVersion": "3.3.1142.0",
            "IsLatestVersion": True,
            "PlatformType": "Linux",
            "PlatformName": "Amazon Linux",
            "PlatformVersion": "2023",
            "ResourceType": "EC2Instance",
            "IPAddress": rec.private_ip,
            "ComputerName": rec.hostname,
            "SourceId": rec.id,
            "SourceType": "AWS::EC2::Instance",
        }

    # -- execution -----------------------------------------------------------------------------------------
    def _run(self, inv: Invocation) -> None:
        try:
            self._execute(inv)
        except Exception as exc:  # a crash in the runtime fails the command, never the server
            self.sandbox.log(f"ssm: command {inv.command.id} on {inv.instance_id} crashed: {exc!r}")
            with self._lock:
                if inv.status not in TERMINAL:
                    self._finish(inv, "Failed", "Failed", -1)
        try:
            self._upload(inv)
        except Exception as exc:  # SSM reports the command's result even when the S3 upload fails
            self.sandbox.log(f"ssm: output upload for {inv.command.id} failed: {exc!r}")
        finally:
            with self._lock:
                inv.uploading = False

    def _execute(self, inv: Invocation) -> None:
        command = inv.command
        inv.workdir.mkdir(parents=True, exist_ok=True)
        script = inv.workdir / "_script.sh"
        script.write_text("\n".join(command.parameters["commands"]) + "\n")
        root = self.runtime.instance_root(inv.instance_id)
        cwd = root
        if command.working_directory:
            wd = command.working_directory
            cwd = Path(wd) if wd.startswith(str(root)) else root / wd.lstrip("/")
        with (inv.workdir / "stdout").open("wb") as out, (inv.workdir / "stderr").open("wb") as err:
            with self._lock:
                if inv.cancel_requested:
                    self._finish(inv, "Cancelled", "Cancelled", -1)
                    return
                if not cwd.is_dir():
                    err.write(f"Invalid workingDirectory: {command.working_directory} does not exist\n".encode())
                    err.flush()
                    self._finish(inv, "Failed", "Failed", 1, started=True)
                    return
                try:
                    proc = self.runtime.spawn(inv.instance_id, ["bash", str(script)], cwd=cwd, stdout=out, stderr=err)
                except InstanceDown:
                    self._finish(inv, "Failed", "Undeliverable", -1)
                    return
                inv.status = inv.details = "InProgress"
                inv.started = datetime.now(UTC)
            deadline = time.monotonic() + command.execution_timeout
            reason = ""
            while True:
                try:
                    proc.wait(timeout=POLL)
                    break
                except subprocess.TimeoutExpired:  # still running
                    pass
                if inv.cancel_requested:
                    reason = "cancel"
                elif inv.instance_lost:
                    reason = "lost"
                elif time.monotonic() >= deadline:
                    reason = "timeout"
                if reason:
                    self.runtime.kill_group(proc)
                    break
            code = _exit_code(proc.returncode if proc.returncode is not None else -9)
            if reason == "timeout":
                err.write(f"failed to run commands: execution timed out after {command.execution_timeout}s\n".encode())
        with self._lock:
            if reason == "cancel" or (inv.cancel_requested and code != 0):
                self._finish(inv, "Cancelled", "Cancelled", -1)
            elif reason == "timeout":
                self._finish(inv, "TimedOut", "ExecutionTimedOut", -1)
            elif reason == "lost" or inv.instance_lost:
                self._finish(inv, "Failed", "Failed", -1)  # the machine went away under the command
            elif code == 0:
                self._finish(inv, "Success", "Success", 0)
            else:
                self._finish(inv, "Failed", "Failed", code)

    def _finish(self, inv: Invocation, status: str, details: str, code: int, *, started: bool = False) -> None:
        now = datetime.now(UTC)
        if started and inv.started is None:
            inv.started = now
        inv.ended = now if inv.started else None
        inv.status, inv.details, inv.response_code = status, details, code

    def _upload(self, inv: Invocation) -> None:
        """The full output to `<prefix>/<command>/<instance>/awsrunShellScript/0.awsrunShellScript/<stream>`."""
        command = inv.command
        if not command.bucket:
            return
        from moto.s3.models import s3_backends

        backend = s3_backends[ACCOUNT_ID]["aws"]  # straight into moto: fault injection must not eat output
        base = "/".join(p for p in (command.prefix, command.id, inv.instance_id, PLUGIN_DIR) if p)
        urls: dict[str, str] = {}
        for stream in ("stdout", "stderr"):
            data = (inv.workdir / stream).read_bytes() if (inv.workdir / stream).exists() else b""
            if stream == "stderr" and not data:
                continue  # as the agent: no stderr object when there was no error output
            key = f"{base}/{stream}"
            backend.put_object(command.bucket, key, data)
            urls[stream] = f"https://s3.{command.s3_region}.amazonaws.com/{command.bucket}/{key}"
        with self._lock:
            inv.stdout_url = urls.get("stdout", "")
            inv.stderr_url = urls.get("stderr", "")

    # -- answers -------------------------------------------------------------------------------------------
    def _select_commands(self, body: dict[str, Any]) -> list[Command] | Response:
        if body.get("CommandId"):
            command = self.commands.get(str(body["CommandId"]))
            if command is None:
                return json_error("InvalidCommandId", "")
            return [command]
        return sorted(self.commands.values(), key=lambda c: c.requested, reverse=True)

    def _matches(self, status: str, command: Command, body: dict[str, Any]) -> bool:
        for item in body.get("Filters") or []:
            key, value = str(item.get("key", "")), str(item.get("value", ""))
            if key == "Status" and status != value:
                return False
            if key == "DocumentName" and value != DOCUMENT:
                return False
            if key in ("InvokedAfter", "InvokedBefore"):
                try:
                    when = datetime.fromisoformat(value.replace("Z", "+00:00"))
                except ValueError:
                    continue
                if when.tzinfo is None:
                    when = when.replace(tzinfo=UTC)
                if key == "InvokedAfter" and command.requested < when:
                    return False
                if key == "InvokedBefore" and command.requested > when:
                    return False
        return True

    def _command_status(self, command: Command) -> tuple[str, int, int]:
        statuses = [inv.shown[0] for inv in command.invocations.values()]
        completed = sum(s in TERMINAL for s in statuses)
        errors = sum(s in ("Failed", "TimedOut") for s in statuses)
        if not statuses:
            return "Failed", 0, 0
        if completed < len(statuses):
            return ("Pending" if all(s == "Pending" for s in statuses) else "InProgress"), completed, errors
        for status in ("Failed", "TimedOut", "Cancelled"):
            if status in statuses:
                return status, completed, errors
        return "Success", completed, errors

    def _command_json(self, command: Command) -> dict[str, Any]:
        status, completed, errors = self._command_status(command)
        return {
            "CommandId": command.id,
            "DocumentName": DOCUMENT,
            "DocumentVersion": "$DEFAULT",
            "Comment": command.comment,
            "ExpiresAfter": _epoch(command.requested + timedelta(seconds=command.timeout_seconds)),
            "Parameters": command.parameters,
            "InstanceIds": command.instance_ids,
            "Targets": command.targets,
            "RequestedDateTime": _epoch(command.requested),
            "Status": status,
            "StatusDetails": status,
            "OutputS3Region": command.s3_region,
            "OutputS3BucketName": command.bucket,
            "OutputS3KeyPrefix": command.prefix,
            "MaxConcurrency": "50",
            "MaxErrors": "0",
            "TargetCount": len(command.invocations),
            "CompletedCount": completed,
            "ErrorCount": errors,
            "DeliveryTimedOutCount": 0,
            "ServiceRole": "",
            "NotificationConfig": {"NotificationArn": "", "NotificationEvents": [], "NotificationType": ""},
            "CloudWatchOutputConfig": {"CloudWatchLogGroupName": "", "CloudWatchOutputEnabled": False},
            "TimeoutSeconds": command.timeout_seconds,
        }

    def _invocation_json(self, inv: Invocation, details: bool) -> dict[str, Any]:
        item: dict[str, Any] = {
            "CommandId": inv.command.id,
            "InstanceId": inv.instance_id,
            "InstanceName": "",
            "Comment": inv.command.comment,
            "DocumentName": DOCUMENT,
            "DocumentVersion": "$DEFAULT",
            "RequestedDateTime": _epoch(inv.command.requested),
            "Status": inv.shown[0],
            "StatusDetails": inv.shown[1],
            "TraceOutput": "",
            "StandardOutputUrl": inv.stdout_url,
            "StandardErrorUrl": inv.stderr_url,
            "CommandPlugins": [],
            "ServiceRole": "",
            "NotificationConfig": {"NotificationArn": "", "NotificationEvents": [], "NotificationType": ""},
            "CloudWatchOutputConfig": {"CloudWatchLogGroupName": "", "CloudWatchOutputEnabled": False},
        }
        if details:
            output = inv.read("stdout", PLUGIN_OUTPUT_LIMIT)
            error = inv.read("stderr", PLUGIN_OUTPUT_LIMIT)
            if error:
                output = f"{output}\n----------ERROR-------\n{error}"
            plugin: dict[str, Any] = {
                "Name": PLUGIN,
                "Status": inv.shown[0],
                "StatusDetails": inv.shown[1],
                "ResponseCode": inv.response_code,
                "Output": output[:PLUGIN_OUTPUT_LIMIT],
                "StandardOutputUrl": inv.stdout_url,
                "StandardErrorUrl": inv.stderr_url,
                "OutputS3Region": inv.command.s3_region,
                "OutputS3BucketName": inv.command.bucket,
                "OutputS3KeyPrefix": inv.command.prefix,
            }
            if inv.started:
                plugin["ResponseStartDateTime"] = _epoch(inv.started)
            if inv.ended:
                plugin["ResponseFinishDateTime"] = _epoch(inv.ended)
            item["CommandPlugins"] = [plugin]
        return item


_INFO_FILTER_KEYS = frozenset(
    {"InstanceIds", "AgentVersion", "PingStatus", "PlatformTypes", "ActivationIds", "IamRole", "ResourceType"}
    | {"AssociationStatus"}
)


def _send_parameters(body: dict[str, Any]) -> tuple[dict[str, list[str]], int] | Response:
    """SendCommand's document parameters and execution timeout, or SSM's refusal of them."""
    document = str(body.get("DocumentName", ""))
    if document != DOCUMENT and not document.endswith(f":document/{DOCUMENT}"):
        return json_error("InvalidDocument", f"Document {document} does not exist in your account.")
    parameters: dict[str, list[str]] = {k: [str(x) for x in v] for k, v in (body.get("Parameters") or {}).items()}
    if not parameters.get("commands"):
        return json_error("InvalidParameters", "Parameter commands is required by the document.")
    unknown = set(parameters) - {"commands", "executionTimeout", "workingDirectory"}
    if unknown:
        return json_error("InvalidParameters", f"Parameters {sorted(unknown)} are not defined in {DOCUMENT}.")
    try:
        execution_timeout = int((parameters.get("executionTimeout") or [str(DEFAULT_EXECUTION_TIMEOUT)])[0])
    except ValueError:
        execution_timeout = -1
    if not 1 <= execution_timeout <= MAX_EXECUTION_TIMEOUT:
        return json_error("InvalidParameters", "executionTimeout must be an integer from 1 to 172800.")
    return parameters, execution_timeout


def _info_filters(body: dict[str, Any]) -> dict[str, set[str]] | Response:
    """DescribeInstanceInformation's filters (both forms) as key -> values; tag filters are accepted and ignored."""
    wanted: dict[str, set[str]] = {}
    for item in body.get("InstanceInformationFilterList") or []:
        key = str(item.get("key", ""))
        if key not in _INFO_FILTER_KEYS:
            return json_error("InvalidInstanceInformationFilterValue", f"Invalid filter key {key}.")
        wanted.setdefault(key, set()).update(str(v) for v in item.get("valueSet") or [])
    for item in body.get("Filters") or []:
        key = str(item.get("Key", ""))
        if key not in _INFO_FILTER_KEYS and not key.startswith("tag:"):
            return json_error("InvalidFilterKey", f"Invalid filter key {key}.")
        if key.startswith("tag:"):
            continue  # tag filters are accepted and ignored (not modelled)
        wanted.setdefault(key, set()).update(str(v) for v in item.get("Values") or [])
    return wanted


def _paginate(items: list[Any], body: dict[str, Any], *, default: int) -> tuple[list[Any] | Response, str | None]:
    """Offset tokens: opaque enough for clients, and stable while the list only grows at the front."""
    token = body.get("NextToken")
    try:
        start = int(str(token)) if token else 0
    except ValueError:
        return json_error("InvalidNextToken", "The specified token is not valid."), None
    size = int(body.get("MaxResults") or default)
    page = items[start : start + size]
    more = start + size < len(items)
    return page, (str(start + size) if more else None)


def install(sandbox: Sandbox) -> RunCommand:
    run = RunCommand(sandbox, sandbox.runtime)
    sandbox.before("ssm", "SendCommand", run.send_command)
    sandbox.before("ssm", "GetCommandInvocation", run.get_command_invocation)
    sandbox.before("ssm", "ListCommandInvocations", run.list_command_invocations)
    sandbox.before("ssm", "ListCommands", run.list_commands)
    sandbox.before("ssm", "CancelCommand", run.cancel_command)
    sandbox.before("ssm", "DescribeInstanceInformation", run.describe_instance_information)
    sandbox.on_reset(run.reset)
    sandbox.on_stop(run.stop)
    return run
