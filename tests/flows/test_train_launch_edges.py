"""train-launch at its edges in the sandbox: a failure half way, a launch without --wait, two launches at once,
a spot interruption, secrets (split from test_train_launch.py so the two files run in parallel).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agent.host import pid_alive
from cli.main import app
from core import jobs
from core import tags as t
from core.ebs import VolumeSpec
from core.launch import LaunchOptions
from flows.train_launch import LaunchFailedError, train_launch
from sandbox import Sandbox
from tasks.ebs import create_volume
from tasks.jobs import JobChangedError, read_record
from tests.flows.test_train_launch import (
    BUCKET,
    _code_dir,
    _final_state,
    _get_json,
    _get_text,
    _job_record,
    _live_instances,
    _spec,
)

pytestmark = pytest.mark.sandbox


def test_failure_half_way_leaves_no_instance(cloud: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cloud.client("s3").create_bucket(Bucket=BUCKET)
    volume = create_volume.fn(VolumeSpec(name="half", size_gib=10), availability_zone="us-east-1a")
    # The ship step fails on the instance (after launch, attach and mount succeeded).
    monkeypatch.setattr("flows.launch_attempt.ship_script", lambda job, staging: ["echo 'no space left' >&2", "exit 7"])
    with pytest.raises(LaunchFailedError) as err:
        train_launch(_spec(_code_dir(tmp_path), name="half", data_volume_id=volume.id), LaunchOptions(wait=True))
    message = str(err.value)
    assert "step 'ship'" in message and "no space left" in message
    assert "terminated" in message and f"volume {volume.id} detached" in message
    assert _live_instances(cloud) == []
    data = cloud.client("ec2").describe_volumes(VolumeIds=[volume.id])["Volumes"][0]
    assert data["State"] == "available"  # the data volume is kept
    record = _job_record(cloud, "half")
    assert record.status == "failed" and "ship" in (record.message or "")


def test_a_job_launched_without_wait_ends_its_instance_when_it_ends(cloud: Sandbox, tmp_path: Path) -> None:
    """Issue #14: nobody waits (no --wait, Prefect may be gone): the agent itself ends the instance."""
    cloud.client("s3").create_bucket(Bucket=BUCKET)
    volume = create_volume.fn(VolumeSpec(name="ends-data", size_gib=10), availability_zone="us-east-1a")
    code = _code_dir(tmp_path)
    done = train_launch(_spec(code, name="ends", steps=3, data_volume_id=volume.id))
    failing = _spec(code, name="ends-bad", spot=False)
    failing.command += ["--fail-with", "3", "--fail-at", "2"]
    bad = train_launch(failing)
    kept = train_launch(_spec(code, name="ends-kept", steps=2, keep_instance=True))
    assert done.status == bad.status == kept.status == "running"
    ec2 = cloud.client("ec2")

    def state(instance_id: str) -> str:
        return str(
            ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["State"]["Name"]
        )

    assert cloud.wait_for(lambda: state(done.instance_id) == state(bad.instance_id) == "terminated", 30, 0.5)
    # The persistent data volume survived the terminate, detached; the work is in S3.
    data = ec2.describe_volumes(VolumeIds=[volume.id])["Volumes"][0]
    assert data["State"] == "available" and data["Attachments"] == []
    assert _final_state(cloud, "ends")["step"] == 3
    assert "done: 3 steps" in _get_text(cloud, done.log_uri)
    status = _get_json(cloud, jobs.status_uri(BUCKET, "ends", 1))
    assert (status["status"], status["exit_code"], status["instance_action"]) == ("succeeded", 0, "shutdown")
    status = _get_json(cloud, jobs.status_uri(BUCKET, "ends-bad", 1))
    assert (status["status"], status["exit_code"], status["instance_action"]) == ("failed", 3, "shutdown")
    assert "failing with exit code 3" in _get_text(cloud, bad.log_uri)
    # keep_instance: the job ended, the agent exited without a shutdown, and the instance still runs.
    job_dir = Path(cloud.runtime.instance_root(kept.instance_id)) / jobs.instance_job_dir("ends-kept").lstrip("/")
    agent_pid = job_dir / jobs.AGENT_PID_FILE

    assert cloud.wait_for(lambda: agent_pid.exists() and not pid_alive(int(agent_pid.read_text())), 30, 0.5)
    status = _get_json(cloud, jobs.status_uri(BUCKET, "ends-kept", 1))
    assert (status["status"], status["instance_action"]) == ("succeeded", "keep")
    assert "shutting down" not in (job_dir / jobs.AGENT_LOG_FILE).read_text()
    assert state(kept.instance_id) == "running"
    # Issue #14: the record follows the agent's final status: `train status` shows it and writes it back.
    for name, word, exit_code in (("ends", "succeeded", 0), ("ends-bad", "failed", 3)):
        assert _job_record(cloud, name).status == "running"  # nobody waited
        shown = CliRunner().invoke(app, ["train", "status", name, "--bucket", BUCKET])
        assert shown.exit_code == 0, shown.output
        assert f"{name} attempt 1: {word} (agent: {word})" in shown.stdout and f"exit code: {exit_code}" in shown.stdout
        record = _job_record(cloud, name)
        assert (record.status, record.exit_code, record.attempt) == (word, exit_code, 1)
        assert record.finished_at and record.instance_id in {done.instance_id, bad.instance_id}


def test_two_launches_of_one_name_at_once_launch_one_instance(
    cloud: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue #14: both read the (absent) record before either writes; the claim lets exactly one through."""
    cloud.client("s3").create_bucket(Bucket=BUCKET)
    code = _code_dir(tmp_path)
    both_read = threading.Barrier(2, timeout=60)

    def read_then_wait(bucket: str, job: str, *, account: str | None = None) -> Any:
        got = read_record.fn(bucket, job, account=account)
        both_read.wait()
        return got

    monkeypatch.setattr("flows.train_launch.read_record", read_then_wait)
    results: list[Any] = []

    def launch() -> None:
        try:
            results.append(train_launch(_spec(code, name="race", steps=2)))
        except Exception as exc:
            results.append(exc)

    threads = [threading.Thread(target=launch) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    [winner] = [r for r in results if not isinstance(r, Exception)]
    [lost] = [r for r in results if isinstance(r, Exception)]
    assert isinstance(lost, JobChangedError) and "changed by another command at the same time" in str(lost)
    assert f"trainctl train status race --bucket {BUCKET}` and retry" in str(lost)
    found = cloud.client("ec2").describe_instances(Filters=[{"Name": f"tag:{t.JOB}", "Values": ["race"]}])
    assert [i["InstanceId"] for r in found["Reservations"] for i in r["Instances"]] == [winner.instance_id]
    record = _job_record(cloud, "race")
    assert (record.attempt, record.instance_id) == (1, winner.instance_id)


def test_spot_interruption_checkpoints_before_termination(cloud: Sandbox, tmp_path: Path) -> None:
    cloud.client("s3").create_bucket(Bucket=BUCKET)
    report = train_launch(_spec(_code_dir(tmp_path), name="spotty", steps=200, sync_interval_s=30))
    assert report.status == "running" and report.capacity_type == "spot"
    root = Path(cloud.runtime.instance_root(report.instance_id))
    state_file = root / "var/lib/trainctl/jobs/spotty/checkpoints/state.json"
    assert cloud.wait_for(lambda: state_file.exists() and json.loads(state_file.read_text())["step"] >= 3, 30)

    notice_at = time.time()
    cloud.interrupt_spot(report.instance_id, delay_seconds=15)
    record_uri = jobs.interruption_uri(BUCKET, "spotty", report.instance_id)
    s3 = cloud.client("s3")

    def recorded() -> bool:
        try:
            s3.head_object(Bucket=BUCKET, Key=record_uri.split("/", 3)[3])
            return True
        except Exception:
            return False

    assert cloud.wait_for(recorded, 20, 0.2)
    record = _get_json(cloud, record_uri)
    state = _final_state(cloud, "spotty")
    sigterm_latency = state["sigterm_received_at"] - notice_at
    uploaded = datetime.fromisoformat(record["checkpoint_uploaded_at"]).timestamp()
    print(f"SIGTERM after {sigterm_latency:.2f} s; checkpoint verified {uploaded - notice_at:.2f} s after the notice")
    assert 0 <= sigterm_latency < 6
    assert record["verified"] is True and record["checkpoint_seq"] is not None
    assert uploaded < notice_at + 15  # in S3 and verified before the instance goes
    assert state["step"] >= 3 and state["sigterm_received_at"] is not None
    status = _get_json(cloud, jobs.status_uri(BUCKET, "spotty", 1))
    assert status["status"] == "interrupted"

    ec2 = cloud.client("ec2")

    def terminated() -> dict[str, Any] | None:
        data = ec2.describe_instances(InstanceIds=[report.instance_id])["Reservations"][0]["Instances"][0]
        return data if data["State"]["Name"] == "terminated" else None

    assert cloud.wait_for(lambda: terminated() is not None, 25, 0.5)
    assert time.time() - notice_at >= 14.5
    assert (terminated() or {}).get("StateReason", {}).get("Code") == "Server.SpotInstanceTermination"


# The trainer of the secrets test: says whether each variable holds the value whose sha256 it was given (a digest
# on the command line, never the value) and writes nothing else.
CHECK_SECRETS = """
import hashlib, os, sys
for name, digest in zip(("DB_PASSWORD", "API_TOKEN"), sys.argv[1:]):
    ok = hashlib.sha256(os.environ.get(name, "").encode()).hexdigest() == digest
    print(name, "ok" if ok else "MISMATCH", flush=True)
    if not ok:
        sys.exit(1)
"""


def _prefect_records(flow_run_id: Any) -> str:
    """Everything Prefect keeps of a run, as text: its parameters, artifacts and logs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # the run's last lines are sent in the background
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    parts = [json.dumps(run.parameters, default=str)]
    parts += [json.dumps(a.data, default=str) + (a.description or "") for a in artifacts]
    parts += [log.message for log in logs]
    return "\n".join(parts)


def test_secret_env_reaches_the_trainer_and_nothing_else(cloud: Sandbox, tmp_path: Path) -> None:
    cloud.client("s3").create_bucket(Bucket=BUCKET)
    db_password, api_token = "pw-" + secrets.token_hex(16), "tok-" + secrets.token_hex(16)
    cloud.client("ssm").put_parameter(Name="/trainctl-test/db-password", Value=db_password, Type="SecureString")
    cloud.client("secretsmanager").create_secret(
        Name="trainctl-test/api", SecretString=json.dumps({"token": api_token, "user": "svc"})
    )
    code = tmp_path / "code"
    code.mkdir()
    (code / "check.py").write_text(CHECK_SECRETS)
    refs = {"DB_PASSWORD": "ssm:/trainctl-test/db-password", "API_TOKEN": "secretsmanager:trainctl-test/api#token"}
    digests = [hashlib.sha256(v.encode()).hexdigest() for v in (db_password, api_token)]
    spec = _spec(str(code), name="secrets", command=["python3", "check.py", *digests], secret_env=refs)

    state = train_launch(spec, LaunchOptions(wait=True), return_state=True)
    report = state.result()
    assert report.status == "succeeded", report
    log = _get_text(cloud, report.log_uri)
    assert "DB_PASSWORD ok" in log and "API_TOKEN ok" in log  # the trainer got both values

    values = [db_password.encode(), api_token.encode()]
    # No object in the bucket holds a value: job record, agent spec, code, logs, status, checkpoints.
    s3 = cloud.client("s3")
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET) for o in page["Contents"]]
    staging = jobs.staging_prefix(BUCKET, "secrets", 1).split("/", 3)[3]
    assert f"{staging}agent-spec.json" in keys and len(keys) >= 5
    for key in keys:
        body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert not any(v in body for v in values), key
    # The references are what the record and the agent spec carry.
    assert _get_json(cloud, jobs.job_record_uri(BUCKET, "secrets"))["spec"]["secret_env"] == refs
    assert _get_json(cloud, f"s3://{BUCKET}/{staging}agent-spec.json")["secret_env"] == refs
    # Nor any file on the instance's disk (agent-spec.json, status.json, agent.log, SSM outputs, ...).
    root = Path(cloud.runtime.instance_root(report.instance_id))
    files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    assert any(p.name == "agent.log" for p in files)
    for path in files:
        assert not any(v in path.read_bytes() for v in values), path
    # Nor what the flow returned, nor Prefect's records of the run (parameters, artifacts, logs).
    assert not any(v.decode() in report.model_dump_json() for v in values)
    records = _prefect_records(state.state_details.flow_run_id)
    assert "[job] DB_PASSWORD ok" in records and "ssm:/trainctl-test/db-password" in records
    assert not any(v.decode() in records for v in values)
