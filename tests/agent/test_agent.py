"""The on-instance agent against the sandbox: real instances, the agent started over SSM exactly as the flow does.

Each machine test launches a sandbox spot instance, ships `agent/trainctl_agent.py` and `examples/train.py` into
its root (as the train-launch flow's tarball would), and runs `python3 .../trainctl_agent.py run --spec ...`
through SSM; the assertions read S3 (what the flows and spot-watch read) and the instance's job folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from agent import trainctl_agent as ta
from sandbox import Sandbox
from sandbox.runtime import spot_notice

pytestmark = pytest.mark.sandbox

AMI = "ami-12345678"
REPO = Path(__file__).resolve().parents[2]
AGENT_SOURCE = REPO / "agent" / "trainctl_agent.py"
TRAINER_SOURCE = REPO / "examples" / "train.py"
TERMINAL = {"succeeded", "failed", "interrupted", "stopped"}


@pytest.fixture(scope="module")
def cloud() -> Iterator[Sandbox]:
    with Sandbox(boot_delay=0.2) as sandbox:
        yield sandbox


_buckets = iter(range(10_000))


@pytest.fixture
def bucket(cloud: Sandbox) -> str:
    name = f"agent-test-{next(_buckets)}"
    cloud.client("s3").create_bucket(Bucket=name)
    return name


def _epoch(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


@dataclass
class Machine:
    cloud: Sandbox
    instance_id: str

    @property
    def root(self) -> Path:
        return Path(self.cloud.runtime.instance_root(self.instance_id))

    def job_dir(self, job: str) -> Path:
        return self.root / ta.instance_job_dir(job).lstrip("/")

    def ssm(self, command: str, timeout: float = 20) -> tuple[str, int, str, str]:
        ssm = self.cloud.client("ssm")
        sent = ssm.send_command(
            InstanceIds=[self.instance_id], DocumentName="AWS-RunShellScript", Parameters={"commands": [command]}
        )
        command_id = sent["Command"]["CommandId"]
        deadline = time.monotonic() + timeout
        while True:
            time.sleep(0.1)
            try:
                inv = ssm.get_command_invocation(CommandId=command_id, InstanceId=self.instance_id)
            except ssm.exceptions.InvocationDoesNotExist:
                continue
            if inv["Status"] not in ("Pending", "InProgress", "Delayed") or time.monotonic() > deadline:
                return inv["Status"], inv["ResponseCode"], inv["StandardOutputContent"], inv["StandardErrorContent"]

    def agent(self, args: str, timeout: float = 20) -> tuple[str, int, str, str]:
        return self.ssm(f'python3 "$TRAINCTL_ROOT/opt/trainctl/agent/trainctl_agent.py" {args}', timeout)

    def start(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Ship the agent and the code, write the spec, and start the agent over SSM (as the flow does)."""
        agent_dir = self.root / "opt" / "trainctl" / "agent"
        agent_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(AGENT_SOURCE, agent_dir / "trainctl_agent.py")
        code = self.job_dir(spec["job"]) / "code"
        code.mkdir(parents=True, exist_ok=True)
        shutil.copy(TRAINER_SOURCE, code / "train.py")
        name = f"{spec['job']}-{spec['attempt']}.json"
        (self.root / "opt" / "trainctl" / name).write_text(json.dumps(spec))
        status, code_, out, err = self.agent(f'run --spec "$TRAINCTL_ROOT/opt/trainctl/{name}"')
        assert (status, code_) == ("Success", 0), (out, err)
        answer: dict[str, Any] = json.loads(out)
        return answer

    def wait_for_log(self, job: str, text: str, timeout: float = 10) -> None:
        log = self.job_dir(job) / ta.LOG_FILE
        assert self.cloud.wait_for(lambda: log.exists() and text in log.read_text(), timeout=timeout), (
            log.read_text() if log.exists() else "no job.log"
        )


def launch(cloud: Sandbox, **kwargs: Any) -> Machine:
    ec2 = cloud.client("ec2")
    reply = ec2.run_instances(
        ImageId=AMI,
        MinCount=1,
        MaxCount=1,
        InstanceType="g5.xlarge",
        InstanceMarketOptions={"MarketType": "spot"},
        **kwargs,
    )
    instance_id = reply["Instances"][0]["InstanceId"]
    assert cloud.wait_for(lambda: cloud.runtime.is_online(instance_id), timeout=5)
    return Machine(cloud, instance_id)


def spec_for(bucket: str, job: str, attempt: int, args: list[str], **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "job": job,
        "attempt": attempt,
        "bucket": bucket,
        "command": ["python3", "train.py", *args],
        "env": {"PYTHONUNBUFFERED": "1"},
        "sync_interval_s": 1,
        "imds_poll_s": 1,
        # These tests look at the machine after the job; the shutdown at the end has tests of its own.
        "keep_instance": True,
    }
    spec.update(extra)
    return spec


def s3_json(cloud: Sandbox, bucket: str, key: str) -> Any:
    try:
        return json.loads(cloud.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())
    except cloud.client("s3").exceptions.NoSuchKey:
        return None


def key_of(uri: str) -> str:
    return uri.split("/", 3)[3]


def wait_status(cloud: Sandbox, bucket: str, job: str, attempt: int, timeout: float = 20) -> dict[str, Any]:
    key = key_of(ta.status_uri(bucket, job, attempt))
    found: dict[str, Any] = {}

    def done() -> bool:
        doc = s3_json(cloud, bucket, key)
        if doc and doc["status"] in TERMINAL:
            found.update(doc)
            return True
        return False

    assert cloud.wait_for(done, timeout=timeout, interval=0.2), s3_json(cloud, bucket, key)
    return found


def latest_checkpoint(cloud: Sandbox, bucket: str, job: str) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """(seq, manifest, state.json) of the job's LATEST checkpoint, checking every file against the manifest."""
    s3 = cloud.client("s3")
    prefix = key_of(ta.default_checkpoint_uri(bucket, job))
    latest = s3_json(cloud, bucket, prefix + ta.LATEST_NAME)
    assert latest is not None and latest["prefix"] == ta.checkpoint_folder(latest["seq"])
    manifest = s3_json(cloud, bucket, prefix + latest["prefix"] + ta.MANIFEST_NAME)
    assert manifest["seq"] == latest["seq"]
    for entry in manifest["files"]:
        body = s3.get_object(Bucket=bucket, Key=prefix + latest["prefix"] + entry["path"])["Body"].read()
        assert (len(body), hashlib.sha256(body).hexdigest()) == (entry["size"], entry["sha256"])
    state = json.loads(s3.get_object(Bucket=bucket, Key=prefix + latest["prefix"] + "state.json")["Body"].read())
    return int(latest["seq"]), manifest, state


# -- end to end on sandbox instances ------------------------------------------------------------------------------
def test_run_to_completion_then_a_second_attempt_resumes(cloud: Sandbox, bucket: str) -> None:
    machine = launch(cloud)
    started = machine.start(spec_for(bucket, "resnet", 1, ["--steps", "3", "--step-seconds", "0.1"]))
    assert started["job"] == "resnet" and started["agent_pid"] > 0
    status = wait_status(cloud, bucket, "resnet", 1)
    assert (status["status"], status["exit_code"], status["instance_id"]) == ("succeeded", 0, machine.instance_id)
    seq, manifest, state = latest_checkpoint(cloud, bucket, "resnet")
    assert state["step"] == 3 and state["resumed_from_step"] is None
    assert sorted(f["path"] for f in manifest["files"]) == ["state.json", "weights.bin"]
    # Every checkpoint folder is complete: its manifest lists exactly the objects beside it.
    s3 = cloud.client("s3")
    prefix = key_of(ta.default_checkpoint_uri(bucket, "resnet"))
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "ckpt-")["Contents"]]
    for folder in {k[len(prefix) :].split("/")[0] for k in keys}:
        listed = {k.rsplit("/", 1)[1] for k in keys if k.startswith(f"{prefix}{folder}/")}
        folder_manifest = s3_json(cloud, bucket, f"{prefix}{folder}/{ta.MANIFEST_NAME}")
        assert listed == {ta.MANIFEST_NAME, *(f["path"] for f in folder_manifest["files"])}
    log = s3.get_object(Bucket=bucket, Key=key_of(ta.log_uri(bucket, "resnet", 1)))["Body"].read().decode()
    assert "starting from scratch" in log and "step 3/3" in log
    # The local files of the core layout, and `status` over SSM.
    job_dir = machine.job_dir("resnet")
    assert (job_dir / ta.EXIT_CODE_FILE).read_text().strip() == "0"
    assert (job_dir / ta.PID_FILE).exists() and (job_dir / ta.AGENT_PID_FILE).exists()
    assert cloud.wait_for(lambda: not ta.pid_alive(int((job_dir / ta.AGENT_PID_FILE).read_text())), timeout=5)
    result, code, out, _ = machine.agent("status --job resnet")
    assert code == 0
    shown = json.loads(out)
    assert (result, shown["status"], shown["exit_code"], shown["agent_alive"]) == ("Success", "succeeded", 0, False)

    # Attempt 2 on a NEW machine: everything comes back from S3 and the step number continues.
    second = launch(cloud)
    second.start(spec_for(bucket, "resnet", 2, ["--steps", "5", "--step-seconds", "0.1"]))
    status = wait_status(cloud, bucket, "resnet", 2)
    assert (status["status"], status["exit_code"]) == ("succeeded", 0)
    seq2, _, state = latest_checkpoint(cloud, bucket, "resnet")
    assert seq2 > seq and state["step"] == 5 and state["resumed_from_step"] == 3
    log = s3.get_object(Bucket=bucket, Key=key_of(ta.log_uri(bucket, "resnet", 2)))["Body"].read().decode()
    assert "resuming from step 3" in log and "step 4/5" in log and "step 1/5" not in log


def test_spot_notice_sigterms_the_trainer_within_6_s_and_records_a_verified_checkpoint(
    cloud: Sandbox, bucket: str
) -> None:
    machine = launch(cloud)
    # The default IMDS poll (5 s) and margin: the latency asserted is the one a real run gets.
    spec = spec_for(bucket, "bert", 1, ["--steps", "10000", "--step-seconds", "0.1"], imds_poll_s=2, margin_s=20)
    machine.start(spec)
    machine.wait_for_log("bert", "step 3/")
    noticed = time.time()
    cloud.runtime.set_spot_action(machine.instance_id, spot_notice(120))
    key = key_of(ta.interruption_uri(bucket, "bert", machine.instance_id))
    assert cloud.wait_for(lambda: s3_json(cloud, bucket, key) is not None, timeout=15, interval=0.2)
    record = s3_json(cloud, bucket, key)
    sigterm_latency = _epoch(record["sigterm_sent_at"]) - noticed
    seq, _, state = latest_checkpoint(cloud, bucket, "bert")
    received_latency = state["sigterm_received_at"] - noticed
    print(f"SIGTERM sent {sigterm_latency:.2f} s, received by the trainer {received_latency:.2f} s after the notice")
    assert 0 <= sigterm_latency < 6 and 0 <= received_latency < 6
    assert record["verified"] is True, record
    assert record["instance_id"] == machine.instance_id and record["attempt"] == 1
    assert record["action"] == "terminate" and record["exit_code"] == 143 and record["sigkill_sent_at"] is None
    assert record["checkpoint_seq"] == seq
    assert (
        _epoch(record["sigterm_sent_at"]) <= _epoch(record["job_exited_at"]) <= _epoch(record["checkpoint_uploaded_at"])
    )
    assert state["step"] >= 3
    status = wait_status(cloud, bucket, "bert", 1)
    assert (status["status"], status["exit_code"]) == ("interrupted", 143)
    assert (machine.job_dir("bert") / ta.EXIT_CODE_FILE).read_text().strip() == "143"


def test_interrupt_spot_end_to_end_record_before_termination(cloud: Sandbox, bucket: str) -> None:
    machine = launch(cloud)
    spec = spec_for(bucket, "gpt", 1, ["--steps", "10000", "--step-seconds", "0.1"], margin_s=2)
    machine.start(spec)
    machine.wait_for_log("gpt", "step 2/")
    asked = time.time()
    delay = 5.0
    cloud.interrupt_spot(machine.instance_id, delay_seconds=delay)
    ec2 = cloud.client("ec2")

    def state() -> str:
        described = ec2.describe_instances(InstanceIds=[machine.instance_id])
        return str(described["Reservations"][0]["Instances"][0]["State"]["Name"])

    assert cloud.wait_for(lambda: state() == "terminated", timeout=15, interval=0.2)
    record = s3_json(cloud, bucket, key_of(ta.interruption_uri(bucket, "gpt", machine.instance_id)))
    assert record is not None and record["verified"] is True, record
    # Written before the machine went away (termination is scheduled `delay` after the call).
    assert _epoch(record["recorded_at"]) < asked + delay
    assert _epoch(record["sigterm_sent_at"]) - asked < 2.5  # 1 s poll in this spec
    _, _, ckpt_state = latest_checkpoint(cloud, bucket, "gpt")
    assert ckpt_state["sigterm_received_at"] is not None
    assert wait_status(cloud, bucket, "gpt", 1)["status"] == "interrupted"


def test_exit_code_3_is_a_failed_status(cloud: Sandbox, bucket: str) -> None:
    machine = launch(cloud)
    machine.start(
        spec_for(bucket, "bad", 1, ["--steps", "5", "--step-seconds", "0.05", "--fail-with", "3", "--fail-at", "2"])
    )
    status = wait_status(cloud, bucket, "bad", 1)
    assert (status["status"], status["exit_code"]) == ("failed", 3)
    assert "exit code 3" in status["reason"]
    assert (machine.job_dir("bad") / ta.EXIT_CODE_FILE).read_text().strip() == "3"
    _, _, state = latest_checkpoint(cloud, bucket, "bad")
    assert state["step"] == 1  # the checkpoint written before the failure is kept


def test_shell_metacharacters_run_as_a_literal_argv(cloud: Sandbox, bucket: str) -> None:
    machine = launch(cloud)
    nasty = ["; rm -rf /", "$(touch pwned)", "`touch pwned2`", 'it\'s "quoted"', "line1\nline2", "*", "a b", "\\"]
    script = "import json, sys; json.dump(sys.argv[1:], open('argv.json', 'w'))"
    spec = spec_for(bucket, "meta", 1, [])
    spec["command"] = ["python3", "-c", script, *nasty]
    machine.start(spec)
    assert wait_status(cloud, bucket, "meta", 1)["status"] == "succeeded"
    code = machine.job_dir("meta") / "code"
    assert json.loads((code / "argv.json").read_text()) == nasty
    assert not [p for p in machine.root.rglob("pwned*")]


def test_stop_flushes_a_checkpoint_and_a_second_agent_is_refused(cloud: Sandbox, bucket: str) -> None:
    machine = launch(cloud)
    spec = spec_for(bucket, "long", 1, ["--steps", "10000", "--step-seconds", "0.1"], sync_interval_s=300)
    machine.start(spec)
    machine.wait_for_log("long", "step 2/")
    # The same job cannot get a second agent while one runs.
    result, code, _, err = machine.agent('run --spec "$TRAINCTL_ROOT/opt/trainctl/long-1.json"')
    assert (result, code) == ("Failed", 1) and "already running" in err
    result, code, out, err = machine.agent("stop --job long --grace 5")
    assert (result, code) == ("Success", 0), err
    shown = json.loads(out)
    assert (shown["status"], shown["exit_code"], shown["agent_alive"], shown["trainer_alive"]) == (
        "stopped",
        143,
        False,
        False,
    )
    status = wait_status(cloud, bucket, "long", 1)
    assert status["status"] == "stopped"
    _, _, state = latest_checkpoint(cloud, bucket, "long")
    assert state["step"] >= 2 and state["sigterm_received_at"] is not None


def test_rebalance_recommendation_uploads_a_checkpoint_early(cloud: Sandbox, bucket: str) -> None:
    machine = launch(cloud)
    spec = spec_for(bucket, "rebal", 1, ["--steps", "10000", "--step-seconds", "0.1"], sync_interval_s=300)
    machine.start(spec)
    machine.wait_for_log("rebal", "step 2/")
    latest = key_of(ta.default_checkpoint_uri(bucket, "rebal")) + ta.LATEST_NAME
    assert s3_json(cloud, bucket, latest) is None  # the interval is 5 minutes: nothing yet
    cloud.recommend_rebalance(machine.instance_id)
    assert cloud.wait_for(lambda: s3_json(cloud, bucket, latest) is not None, timeout=5, interval=0.2)
    assert "rebalance recommendation" in (machine.job_dir("rebal") / ta.AGENT_LOG_FILE).read_text()
    machine.agent("stop --job rebal --grace 2")


def test_heartbeat_rewrites_the_status_between_syncs(cloud: Sandbox, bucket: str) -> None:
    """Teardown's sweep reads the status object's age as the agent's heartbeat: it must not wait for a sync."""
    machine = launch(cloud)
    spec = spec_for(bucket, "beat", 1, ["--steps", "10000", "--step-seconds", "0.1"], sync_interval_s=300)
    machine.start({**spec, "heartbeat_s": 0.3})
    machine.wait_for_log("beat", "step 2/")
    key = key_of(ta.status_uri(bucket, "beat", 1))
    first = s3_json(cloud, bucket, key)
    assert first is not None and first["status"] == "running"

    def beaten() -> bool:
        doc = s3_json(cloud, bucket, key)
        return bool(doc and doc["status"] == "running" and doc["updated_at"] != first["updated_at"])

    assert cloud.wait_for(beaten, timeout=10, interval=0.2)
    latest = key_of(ta.default_checkpoint_uri(bucket, "beat")) + ta.LATEST_NAME
    assert s3_json(cloud, bucket, latest) is None  # no sync happened: the status was rewritten on its own
    machine.agent("stop --job beat --grace 2")


def instance_state(cloud: Sandbox, instance_id: str) -> str:
    data = cloud.client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return str(data["State"]["Name"])


def test_a_job_that_ends_shuts_its_instance_down_after_its_checkpoint_log_and_status(
    cloud: Sandbox, bucket: str
) -> None:
    machine = launch(cloud, InstanceInitiatedShutdownBehavior="terminate")
    machine.start(spec_for(bucket, "ends", 1, ["--steps", "3", "--step-seconds", "0.1"], keep_instance=False))
    status = wait_status(cloud, bucket, "ends", 1)
    assert (status["status"], status["exit_code"], status["instance_action"]) == ("succeeded", 0, "shutdown")
    assert cloud.wait_for(lambda: instance_state(cloud, machine.instance_id) == "terminated", timeout=15)
    _, _, state = latest_checkpoint(cloud, bucket, "ends")
    assert state["step"] == 3  # the final checkpoint got out first
    log = cloud.client("s3").get_object(Bucket=bucket, Key=key_of(ta.log_uri(bucket, "ends", 1)))["Body"].read()
    assert b"step 3/3" in log and b"the job ended (succeeded): shutting the instance down" in log


def test_a_stopped_job_ends_its_instance_unless_the_stop_keeps_it(cloud: Sandbox, bucket: str) -> None:
    kept = launch(cloud, InstanceInitiatedShutdownBehavior="terminate")
    ended = launch(cloud, InstanceInitiatedShutdownBehavior="terminate")
    args = ["--steps", "10000", "--step-seconds", "0.1"]
    for machine, job in ((kept, "stop-kept"), (ended, "stop-ended")):
        machine.start(spec_for(bucket, job, 1, args, keep_instance=False))
        machine.wait_for_log(job, "step 2/")
    result, code, out, err = kept.agent("stop --job stop-kept --grace 2 --keep-instance")
    assert (result, code, json.loads(out)["status"]) == ("Success", 0, "stopped"), err
    ended.agent("stop --job stop-ended --grace 2")  # its answer may be lost: the instance goes down under it
    status = wait_status(cloud, bucket, "stop-ended", 1)
    assert (status["status"], status["instance_action"]) == ("stopped", "shutdown")
    assert cloud.wait_for(lambda: instance_state(cloud, ended.instance_id) == "terminated", timeout=15)
    _, _, state = latest_checkpoint(cloud, bucket, "stop-ended")
    assert state["sigterm_received_at"] is not None  # the stop's checkpoint got out before the shutdown
    status = wait_status(cloud, bucket, "stop-kept", 1)
    assert (status["status"], status["instance_action"]) == ("stopped", "keep")
    assert instance_state(cloud, kept.instance_id) == "running"


def test_a_failed_final_checkpoint_upload_keeps_the_instance(cloud: Sandbox, bucket: str) -> None:
    """The checkpoint then exists only on the instance's disk: a shutdown (terminate) would lose it."""
    cloud.client("s3").create_bucket(Bucket="agent-ckpt-gone")
    machine = launch(cloud, InstanceInitiatedShutdownBehavior="terminate")
    spec = spec_for(
        bucket,
        "orphan",
        1,
        ["--steps", "6", "--step-seconds", "0.3"],
        keep_instance=False,
        sync_interval_s=300,  # no upload before the final one
        checkpoint_uri="s3://agent-ckpt-gone/orphan/",
    )
    machine.start(spec)
    machine.wait_for_log("orphan", "step 1/")
    cloud.client("s3").delete_bucket(Bucket="agent-ckpt-gone")  # empty: nothing uploaded yet
    status = wait_status(cloud, bucket, "orphan", 1)
    assert (status["status"], status["instance_action"]) == ("succeeded", "keep")
    assert "final checkpoint upload failed" in status["instance_action_reason"]
    job_dir = machine.job_dir("orphan")
    assert cloud.wait_for(lambda: not ta.pid_alive(int((job_dir / ta.AGENT_PID_FILE).read_text())), timeout=10)
    assert "shutting down" not in (job_dir / ta.AGENT_LOG_FILE).read_text()
    assert instance_state(cloud, machine.instance_id) == "running"
    assert json.loads((job_dir / "checkpoints" / "state.json").read_text())["step"] == 6  # still on its disk


def test_the_shutdown_decision(tmp_path: Path) -> None:
    assert ta.keep_instance_reason(keep_instance=False, upload_error=None) is None
    assert "keep_instance" in (ta.keep_instance_reason(keep_instance=True, upload_error=None) or "")
    for keep in (False, True):
        reason = ta.keep_instance_reason(keep_instance=keep, upload_error="the final checkpoint upload failed (x)")
        assert reason is not None and "only copy" in reason
    # Every shutdown command failing keeps the instance, and the status says why.
    spec = ta.AgentSpec.from_dict({"job": "j", "attempt": 1, "bucket": "b", "command": ["true"]})
    agent = ta.Agent(spec, s3=ta.S3Client(endpoint_url="http://127.0.0.1:9", attempts=1), job_dir=tmp_path)
    agent.shutdown_commands = (("false",), ("no-such-shutdown-command-here",))
    assert agent.shut_down() is False
    assert agent.instance_action == "keep" and "false: exit code 1" in agent.instance_action_reason
    assert "no-such-shutdown-command-here" in agent.instance_action_reason
    # The decision is in the job log.
    assert "kept: the shutdown failed" in (tmp_path / ta.LOG_FILE).read_text()


# -- the S3 client, IMDS and checkpoints in-process against the sandbox --------------------------------------------
def client(cloud: Sandbox, **kwargs: Any) -> ta.S3Client:
    creds = ta.CredentialProvider(static=ta.Credentials("sandbox-access-key", "sandbox-secret-key"))
    return ta.S3Client(endpoint_url=cloud.endpoint_url, region=cloud.region, credentials=creds, **kwargs)


def test_s3_client_put_get_head_list_with_unicode_keys(cloud: Sandbox, bucket: str) -> None:
    s3 = client(cloud)
    keys = ["données/ünï cødé+1.txt", "日本語/キー.bin", "a b/c%20d?e=f&g", "plain/x.json", "tilde~/semi;colon"]
    for i, key in enumerate(keys):
        s3.put_object(bucket, key, f"body {i}".encode())
    for i, key in enumerate(keys):
        assert s3.get_object(bucket, key) == f"body {i}".encode()
        head = s3.head_object(bucket, key)
        # The ETag, not the size: the sandbox's middleware answers HEAD with Content-Length 0 (boto3 sees 0 too).
        assert head is not None and head.etag.strip('"') == hashlib.md5(f"body {i}".encode()).hexdigest()  # noqa: S324
    assert s3.head_object(bucket, "missing") is None
    assert s3.get_json(bucket, "missing") is None
    # boto3 sees the same keys (the encoding round-trips).
    boto_keys = {o["Key"] for o in cloud.client("s3").list_objects_v2(Bucket=bucket)["Contents"]}
    assert boto_keys == set(keys)
    listed = list(s3.list_objects(bucket, "", page_size=2))  # three pages
    assert sorted(o.key for o in listed) == sorted(keys)
    assert [o.key for o in s3.list_objects(bucket, "日本語/")] == ["日本語/キー.bin"]
    assert sorted(s3.list_prefixes(bucket, "")) == sorted({k.split("/")[0] + "/" for k in keys})


def test_s3_client_multipart_upload(cloud: Sandbox, bucket: str, tmp_path: Path) -> None:
    s3 = client(cloud, part_size=5 * ta.MiB, multipart_threshold=5 * ta.MiB)
    data = os.urandom(12 * ta.MiB + 123)
    source = tmp_path / "big file.bin"
    source.write_bytes(data)
    calls: list[dict[str, str]] = []
    original = s3._request

    def recording(method: str, bucket_: str, key: str = "", **kwargs: Any) -> Any:
        calls.append({"method": method, **(kwargs.get("query") or {})})
        return original(method, bucket_, key, **kwargs)

    s3._request = recording  # type: ignore[method-assign,assignment]
    size, sha = s3.put_file(bucket, "ckpt/big file.bin", source)
    assert (size, sha) == (len(data), hashlib.sha256(data).hexdigest())
    assert sum(1 for c in calls if "partNumber" in c) == 3
    assert calls[0] == {"method": "POST", "uploads": ""} and "uploadId" in calls[-1]
    head = s3.head_object(bucket, "ckpt/big file.bin")
    assert head is not None and head.etag.strip('"').endswith("-3")  # a 3-part object
    assert [o.size for o in s3.list_objects(bucket, "ckpt/")] == [len(data)]
    target = tmp_path / "back.bin"
    assert s3.download_file(bucket, "ckpt/big file.bin", target) == (len(data), hashlib.sha256(data).hexdigest())
    assert target.read_bytes() == data


def test_s3_client_retries_throttling(cloud: Sandbox, bucket: str) -> None:
    # Half of all calls throttled: with 8 attempts a request gave up 1 time in 256 (~3% a run: a flaky CI);
    # with 16, 1 in 65,536. The backoff is short so the many retries cost little.
    s3 = client(cloud, attempts=16, backoff=0.001)
    cloud.throttle(0.5, ["s3"])
    try:
        for i in range(6):
            s3.put_object(bucket, f"t/{i}", b"x")
        assert len(list(s3.list_objects(bucket, "t/"))) == 6
    finally:
        cloud.throttle(0.0)


def test_sigv4_matches_the_aws_documented_example() -> None:
    # AWS's S3 SigV4 example "GET Object" (examplebucket/test.txt, Range bytes=0-9, 2013-05-24).
    creds = ta.Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    auth = ta.sigv4_authorization(
        method="GET",
        canonical_uri="/test.txt",
        query={},
        headers={
            "host": "examplebucket.s3.amazonaws.com",
            "range": "bytes=0-9",
            "x-amz-content-sha256": ta.EMPTY_SHA256,
            "x-amz-date": "20130524T000000Z",
        },
        payload_sha256=ta.EMPTY_SHA256,
        credentials=creds,
        region="us-east-1",
        service="s3",
        amz_date="20130524T000000Z",
    )
    assert auth.endswith("Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
    assert "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date" in auth


def test_sigv4_matches_botocore_for_unicode_keys_queries_and_session_tokens() -> None:
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    creds = ta.Credentials("AKIDEXAMPLE", "secret/key+x", "session-token")
    s3 = ta.S3Client(region="eu-west-1", credentials=ta.CredentialProvider(static=creds))
    cases: tuple[tuple[str, dict[str, str]], ...] = (
        ("données/ü cødé+1.txt", {}),
        ("a b/日本~x;y", {"partNumber": "2", "uploadId": "x/y+z= w"}),
    )
    for key, query in cases:
        origin, host, path = s3._target("my-bucket", key)
        assert host == "my-bucket.s3.eu-west-1.amazonaws.com"
        url = origin + path + ("?" + ta.canonical_query(query) if query else "")
        body = b"payload"
        sha = hashlib.sha256(body).hexdigest()
        headers = {"x-amz-content-sha256": sha, "content-type": "application/octet-stream"}
        request = AWSRequest(method="PUT", url=url, data=body, headers=headers)
        S3SigV4Auth(Credentials("AKIDEXAMPLE", "secret/key+x", "session-token"), "s3", "eu-west-1").add_auth(request)
        amz_date = request.headers["X-Amz-Date"]  # botocore signs at the current time: sign ours at the same one
        ours = ta.sigv4_authorization(
            method="PUT",
            canonical_uri=path,
            query=query,
            headers={**headers, "host": host, "x-amz-date": amz_date, "x-amz-security-token": "session-token"},
            payload_sha256=sha,
            credentials=creds,
            region="eu-west-1",
            service="s3",
            amz_date=amz_date,
        )
        assert ours == request.headers["Authorization"], key


def test_imds_v2_through_the_sandbox_endpoint(cloud: Sandbox) -> None:
    machine = launch(cloud)
    endpoint = cloud.runtime.imds_endpoint(machine.instance_id)
    for variant in (endpoint, endpoint.rstrip("/")):  # with or without the trailing slash
        imds = ta.Imds(variant)
        assert imds.get("meta-data/instance-id") == machine.instance_id
        assert imds.get("meta-data/spot/instance-action") is None
    cloud.runtime.set_spot_action(machine.instance_id, {"action": "stop", "time": "2030-01-02T03:04:05Z"})
    action = ta.Imds(endpoint).get("/meta-data/spot/instance-action")
    assert action is not None and json.loads(action)["action"] == "stop"
    assert ta.parse_time("2030-01-02T03:04:05Z") == datetime.fromisoformat("2030-01-02T03:04:05+00:00").timestamp()


def test_checkpoint_upload_order_and_restore_falls_back_past_a_corrupt_checkpoint(
    cloud: Sandbox, bucket: str, tmp_path: Path
) -> None:
    s3 = client(cloud)
    puts: list[str] = []
    original = s3.put_object

    def recording(bucket_: str, key: str, data: bytes, **kwargs: Any) -> str:
        puts.append(key)
        return original(bucket_, key, data, **kwargs)

    s3.put_object = recording  # type: ignore[method-assign,assignment]
    spec = ta.AgentSpec.from_dict({"job": "order", "attempt": 1, "bucket": bucket, "command": ["true"]})
    folder = tmp_path / "ckpt"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.pt").write_bytes(b"m1")
    (folder / "sub" / "opt.pt").write_bytes(b"o1")
    (folder / "half.tmp").write_bytes(b"in flight")  # a trainer's temp file is not part of a checkpoint
    ckpt = ta.Checkpoints(s3, spec, folder, "i-test")
    assert ckpt.restore() == ""
    assert ckpt.upload() == 1
    prefix = "trainctl/jobs/order/checkpoints/"
    assert puts == [
        f"{prefix}ckpt-000001/model.pt",
        f"{prefix}ckpt-000001/sub/opt.pt",
        f"{prefix}ckpt-000001/MANIFEST.json",
        f"{prefix}LATEST.json",
    ]
    assert ckpt.upload() is None  # unchanged: nothing new
    (folder / "model.pt").write_bytes(b"m2")
    assert ckpt.upload() == 2 and ckpt.verify(2) == (True, "2 files verified")
    # Corrupt checkpoint 2 behind the agent's back: restore rejects it (sha256) and falls back to 1.
    cloud.client("s3").put_object(Bucket=bucket, Key=f"{prefix}ckpt-000002/model.pt", Body=b"XX")
    fresh = ta.Checkpoints(client(cloud), spec, tmp_path / "restored", "i-test2")
    assert fresh.restore() == str(tmp_path / "restored")
    assert (tmp_path / "restored" / "model.pt").read_bytes() == b"m1"
    assert fresh.last_seq == 1 and fresh.next_seq == 3  # a new upload never reuses folder 2


def test_spec_validation() -> None:
    good = {"job": "j", "attempt": 1, "bucket": "b", "command": ["python3", "x.py"]}
    spec = ta.AgentSpec.from_dict(good)
    assert spec.workdir == "/var/lib/trainctl/jobs/j/code"
    assert spec.checkpoint_dir == "/var/lib/trainctl/jobs/j/checkpoints"
    assert spec.checkpoint_uri == "s3://b/trainctl/jobs/j/checkpoints/"
    assert (spec.sync_interval_s, spec.imds_poll_s, spec.margin_s, spec.max_runtime_s) == (300, 2, 20, None)
    assert spec.heartbeat_s == 60 and spec.keep_instance is False
    assert ta.AgentSpec.from_dict({**good, "keep_instance": True}).keep_instance is True
    assert ta.AgentSpec.from_dict({**good, "secret_env": {"DB": "ssm:/db"}}).secret_env == {"DB": "ssm:/db"}
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
        with pytest.raises(ta.SpecError):
            ta.AgentSpec.from_dict(bad)
    assert ta.on_instance("/var/lib/x", "/tmp/root") == Path("/tmp/root/var/lib/x")
    assert ta.on_instance("/tmp/root/var/lib/x", "/tmp/root") == Path("/tmp/root/var/lib/x")
    assert ta.on_instance("/var/lib/x", "") == Path("/var/lib/x")


def test_role_credentials_from_imds_are_cached_and_refreshed_before_expiration(monkeypatch: pytest.MonkeyPatch) -> None:
    """On AWS the instance has no keys in its environment: the agent reads the instance profile's (IMDSv2)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    issued: list[str] = []
    expiration = ["2099-01-01T00:00:00Z"]

    class FakeImds(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            return None

        def do_PUT(self) -> None:
            ok = self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
            self._answer(200 if ok else 400, "tok")

        def do_GET(self) -> None:
            if self.headers.get("X-aws-ec2-metadata-token") != "tok":
                return self._answer(401, "")
            base = "/latest/meta-data/iam/security-credentials/"
            if self.path == base:
                return self._answer(200, "train-role")
            if self.path == base + "train-role":
                issued.append(self.path)
                doc = {
                    "Code": "Success",
                    "AccessKeyId": f"ASIA{len(issued)}",
                    "SecretAccessKey": "s",
                    "Token": "t",
                    "Expiration": expiration[0],
                }
                return self._answer(200, json.dumps(doc))
            return self._answer(404, "")

        def _answer(self, status: int, body: str) -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeImds)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
        provider = ta.CredentialProvider(ta.Imds(f"http://127.0.0.1:{server.server_port}"))
        first = provider.get()
        assert (first.access_key, first.token) == ("ASIA1", "t") and provider.get().access_key == "ASIA1"
        assert len(issued) == 1  # cached while far from its expiration
        expiration[0] = "2000-01-01T00:00:00Z"  # the next document expires at once: refreshed on every use
        provider.invalidate()
        assert provider.get().access_key == "ASIA2" and provider.get().access_key == "ASIA3"
    finally:
        server.shutdown()


# -- secrets by reference -----------------------------------------------------------------------------------------
SANDBOX_CREDENTIALS = ta.CredentialProvider(static=ta.Credentials("sandbox-access-key", "sandbox-secret-key"))


def test_secret_references_resolve_from_ssm_and_secrets_manager(cloud: Sandbox) -> None:
    cloud.client("ssm").put_parameter(Name="/agent-test/db/password", Value="pw-from-ssm", Type="SecureString")
    sm = cloud.client("secretsmanager")
    arn = sm.create_secret(Name="agent-test/api", SecretString=json.dumps({"token": "tok-from-sm", "port": 5432}))
    sm.create_secret(Name="agent-test/plain", SecretString="plain-from-sm")
    parameter_arn = f"arn:aws:ssm:{cloud.region}:123456789012:parameter/agent-test/db/password"
    refs = {
        "DB_PASSWORD": "ssm:/agent-test/db/password",  # SecureString, read with decryption
        "DB_PASSWORD_BY_ARN": f"ssm:{parameter_arn}",
        "API_TOKEN": "secretsmanager:agent-test/api#token",
        "API_PORT": f"secretsmanager:{arn['ARN']}#port",
        "PLAIN": "secretsmanager:agent-test/plain",
    }
    values = ta.resolve_secrets(
        refs, region=cloud.region, credentials=SANDBOX_CREDENTIALS, endpoint_url=cloud.endpoint_url
    )
    assert values == {
        "DB_PASSWORD": "pw-from-ssm",
        "DB_PASSWORD_BY_ARN": "pw-from-ssm",
        "API_TOKEN": "tok-from-sm",
        "API_PORT": "5432",
        "PLAIN": "plain-from-sm",
    }


def test_unreadable_secrets_are_named_by_reference_never_by_value(cloud: Sandbox) -> None:
    sm = cloud.client("secretsmanager")
    sm.create_secret(Name="agent-test/json", SecretString=json.dumps({"user": "admin", "password": "leak-1"}))
    sm.create_secret(Name="agent-test/text", SecretString="leak-2")
    refs = {
        "A": "ssm:/agent-test/missing",
        "B": "secretsmanager:agent-test/missing",
        "C": "secretsmanager:agent-test/json#nokey",
        "D": "secretsmanager:agent-test/text#password",
    }
    with pytest.raises(ta.SecretError) as err:
        ta.resolve_secrets(refs, region=cloud.region, credentials=SANDBOX_CREDENTIALS, endpoint_url=cloud.endpoint_url)
    message = str(err.value)
    assert "A (ssm:/agent-test/missing): ParameterNotFound: Parameter /agent-test/missing not found" in message
    assert "B (secretsmanager:agent-test/missing): ResourceNotFoundException" in message
    assert f"check the name and the region ({cloud.region})" in message
    assert "C (secretsmanager:agent-test/json#nokey): the secret's JSON object has no key 'nokey'" in message
    assert "D (secretsmanager:agent-test/text#password): the secret is not a JSON object" in message
    assert "leak-" not in message and "admin" not in message


def test_access_denied_says_which_permission_and_requests_are_signed_as_botocore_signs_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """AWS itself, stood in for by a server that refuses (moto does not enforce IAM): the message names the
    reference and the permission the instance profile lacks; the request is the one botocore would send."""
    import threading
    from datetime import UTC
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import botocore.auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    seen: list[tuple[dict[str, str], bytes]] = []

    class DenyingAws(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            return None

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(({k.lower(): v for k, v in self.headers.items()}, body))
            answer = json.dumps({"__type": "AccessDeniedException", "Message": "User: role/train is not authorized"})
            data = answer.encode()
            self.send_response(400)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), DenyingAws)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_port}"
    creds = ta.CredentialProvider(static=ta.Credentials("AKIDEXAMPLE", "secret/key+x", "session-token"))
    try:
        with pytest.raises(ta.SecretError) as err:
            refs = {"DB_PASSWORD": "ssm:/db/password", "API_TOKEN": "secretsmanager:prod/api#token"}
            ta.resolve_secrets(refs, region="eu-west-1", credentials=creds, endpoint_url=endpoint)
    finally:
        server.shutdown()
    message = str(err.value)
    assert "DB_PASSWORD (ssm:/db/password): AccessDeniedException: User: role/train is not authorized" in message
    assert "the instance profile needs ssm:GetParameter (+ kms:Decrypt) on it" in message
    assert "API_TOKEN (secretsmanager:prod/api#token): AccessDeniedException" in message
    assert "the instance profile needs secretsmanager:GetSecretValue on it" in message
    by_target = {headers["x-amz-target"]: (headers, body) for headers, body in seen}
    assert json.loads(by_target["AmazonSSM.GetParameter"][1]) == {"Name": "/db/password", "WithDecryption": True}
    assert json.loads(by_target["secretsmanager.GetSecretValue"][1]) == {"SecretId": "prod/api"}
    for (service, target), (headers, body) in zip(
        (("ssm", "AmazonSSM.GetParameter"), ("secretsmanager", "secretsmanager.GetSecretValue")),
        (by_target["AmazonSSM.GetParameter"], by_target["secretsmanager.GetSecretValue"]),
        strict=True,
    ):
        signed_at = datetime.strptime(headers["x-amz-date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda at=signed_at: at)
        request = AWSRequest(
            method="POST",
            url=endpoint + "/",
            data=body,
            headers={"X-Amz-Target": target, "Content-Type": "application/x-amz-json-1.1"},
        )
        botocore.auth.SigV4Auth(
            Credentials("AKIDEXAMPLE", "secret/key+x", "session-token"), service, "eu-west-1"
        ).add_auth(request)
        assert headers["authorization"] == request.headers["Authorization"], service


def test_a_secret_that_cannot_be_read_fails_the_attempt_before_the_trainer_runs(cloud: Sandbox, bucket: str) -> None:
    machine = launch(cloud)
    spec = spec_for(bucket, "nosecret", 1, ["--steps", "2"], secret_env={"DB_PASSWORD": "ssm:/agent-test/absent"})
    machine.start(spec)
    status = wait_status(cloud, bucket, "nosecret", 1)
    assert (status["status"], status["exit_code"]) == ("failed", 126)
    assert "DB_PASSWORD (ssm:/agent-test/absent): ParameterNotFound" in status["reason"]
    job_dir = machine.job_dir("nosecret")
    assert not (job_dir / ta.PID_FILE).exists()  # the trainer never started
    assert (job_dir / ta.EXIT_CODE_FILE).read_text().strip() == "126"
    log = cloud.client("s3").get_object(Bucket=bucket, Key=key_of(ta.log_uri(bucket, "nosecret", 1)))["Body"].read()
    assert b"ssm:/agent-test/absent" in log and b"ParameterNotFound" in log


def test_a_prefetched_checkpoint_is_not_downloaded_again_at_the_start_unless_it_changed(
    cloud: Sandbox, bucket: str, tmp_path: Path
) -> None:
    """The replacement of an interrupted attempt prefetches the checkpoint while the old instance serves its notice;
    the restore at the trainer's start then downloads only what is not there as prefetched."""
    spec = ta.AgentSpec.from_dict({"job": "prefetch", "attempt": 1, "bucket": bucket, "command": ["true"]})
    source = tmp_path / "source"
    source.mkdir()
    (source / "model.pt").write_bytes(b"m" * 1000)
    (source / "opt.pt").write_bytes(b"o" * 1000)
    assert ta.Checkpoints(client(cloud), spec, source, "i-old").upload() == 1

    s3 = client(cloud)
    downloads: list[str] = []
    original = s3.download_file

    def recording(bucket_: str, key: str, target: Path) -> tuple[int, str]:
        downloads.append(key.rsplit("/", 1)[-1])
        return original(bucket_, key, target)

    s3.download_file = recording  # type: ignore[method-assign,assignment]
    folder = tmp_path / "new" / "checkpoints"
    assert ta.Checkpoints(s3, spec, folder, "i-new").restore(prefetch=True) == str(folder)
    assert sorted(downloads) == ["model.pt", "opt.pt"]
    marker = folder.parent / ".checkpoints.trainctl-prefetched.json"
    assert marker.exists()

    downloads.clear()
    (folder / "opt.pt").write_bytes(b"x" * 1000)  # changed on the instance since the prefetch: fetched again
    at_start = ta.Checkpoints(s3, spec, folder, "i-new")
    assert at_start.restore() == str(folder) and at_start.last_seq == 1
    assert downloads == ["opt.pt"]
    assert (folder / "opt.pt").read_bytes() == b"o" * 1000 and (folder / "model.pt").read_bytes() == b"m" * 1000
    assert not marker.exists()  # used once
