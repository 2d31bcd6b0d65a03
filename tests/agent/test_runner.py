"""The agent's job runner (agent/runner.py) and command line (agent/cli.py) against the sandbox: real instances,
the agent started over SSM exactly as the flow does.

Each machine test launches a sandbox spot instance, ships the agent package (package_agent's files) and
`examples/train.py` into its root (as the train-launch flow's tarballs would), and runs
`python3 .../agent/trainctl_agent.py run --spec ...` through SSM; the assertions read S3 (what the flows and
spot-watch read) and the instance's job folder.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from agent.checkpoints import Checkpoints
from agent.host import pid_alive
from agent.layout import (
    AGENT_LOG_FILE,
    AGENT_PID_FILE,
    EXIT_CODE_FILE,
    LATEST_NAME,
    LOG_FILE,
    MANIFEST_NAME,
    PID_FILE,
    PROGRESS_FILE,
    checkpoint_folder,
    default_checkpoint_uri,
    instance_job_dir,
    interruption_uri,
    log_uri,
    status_uri,
)
from agent.runner import Agent, keep_instance_reason
from agent.s3 import S3Client
from agent.spec import AgentSpec
from core.jobs import AgentStatus
from sandbox import Sandbox
from sandbox.runtime import spot_notice
from tests.agent.conftest import client
from tests.conftest import ship_agent

pytestmark = pytest.mark.sandbox

AMI = "ami-12345678"
REPO = Path(__file__).resolve().parents[2]
TRAINER_SOURCE = REPO / "examples" / "train.py"
TERMINAL = {"succeeded", "failed", "interrupted", "stopped"}


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
        return self.root / instance_job_dir(job).lstrip("/")

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
        ship_agent(self.root / "opt" / "trainctl")
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
        log = self.job_dir(job) / LOG_FILE
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
    key = key_of(status_uri(bucket, job, attempt))
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
    prefix = key_of(default_checkpoint_uri(bucket, job))
    latest = s3_json(cloud, bucket, prefix + LATEST_NAME)
    assert latest is not None and latest["prefix"] == checkpoint_folder(latest["seq"])
    manifest = s3_json(cloud, bucket, prefix + latest["prefix"] + MANIFEST_NAME)
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
    assert status["step"] == 3  # the trainer's last step, from the file TRAINCTL_PROGRESS_FILE named
    seq, manifest, state = latest_checkpoint(cloud, bucket, "resnet")
    assert state["step"] == 3 and state["resumed_from_step"] is None
    assert sorted(f["path"] for f in manifest["files"]) == ["state.json", "weights.bin"]
    # Every checkpoint folder is complete: its manifest lists exactly the objects beside it.
    s3 = cloud.client("s3")
    prefix = key_of(default_checkpoint_uri(bucket, "resnet"))
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "ckpt-")["Contents"]]
    for folder in {k[len(prefix) :].split("/")[0] for k in keys}:
        listed = {k.rsplit("/", 1)[1] for k in keys if k.startswith(f"{prefix}{folder}/")}
        folder_manifest = s3_json(cloud, bucket, f"{prefix}{folder}/{MANIFEST_NAME}")
        assert listed == {MANIFEST_NAME, *(f["path"] for f in folder_manifest["files"])}
    log = s3.get_object(Bucket=bucket, Key=key_of(log_uri(bucket, "resnet", 1)))["Body"].read().decode()
    assert "starting from scratch" in log and "step 3/3" in log
    # The local files of the core layout, and `status` over SSM.
    job_dir = machine.job_dir("resnet")
    assert (job_dir / EXIT_CODE_FILE).read_text().strip() == "0"
    assert (job_dir / PID_FILE).exists() and (job_dir / AGENT_PID_FILE).exists()
    assert cloud.wait_for(lambda: not pid_alive(int((job_dir / AGENT_PID_FILE).read_text())), timeout=5)
    result, code, out, _ = machine.agent("status --job resnet")
    assert code == 0
    shown = json.loads(out)
    assert (result, shown["status"], shown["exit_code"], shown["agent_alive"]) == ("Success", "succeeded", 0, False)

    # Attempt 2 on a NEW machine: everything comes back from S3 and the step number continues.
    second = launch(cloud)
    second.start(spec_for(bucket, "resnet", 2, ["--steps", "5", "--step-seconds", "0.1"]))
    status = wait_status(cloud, bucket, "resnet", 2)
    assert (status["status"], status["exit_code"], status["step"]) == ("succeeded", 0, 5)
    seq2, _, state = latest_checkpoint(cloud, bucket, "resnet")
    assert seq2 > seq and state["step"] == 5 and state["resumed_from_step"] == 3
    log = s3.get_object(Bucket=bucket, Key=key_of(log_uri(bucket, "resnet", 2)))["Body"].read().decode()
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
    key = key_of(interruption_uri(bucket, "bert", machine.instance_id))
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
    assert (machine.job_dir("bert") / EXIT_CODE_FILE).read_text().strip() == "143"


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
    record = s3_json(cloud, bucket, key_of(interruption_uri(bucket, "gpt", machine.instance_id)))
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
    assert (machine.job_dir("bad") / EXIT_CODE_FILE).read_text().strip() == "3"
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
    latest = key_of(default_checkpoint_uri(bucket, "rebal")) + LATEST_NAME
    assert s3_json(cloud, bucket, latest) is None  # the interval is 5 minutes: nothing yet
    cloud.recommend_rebalance(machine.instance_id)
    assert cloud.wait_for(lambda: s3_json(cloud, bucket, latest) is not None, timeout=5, interval=0.2)
    assert "rebalance recommendation" in (machine.job_dir("rebal") / AGENT_LOG_FILE).read_text()
    machine.agent("stop --job rebal --grace 2")


def test_heartbeat_rewrites_the_status_between_syncs(cloud: Sandbox, bucket: str) -> None:
    """Teardown's sweep reads the status object's age as the agent's heartbeat: it must not wait for a sync."""
    machine = launch(cloud)
    spec = spec_for(bucket, "beat", 1, ["--steps", "10000", "--step-seconds", "0.1"], sync_interval_s=300)
    machine.start({**spec, "heartbeat_s": 0.3})
    machine.wait_for_log("beat", "step 2/")
    key = key_of(status_uri(bucket, "beat", 1))
    first = s3_json(cloud, bucket, key)
    assert first is not None and first["status"] == "running"

    def beaten() -> bool:
        doc = s3_json(cloud, bucket, key)
        return bool(doc and doc["status"] == "running" and doc["updated_at"] != first["updated_at"])

    assert cloud.wait_for(beaten, timeout=10, interval=0.2)
    latest = key_of(default_checkpoint_uri(bucket, "beat")) + LATEST_NAME
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
    log = cloud.client("s3").get_object(Bucket=bucket, Key=key_of(log_uri(bucket, "ends", 1)))["Body"].read()
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
    assert cloud.wait_for(lambda: not pid_alive(int((job_dir / AGENT_PID_FILE).read_text())), timeout=10)
    assert "shutting down" not in (job_dir / AGENT_LOG_FILE).read_text()
    assert instance_state(cloud, machine.instance_id) == "running"
    assert json.loads((job_dir / "checkpoints" / "state.json").read_text())["step"] == 6  # still on its disk


def test_the_shutdown_decision(tmp_path: Path) -> None:
    assert keep_instance_reason(keep_instance=False, upload_error=None) is None
    assert "keep_instance" in (keep_instance_reason(keep_instance=True, upload_error=None) or "")
    for keep in (False, True):
        reason = keep_instance_reason(keep_instance=keep, upload_error="the final checkpoint upload failed (x)")
        assert reason is not None and "only copy" in reason
    # Every shutdown command failing keeps the instance, and the status says why.
    spec = AgentSpec.from_dict({"job": "j", "attempt": 1, "bucket": "b", "command": ["true"]})
    agent = Agent(spec, s3=S3Client(endpoint_url="http://127.0.0.1:9", attempts=1), job_dir=tmp_path)
    agent.shutdown_commands = (("false",), ("no-such-shutdown-command-here",))
    assert agent.shut_down() is False
    assert agent.instance_action == "keep" and "false: exit code 1" in agent.instance_action_reason
    assert "no-such-shutdown-command-here" in agent.instance_action_reason
    # The decision is in the job log.
    assert "kept: the shutdown failed" in (tmp_path / LOG_FILE).read_text()


def test_the_status_carries_the_step_the_trainer_last_wrote(tmp_path: Path) -> None:
    spec = AgentSpec.from_dict({"job": "j", "attempt": 1, "bucket": "b", "command": ["true"]})
    agent = Agent(spec, s3=S3Client(endpoint_url="http://127.0.0.1:9", attempts=1), job_dir=tmp_path)
    assert agent.status_document("running")["step"] is None  # a trainer that writes no step
    progress = tmp_path / PROGRESS_FILE
    for text, step in (("41\n", 41), ("0", 0), ("", None), ("-3", None), ("12 steps", None), ("9" * 40, None)):
        progress.write_text(text)
        assert agent.status_document("running")["step"] == step, text
    progress.write_text("41\n")
    document = agent.status_document("running")
    parsed = AgentStatus.parse(document)
    assert parsed is not None and parsed.step == 41  # what trainctl reads of it
    lenient = AgentStatus.parse({**document, "step": "41"})
    assert lenient is not None and lenient.step is None  # like the other numbers: only a number the agent wrote
    progress.unlink()
    progress.mkdir()  # unreadable as a file
    assert agent.status_document("running")["step"] is None


def test_a_secret_that_cannot_be_read_fails_the_attempt_before_the_trainer_runs(cloud: Sandbox, bucket: str) -> None:
    machine = launch(cloud)
    spec = spec_for(bucket, "nosecret", 1, ["--steps", "2"], secret_env={"DB_PASSWORD": "ssm:/agent-test/absent"})
    machine.start(spec)
    status = wait_status(cloud, bucket, "nosecret", 1)
    assert (status["status"], status["exit_code"]) == ("failed", 126)
    assert "DB_PASSWORD (ssm:/agent-test/absent): ParameterNotFound" in status["reason"]
    job_dir = machine.job_dir("nosecret")
    assert not (job_dir / PID_FILE).exists()  # the trainer never started
    assert (job_dir / EXIT_CODE_FILE).read_text().strip() == "126"
    log = cloud.client("s3").get_object(Bucket=bucket, Key=key_of(log_uri(bucket, "nosecret", 1)))["Body"].read()
    assert b"ssm:/agent-test/absent" in log and b"ParameterNotFound" in log


def test_prefetch_puts_the_latest_checkpoint_in_place_before_the_trainer_starts(
    cloud: Sandbox, bucket: str, tmp_path: Path
) -> None:
    """The `prefetch` verb as launch_attempt runs it on a replacement instance (best effort there, so checked here)."""
    spec = spec_for(bucket, "pre", 2, ["--steps", "1"])
    source = tmp_path / "attempt-1"
    (source / "opt").mkdir(parents=True)
    (source / "model.pt").write_bytes(b"m" * 100)
    (source / "opt" / "state.pt").write_bytes(b"o" * 10)
    assert Checkpoints(client(cloud), AgentSpec.from_dict(spec), source, "i-old").upload() == 1
    machine = launch(cloud)
    ship_agent(machine.root / "opt" / "trainctl")
    (machine.root / "opt" / "trainctl" / "pre.json").write_text(json.dumps(spec))
    result, code, out, err = machine.agent('prefetch --spec "$TRAINCTL_ROOT/opt/trainctl/pre.json"')
    assert (result, code) == ("Success", 0), err
    folder = machine.job_dir("pre") / "checkpoints"
    answer = json.loads(out)
    assert (answer["job"], answer["prefetched"], answer["folder"]) == ("pre", 1, str(folder))
    assert (folder / "model.pt").read_bytes() == b"m" * 100 and (folder / "opt" / "state.pt").read_bytes() == b"o" * 10
    assert not (machine.job_dir("pre") / PID_FILE).exists()  # nothing started
    result, code, _, err = machine.agent('prefetch --spec "$TRAINCTL_ROOT/opt/trainctl/missing.json"')
    assert (result, code) == ("Failed", 2) and "cannot read the spec" in err
