"""`make demo`: trainctl against the sandbox (the local cloud), end to end, in about a minute.

A scene "an earlier run left" (a persistent data volume, a training instance with an ephemeral volume attached,
a snapshot, a legacy runctl volume, and two decoys trainctl did not create); then, all through the real CLI:
the prewarm flow (a dataset from S3 onto a new persistent volume through a temporary instance), the inventory
(table and --json), the main job (train-launch: a spot instance with that volume, the code shipped, the trainer
run by the on-instance agent, checkpoint and log in S3), and a safe teardown of the earlier run's job. Every
step checks what it promises in the sandbox's AWS state; the demo exits non-zero when a check fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from core import tags as t
from sandbox import Sandbox

REGION = "us-east-1"
JOB = "llama-ft"
console = Console(highlight=False)


@dataclass
class Demo:
    """What the steps share: the running sandbox, the IDs they made, and what the CLI answered."""

    cloud: Sandbox
    ids: dict[str, str] = field(default_factory=dict)
    listing: dict[str, Any] = field(default_factory=dict)

    def ec2(self) -> Any:
        return self.cloud.client("ec2")


@dataclass(frozen=True)
class Step:
    title: str
    run: Callable[[Demo], None]


class DemoFailed(Exception):
    """A check of the demo failed: it exits non-zero, so `make demo` fails too."""


def trainctl(*args: str, capture: bool = True) -> str:
    """Run the real CLI as a user does (the console script), pointed at the sandbox through the environment."""
    script = Path(sys.executable).with_name("trainctl")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "cli.main"]
    env = dict(os.environ)
    if sys.stdout.isatty():
        # The output is captured (to check it) and then shown: keep the colours and width of this terminal.
        env.update(FORCE_COLOR="1", COLUMNS=str(shutil.get_terminal_size().columns))
    console.print(f"[bold cyan]$ trainctl {' '.join(args)}[/]")
    # The first flow command starts the local Prefect server (10-20 s on 2 cores); later ones reuse it.
    done = subprocess.run([*command, *args], env=env, capture_output=capture, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise DemoFailed(f"trainctl {' '.join(args)} exited {done.returncode}: {(done.stderr or '').strip()}")
    return done.stdout or ""


def _wait_running(ec2: Any, instance_id: str, timeout: float = 10.0) -> None:
    # boto3's waiter polls every 15 s; the sandbox is instant (transition_delay=0), so poll briskly instead.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["State"]["Name"]
        if state == "running":
            return
        time.sleep(0.1)
    raise DemoFailed(f"{instance_id} did not reach running in {timeout:.0f} s")


def seed_scene(demo: Demo) -> None:
    """Created directly with boto3, as trainctl's flows will: tags at creation, never a later CreateTags."""
    ec2 = demo.ec2()
    az = f"{REGION}a"
    image_id = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]

    def volume(size: int, zone: str, tags: dict[str, str]) -> str:
        specs = t.tag_specifications("volume", tags) if tags else []
        made = ec2.create_volume(AvailabilityZone=zone, Size=size, VolumeType="gp3", TagSpecifications=specs)
        return str(made["VolumeId"])

    def instance(tags: dict[str, str]) -> str:
        made = ec2.run_instances(
            ImageId=image_id,
            InstanceType="g5.xlarge",
            MinCount=1,
            MaxCount=1,
            Placement={"AvailabilityZone": az},
            TagSpecifications=t.tag_specifications("instance", tags),
        )
        return str(made["Instances"][0]["InstanceId"])

    ids = demo.ids
    ids["data_volume"] = volume(100, az, t.managed_tags(job=JOB, role=t.Role.DATA, name=f"{JOB}-data", persistent=True))
    ids["train_instance"] = instance(t.managed_tags(job=JOB, role=t.Role.TRAIN, attempt=1, name=f"{JOB}-train-1"))
    ids["scratch_volume"] = volume(200, az, t.managed_tags(job=JOB, role=t.Role.TRAIN, name=f"{JOB}-scratch"))
    _wait_running(ec2, ids["train_instance"])
    ec2.attach_volume(VolumeId=ids["scratch_volume"], InstanceId=ids["train_instance"], Device="/dev/sdf")
    ids["snapshot"] = str(
        ec2.create_snapshot(
            VolumeId=ids["data_volume"],
            Description=f"{JOB} data before fine-tuning",
            TagSpecifications=t.tag_specifications(
                "snapshot", t.managed_tags(job=JOB, role=t.Role.DATA, name=f"{JOB}-data-snap")
            ),
        )["SnapshotId"]
    )
    # Made by runctl, trainctl's predecessor: owned through CreatedBy, protected with the runctl: key.
    ids["legacy_volume"] = volume(
        500,
        f"{REGION}b",
        {t.LEGACY_CREATED_BY: "runctl", "runctl:protected": "true", t.NAME: "runctl-imagenet"},
    )
    # Someone else's resources in the same account: trainctl must never show (or touch) them.
    ids["decoy_instance"] = instance({t.NAME: "someone-elses-notebook"})
    ids["decoy_volume"] = volume(50, az, {})
    for role, resource_id in ids.items():
        console.print(f"  {role:<15} {resource_id}")


def prewarm(demo: Demo) -> None:
    s3 = demo.cloud.client("s3")
    s3.create_bucket(Bucket="datasets")
    files = {f"cifar/train/class-{i % 10}/img-{i:03d}.png": os.urandom(2_000 + i) for i in range(40)}
    for key, body in files.items():
        s3.put_object(Bucket="datasets", Key=key, Body=body)
    console.print(f"  uploaded {len(files)} files to s3://datasets/cifar/")
    output = trainctl(
        "ebs", "prewarm", "s3://datasets/cifar/", "--new", "cifar", "--size", "20", "--job", JOB, "--json"
    )
    report = json.loads(output)
    demo.ids["prewarm_volume"] = report["volume_id"]
    ec2 = demo.ec2()
    volume = ec2.describe_volumes(VolumeIds=[report["volume_id"]])["Volumes"][0]
    helper = ec2.describe_instances(InstanceIds=[report["instance_id"]])["Reservations"][0]["Instances"][0]
    checks = {
        f"{report['files']} files, {report['bytes']} bytes verified on {report['volume_id']}": report["files"]
        == len(files),
        "the volume is detached and available, tagged persistent": volume["State"] == "available"
        and {"Key": t.PERSISTENT, "Value": "true"} in volume["Tags"],
        f"the temporary instance {helper['InstanceId']} is terminated": helper["State"]["Name"] == "terminated",
    }
    for claim, ok in checks.items():
        console.print(f"  {'[green]ok[/]' if ok else '[red]FAILED[/]'}  {claim}")
    if not all(checks.values()):
        raise DemoFailed("the prewarm did not leave what it promises")


TRAIN_JOB = "cifar-resnet"
BUCKET = "trainctl-jobs"


def train(demo: Demo) -> None:
    """The main job: a spot instance with the prewarmed volume, the code shipped, the trainer run by the agent."""
    demo.cloud.client("s3").create_bucket(Bucket=BUCKET)
    code_dir = Path(__file__).resolve().parent  # examples/: train.py is the trainer users copy
    output = trainctl(
        "train", "launch", "--name", TRAIN_JOB, "--bucket", BUCKET, "--instance-type", "g5.xlarge",
        "--volume", demo.ids["prewarm_volume"], "--mount-point", "/mnt/data", "--code-dir", str(code_dir),
        "--wait", "--json", "--", "python3", "train.py", "--steps", "5", "--step-seconds", "0.2",
    )  # fmt: skip
    report = json.loads(output)
    s3 = demo.cloud.client("s3")
    latest = json.loads(
        s3.get_object(Bucket=BUCKET, Key=f"trainctl/jobs/{TRAIN_JOB}/checkpoints/LATEST.json")["Body"].read()
    )
    log = s3.get_object(Bucket=BUCKET, Key=f"trainctl/jobs/{TRAIN_JOB}/logs/attempt-1.log")["Body"].read().decode()
    console.print(f"  the job's log in S3 ends with: {log.strip().splitlines()[-1]!r}")
    checks = {
        f"exit code {report['exit_code']} on a {report['capacity_type']} {report['instance_type']}": report["exit_code"]
        == 0,
        f"checkpoint {latest['prefix']} and the log are in s3://{BUCKET}/trainctl/jobs/{TRAIN_JOB}/": bool(log),
        f"the instance {report['instance_id']} is terminated, the data volume kept": report["instance_terminated"],
    }
    for claim, ok in checks.items():
        console.print(f"  {'[green]ok[/]' if ok else '[red]FAILED[/]'}  {claim}")
    if not all(checks.values()):
        raise DemoFailed("the training job did not end as it should")


def teardown(demo: Demo) -> None:
    """The earlier run's leftovers: everything is minutes old, so --force lifts the 5-minute rule (only that)."""
    output = trainctl("teardown", "--job", JOB, "--yes", "--force", "--json")
    report = json.loads(output)
    ec2 = demo.ec2()
    volumes = {v["VolumeId"]: v["State"] for v in ec2.describe_volumes()["Volumes"]}
    instances = {
        i["InstanceId"]: i["State"]["Name"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]
    }
    checks = {
        "the finished job's instance is terminated": instances[demo.ids["train_instance"]] == "terminated",
        "its ephemeral scratch volume is deleted": demo.ids["scratch_volume"] not in volumes,
        "its persistent data volume is kept (and its snapshot)": volumes.get(demo.ids["data_volume"]) == "available",
        "the decoys trainctl did not create are untouched": instances[demo.ids["decoy_instance"]] == "running"
        and demo.ids["decoy_volume"] in volumes,
    }
    console.print(f"  plan: {len(report.get('deleted', []))} removed, {len(report.get('kept', []))} kept with reasons")
    for claim, ok in checks.items():
        console.print(f"  {'[green]ok[/]' if ok else '[red]FAILED[/]'}  {claim}")
    if not all(checks.values()):
        raise DemoFailed("teardown did not keep and remove what it should")


def list_table(demo: Demo) -> None:
    output = trainctl("resources", "list")
    sys.stdout.write(output)
    sys.stdout.flush()
    leaked = [demo.ids[k] for k in ("decoy_instance", "decoy_volume") if demo.ids[k] in output]
    if leaked:
        raise DemoFailed(f"the table shows resources trainctl did not create: {', '.join(leaked)}")


def list_json(demo: Demo) -> None:
    output = trainctl("resources", "list", "--json")
    demo.listing = json.loads(output)  # --json puts exactly one JSON document on stdout
    listing = demo.listing
    shown = {r["id"] for kind in ("instances", "volumes", "snapshots") for r in listing[kind]}
    expected = {v for k, v in demo.ids.items() if not k.startswith("decoy")}
    decoys = {v for k, v in demo.ids.items() if k.startswith("decoy")}
    if shown & decoys:
        raise DemoFailed(f"--json lists resources trainctl did not create: {sorted(shown & decoys)}")
    if expected - shown:
        raise DemoFailed(f"--json misses managed resources: {sorted(expected - shown)}")
    volumes = {v["id"]: v for v in listing["volumes"]}
    instance = next(i for i in listing["instances"] if i["id"] == demo.ids["train_instance"])
    data, scratch, legacy = (volumes[demo.ids[k]] for k in ("data_volume", "scratch_volume", "legacy_volume"))
    checks = {
        "the scratch volume is attached to the training instance": scratch["attached_instance_id"] == instance["id"]
        and scratch["id"] in instance["volume_ids"],
        "the data volume is persistent and knows its snapshot": data["persistent"]
        and demo.ids["snapshot"] in data["snapshot_ids"],
        "the runctl volume counts as managed and protected": legacy["managed"] and legacy["protected"],
    }
    excerpt = {k: data[k] for k in ("id", "job", "role", "persistent", "protected", "snapshot_ids", "age_seconds")}
    console.print(f"  the data volume, as scripts see it: {json.dumps(excerpt)}", soft_wrap=True)
    for claim, ok in checks.items():
        console.print(f"  {'[green]ok[/]' if ok else '[red]FAILED[/]'}  {claim}")
    if not all(checks.values()):
        raise DemoFailed("the inventory's relations are not what was created")


STEPS: list[Step] = [
    Step("Seed what an earlier run left (boto3, straight to the sandbox)", seed_scene),
    Step("Prewarm a dataset from S3 onto a new persistent volume (the prewarm flow)", prewarm),
    Step("The inventory, for humans", list_table),
    Step("The inventory, for scripts (--json), checked", list_json),
    Step("Train on a spot instance with the prewarmed volume (the train-launch flow)", train),
    Step("Safe teardown of the earlier run's job (the safe-teardown flow)", teardown),
]


def main() -> int:
    started = time.monotonic()
    console.rule("[bold]trainctl demo[/] — against the sandbox, a local cloud")
    with Sandbox(region=REGION, boot_delay=0.2) as cloud:
        # The CLI subprocesses inherit this environment, exactly as after `trainctl sandbox up` + export.
        os.environ.update(cloud.env)
        os.environ.pop("AWS_PROFILE", None)
        console.print(f"sandbox at {cloud.endpoint_url}")
        demo = Demo(cloud=cloud)
        for number, step in enumerate(STEPS, start=1):
            console.rule(f"{number}. {step.title}", align="left")
            try:
                step.run(demo)
            except DemoFailed as failed:
                console.print(f"[bold red]demo failed:[/] {failed}", soft_wrap=True)
                return 1
    counts = {kind: len(demo.listing.get(kind, [])) for kind in ("instances", "volumes", "snapshots")}
    console.rule()
    console.print(
        f"[bold green]Done in {time.monotonic() - started:.1f} s.[/] The prewarm put a verified dataset on a new "
        f"persistent volume and left no instance behind. The inventory showed {counts['instances']} instance, "
        f"{counts['volumes']} volumes and {counts['snapshots']} snapshot and excluded the 2 untagged decoys. Job "
        f"{TRAIN_JOB} trained on a spot instance with that volume and left its checkpoint and log in S3. The "
        f"teardown of job {JOB} removed its instance and scratch volume and kept its persistent data volume, the "
        "protected runctl volume and the decoys.",
        soft_wrap=True,
    )
    _where_the_runs_are()
    return 0


def _where_the_runs_are() -> None:
    """The flow commands ran on the local Prefect server (started by the first one unless PREFECT_API_URL is set),
    which keeps running: say where the runs can be seen and how to stop it."""
    from cli.local_server import running

    server = running()
    if server is not None and not os.environ.get("PREFECT_API_URL"):
        console.print(
            f"The flow runs, their artifacts and events are in the Prefect UI at {server.ui_url} "
            "(`trainctl server down` stops that server).",
            soft_wrap=True,
        )


if __name__ == "__main__":
    sys.exit(main())
