"""cost-watch in the sandbox (issue 16): real job launches on g5 instances priced from the sandbox's Pricing API and
spot history; thresholds fire once per crossing with their state in S3; a job over budget is stopped only when the
policy says so; the table artifact keeps one key per region and bucket; `trainctl cost --json` prices the job.

Few runs, many checks each: a launch costs a few seconds, a pass about one."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from blocks.policies import CostPolicy
from cli.main import app
from core import jobs
from core import tags as t
from core.jobs import JobRecord, JobSpec, StopReason, TemplateSpec
from flows.cost_watch import STATE_KEY, CostWatchRequest, cost_watch
from flows.train_launch import train_launch
from sandbox import Sandbox
from tests.flows.conftest import record_events
from tests.flows.test_spot_watch import _artifact_rows
from tests.flows.test_train_launch import _code_dir, _get_json

pytestmark = pytest.mark.sandbox
BUCKET = "cost-watch-jobs"
ARTIFACT = f"cost-watch-us-east-1-{BUCKET}"
UNPRICED_TYPE = "m6i.large"  # moto runs it; the sandbox's Pricing API lists no price for it


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    return record_events(monkeypatch)


def _launch(cloud: Sandbox, code: str, name: str, *, budget_usd: float | None = None, step_seconds: float = 0.1) -> str:
    """A job on a g5.xlarge, launched without waiting; returns its instance once its trainer has started."""
    spec = JobSpec(
        name=name,
        bucket=BUCKET,
        template=TemplateSpec(instance_type="g5.xlarge"),
        code_dir=code,
        command=["python3", "train.py", "--steps", "100000", "--step-seconds", str(step_seconds)],
        sync_interval_s=300,  # the checkpoint a cost-watch stop makes is the first one uploaded
        budget_usd=budget_usd,
    )
    instance_id = str(train_launch(spec).instance_id)
    log = Path(cloud.runtime.instance_root(instance_id)) / jobs.instance_job_dir(name).lstrip("/") / jobs.LOG_FILE
    ready = "step 2/" if step_seconds < 1 else "starting from scratch"  # a slow trainer: in its first step
    assert cloud.wait_for(lambda: log.exists() and ready in log.read_text(), 30)
    return instance_id


def _unpriced_instance(cloud: Sandbox) -> str:
    """A managed instance of a type no price list has (no job record: priced from the inventory alone)."""
    found = cloud.client("ec2").run_instances(
        ImageId="ami-12c6146b",
        InstanceType=UNPRICED_TYPE,
        MinCount=1,
        MaxCount=1,
        TagSpecifications=t.tag_specifications("instance", t.managed_tags(job="mystery", role=t.Role.TRAIN)),
    )
    return str(found["Instances"][0]["InstanceId"])


def _state(cloud: Sandbox) -> dict[str, Any]:
    return dict(_get_json(cloud, f"s3://{BUCKET}/{STATE_KEY}"))


def _record(cloud: Sandbox, name: str) -> JobRecord:
    return JobRecord.model_validate(_get_json(cloud, jobs.job_record_uri(BUCKET, name)))


def _state_of(cloud: Sandbox, instance_id: str) -> str:
    found = cloud.client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"]
    return str(found[0]["Instances"][0]["State"]["Name"])


def _cli(cloud: Sandbox, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env={"AWS_PROFILE": None, **cloud.env})
    return result.exit_code, result.output


def test_thresholds_fire_once_with_their_state_in_s3_nothing_stops_without_the_action_and_the_cli_prices_the_job(
    cloud: Sandbox, tmp_path: Path, events: list[dict[str, Any]]
) -> None:
    cloud.client("s3").create_bucket(Bucket=BUCKET)
    CostPolicy(max_hourly_usd=0.1).save("cost-watch-only", overwrite=True)  # no action enabled
    instance_id = _launch(cloud, _code_dir(tmp_path), "pricey", budget_usd=0.0001)
    unpriced = _unpriced_instance(cloud)
    request = CostWatchRequest(buckets=[BUCKET], cost_policy="cost-watch-only")

    first = cost_watch(request)
    fired = {e["payload"]["key"]: e for e in events if e["event"] == "trainctl.cost.threshold"}
    assert set(fired) == {"hourly", "job-budget:pricey"}
    hourly = fired["hourly"]["payload"]
    assert hourly["limit_usd"] == 0.1 and hourly["amount_usd"] >= 0.2  # the g5.xlarge on spot; the m6i: no price
    budget = fired["job-budget:pricey"]
    assert budget["payload"]["job"] == "pricey" and budget["resource"]["prefect.resource.id"] == "trainctl.job.pricey"
    assert budget["payload"]["bucket"] == BUCKET and hourly["bucket"] is None  # the automation's teardown needs it
    assert f"aws.ec2.instance.{instance_id}" in {r["prefect.resource.id"] for r in budget["related"]}
    assert unpriced not in budget["payload"]["resources"]
    above = _state(cloud)["thresholds"]["above"]
    assert set(above) == {"hourly", "job-budget:pricey"}
    # Over its budget, but the policy takes no action: the job trains on.
    assert first.actions == [] and _state_of(cloud, instance_id) == "running"
    assert _record(cloud, "pricey").status == "running"

    rows = {r["id"]: r for r in _artifact_rows(ARTIFACT)}
    assert rows["pricey"]["kind"] == "job" and rows["pricey"]["source"] == "api"
    assert rows[instance_id]["$/hour"].startswith("$0.") and rows[instance_id]["source"] == "api"
    assert rows[unpriced]["price"].startswith("price unknown") and rows[unpriced]["$/hour"] == ""
    row = next(r for r in first.resources if r.id == unpriced)
    assert row.unknown and row.hourly_usd is None and row.accumulated_usd is None  # never $0
    assert first.totals is not None and first.totals.unknown == 1

    second = cost_watch(request)
    assert len([e for e in events if e["event"] == "trainctl.cost.threshold"]) == 2  # nothing fired again
    assert {(r.key, r.fired) for r in second.thresholds} == {("hourly", False), ("job-budget:pricey", False)}
    assert _state(cloud)["thresholds"]["above"] == above  # still above since the first pass's crossing

    code, output = _cli(cloud, "cost", "--json", "--bucket", BUCKET, "--job", "pricey")
    assert code == 0, output
    priced = json.loads(output)
    assert [(j["id"], j["source"]) for j in priced["jobs"]] == [("pricey", "api")]
    assert priced["jobs"][0]["accumulated_usd"] > 0 and priced["totals"]["hourly_usd"] >= 0.2
    assert {r["id"] for r in priced["resources"]} >= {instance_id} and unpriced not in output
    # The default policy ($50/hour) and the job's own budget; since when: the state cost-watch keeps.
    assert [(r["key"], r["fired"]) for r in priced["thresholds"]] == [("job-budget:pricey", False)]
    assert priced["thresholds"][0]["since"].startswith(above["job-budget:pricey"][:19])
    code, output = _cli(cloud, "cost", "--bucket", BUCKET)
    assert code == 0 and "price unknown" in output and "prices from: api" in output, output
    code, output = _cli(cloud, "cost", "--bucket", BUCKET, "--job", "no-such-job")
    assert code == 2 and output.count("\n") == 1 and "--job" in output, output


# The stop itself (checkpoint verified before the instance ends, spot-watch leaving the job stopped) is walked in
# make test by tests/flows/test_cost_actions.py; this one, the flow's wiring of it, runs in make test-exhaustive.
@pytest.mark.exhaustive
def test_a_job_over_budget_is_stopped_with_its_checkpoint_verified_when_the_policy_says_so(
    cloud: Sandbox, tmp_path: Path, events: list[dict[str, Any]]
) -> None:
    cloud.client("s3").create_bucket(Bucket=BUCKET)
    CostPolicy(checkpoint_and_stop_over_budget=True).save("cost-watch-acts", overwrite=True)
    instance_id = _launch(
        cloud, _code_dir(tmp_path), "costly", budget_usd=0.05
    )  # ~$0.4/h on spot: over before the next pass

    report = cost_watch(CostWatchRequest(buckets=[BUCKET], cost_policy="cost-watch-acts"))
    assert [(a.job, a.reason, a.outcome, a.checkpoint_verified) for a in report.actions] == [
        ("costly", "budget", "stopped", True)
    ]
    record = _record(cloud, "costly")
    assert (record.status, record.current.stop_reason) == ("stopped", StopReason.BUDGET)
    assert _state_of(cloud, instance_id) == "terminated"
    latest = _get_json(cloud, jobs.default_checkpoint_uri(BUCKET, "costly") + jobs.LATEST_NAME)
    assert _get_json(cloud, jobs.default_checkpoint_uri(BUCKET, "costly") + latest["prefix"] + jobs.MANIFEST_NAME)
    stopped = [e for e in events if e["event"] == "trainctl.job.stopped"]
    assert [e["payload"]["reason"] for e in stopped] == ["budget"] and stopped[0]["payload"]["checkpoint_verified"]
    assert stopped[0]["resource"]["prefect.resource.id"] == "trainctl.job.costly"
    assert f"aws.ec2.instance.{instance_id}" in {r["prefect.resource.id"] for r in stopped[0]["related"]}
    assert not [e for e in events if e["event"] == "trainctl.cost.threshold"]  # $0.05 is not crossed yet


def test_an_instance_whose_gpu_stays_idle_has_its_job_stopped_with_its_checkpoint_a_busy_one_trains_on(
    cloud: Sandbox, tmp_path: Path, events: list[dict[str, Any]]
) -> None:
    cloud.client("s3").create_bucket(Bucket=BUCKET)
    # A window of 3 s instead of 30 minutes: two passes 3 s apart see the whole window.
    CostPolicy(stop_idle_instances=True, idle_gpu_percent=10, idle_minutes=0.05).save("cost-watch-idle", overwrite=True)
    code = _code_dir(tmp_path)
    stuck = _launch(cloud, code, "stuck", step_seconds=3600)  # hung in its first step: its log does not grow
    busy = _launch(cloud, code, "busy", step_seconds=3600)
    cloud.set_gpu_utilization(stuck, 3)
    cloud.set_gpu_utilization(busy, 95)
    request = CostWatchRequest(buckets=[BUCKET], cost_policy="cost-watch-idle")

    first = cost_watch(request)
    assert first.actions == [] and {v.instance_id: v.idle for v in first.idle} == {stuck: False, busy: False}
    kept = _state(cloud)["idle"]["instances"]
    assert {i: len(samples) for i, samples in kept.items()} == {stuck: 1, busy: 1}  # kept for the next pass
    time.sleep(3.5)
    second = cost_watch(request)
    verdicts = {v.instance_id: v for v in second.idle}
    assert verdicts[stuck].idle and "a GPU at 95 %" in verdicts[busy].reason
    assert [(a.job, a.reason, a.outcome, a.checkpoint_verified) for a in second.actions] == [
        ("stuck", "idle-gpu", "stopped", True)
    ]
    assert {i: len(samples) for i, samples in _state(cloud)["idle"]["instances"].items()} == {stuck: 2, busy: 2}
    record = _record(cloud, "stuck")
    assert (record.status, record.current.stop_reason) == ("stopped", StopReason.IDLE_GPU)
    assert _state_of(cloud, stuck) == "terminated" and _state_of(cloud, busy) == "running"
    assert _record(cloud, "busy").status == "running"
    stopped = [e["payload"]["job"] for e in events if e["event"] == "trainctl.job.stopped"]
    assert stopped == ["stuck"]
