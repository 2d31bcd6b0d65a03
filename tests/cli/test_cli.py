"""The `trainctl` CLI, driven through typer's CliRunner against one module-scoped sandbox (the local cloud).

The sandbox runs moto's global backends in this process: no `mock_aws` may run while it is up. The scene is
seeded once and only read by the tests.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from typer.testing import CliRunner, Result

from cli.main import app
from cli.output import format_age
from core import tags as t
from sandbox import Sandbox
from tests.conftest import raw_instance, raw_volume

REPO = Path(__file__).resolve().parents[2]
JOB = "bert-pretrain"


@pytest.fixture(scope="module")
def cloud() -> Iterator[Sandbox]:
    with Sandbox(boot_delay=0.1) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def scene(cloud: Sandbox) -> dict[str, str]:
    """Managed: a persistent data volume + snapshot, a training instance with a scratch volume attached, a legacy
    runctl volume. Not managed: an instance and a volume that carry everything but the ownership tag."""
    ec2 = cloud.client("ec2")

    def volume(tags: dict[str, str], zone: str = "us-east-1a") -> str:
        return raw_volume(ec2, tags, zone)

    def instance(tags: dict[str, str]) -> str:
        return raw_instance(ec2, tags, "us-east-1a")

    ids = {
        "data": volume(t.managed_tags(job=JOB, role=t.Role.DATA, name="bert-data", persistent=True)),
        "train": instance(t.managed_tags(job=JOB, role=t.Role.TRAIN, attempt=1, name="bert-train-1")),
        "scratch": volume(t.managed_tags(job=JOB, role=t.Role.TRAIN, name="bert-scratch")),
        "legacy": volume({"CreatedBy": "runctl", "runctl:protected": "true"}, zone="us-east-1b"),
        # Decoys: a job tag and a name, but no managed tag: never listed.
        "decoy_instance": instance({"Name": "not-ours", t.JOB: JOB}),
        "decoy_volume": volume({"Name": "not-ours", t.JOB: JOB}),
    }
    assert cloud.wait_for(
        lambda: (
            ec2.describe_instances(InstanceIds=[ids["train"]])["Reservations"][0]["Instances"][0]["State"]["Name"]
            == "running"
        ),
        timeout=10,
    )
    ec2.attach_volume(VolumeId=ids["scratch"], InstanceId=ids["train"], Device="/dev/sdf")
    ids["snapshot"] = ec2.create_snapshot(
        VolumeId=ids["data"],
        TagSpecifications=t.tag_specifications("snapshot", t.managed_tags(job=JOB, role=t.Role.DATA)),
    )["SnapshotId"]
    return ids


@pytest.fixture
def run(cloud: Sandbox) -> Any:
    """Invoke the CLI in-process with the sandbox's environment (and no stray profile from the host)."""
    runner = CliRunner()
    env: dict[str, str | None] = {"AWS_PROFILE": None, **cloud.env}

    def invoke(*args: str) -> Result:
        return runner.invoke(app, list(args), env=env)

    return invoke


def _ids(listing: dict[str, Any]) -> set[str]:
    return {r["id"] for kind in ("instances", "volumes", "snapshots") for r in listing[kind]}


def test_list_json_has_managed_resources_with_relations_and_no_decoys(run: Any, scene: dict[str, str]) -> None:
    result = run("resources", "list", "--json")
    assert result.exit_code == 0, result.output
    listing = json.loads(result.stdout)  # stdout is exactly one JSON document
    assert listing["region"] == "us-east-1"
    shown = _ids(listing)
    assert {scene[k] for k in ("data", "train", "scratch", "legacy", "snapshot")} <= shown
    assert not shown & {scene["decoy_instance"], scene["decoy_volume"]}

    volumes = {v["id"]: v for v in listing["volumes"]}
    [instance] = [i for i in listing["instances"] if i["id"] == scene["train"]]
    assert volumes[scene["scratch"]]["attached_instance_id"] == scene["train"]
    assert scene["scratch"] in instance["volume_ids"]
    assert volumes[scene["data"]]["snapshot_ids"] == [scene["snapshot"]]
    assert volumes[scene["data"]]["persistent"] and not volumes[scene["scratch"]]["persistent"]
    legacy = volumes[scene["legacy"]]
    assert legacy["managed"] and legacy["protected"] and legacy["legacy"]
    assert instance["job"] == JOB and instance["role"] == "train" and instance["managed"]
    assert isinstance(instance["age_seconds"], int) and instance["age_seconds"] >= 0


def test_list_filters_by_job_and_kind(run: Any, scene: dict[str, str]) -> None:
    result = run("resources", "list", "--job", JOB, "--kind", "volume", "--json")
    assert result.exit_code == 0, result.output
    listing = json.loads(result.stdout)
    assert listing["instances"] == [] and listing["snapshots"] == []
    assert {v["id"] for v in listing["volumes"]} == {scene["data"], scene["scratch"]}  # the runctl one has no job
    assert listing["filters"] == {"job": JOB, "kind": "volume"}


def test_list_table_shows_ids_marks_and_links(run: Any, scene: dict[str, str]) -> None:
    result = run("resources", "list")
    assert result.exit_code == 0, result.output
    for key in ("data", "train", "scratch", "legacy", "snapshot"):
        assert scene[key] in result.stdout
    assert scene["decoy_instance"] not in result.stdout and scene["decoy_volume"] not in result.stdout
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.startswith("│")}
    assert f"→ {scene['train']}" in rows[scene["scratch"]]
    assert "🔒" in rows[scene["data"]] and "1 snapshot" in rows[scene["data"]]
    assert "🛡" in rows[scene["legacy"]] and "runctl" in rows[scene["legacy"]]
    assert scene["scratch"] in rows[scene["train"]]
    assert f"← {scene['data']}" in rows[scene["snapshot"]]


def test_show_one_resource(run: Any, scene: dict[str, str]) -> None:
    result = run("resources", "show", scene["data"], "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["snapshot_ids"] == [scene["snapshot"]]
    unmanaged = run("resources", "show", scene["decoy_volume"])
    assert unmanaged.exit_code == 2
    assert unmanaged.stderr.startswith("error: ") and "not a trainctl-managed resource" in unmanaged.stderr


def test_empty_region_prints_a_friendly_line(run: Any, scene: dict[str, str]) -> None:
    result = run("--region", "us-west-2", "resources", "list")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "No trainctl-managed resources in us-west-2."


def test_unknown_region_is_a_one_line_usage_error(run: Any) -> None:
    result = run("--region", "nowhere-1", "resources", "list")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: --region: unknown AWS region 'nowhere-1'")


def test_errors_are_json_on_stderr_with_json(run: Any) -> None:
    result = run("--region", "nowhere-1", "resources", "list", "--json")
    assert result.exit_code == 2
    assert result.stdout == ""
    error = json.loads(result.stderr)
    assert error["code"] == "ConfigurationError" and error["exit_code"] == 2 and "nowhere-1" in error["error"]


@pytest.mark.parametrize(
    "args",
    [
        ("resources", "list", "--kind", "bucket"),  # typer's own validation
        ("resources", "show", "vol-12"),  # malformed ID, refused before any call
        ("resources", "show", "i-XYZ"),
        ("--endpoint-url", "localhost:9", "resources", "list"),  # not an http(s) URL
        ("resources", "frobnicate"),
    ],
)
def test_malformed_values_exit_2(run: Any, args: tuple[str, ...]) -> None:
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_malformed_id_message_is_one_line(run: Any) -> None:
    result = run("resources", "show", "vol-12")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: resource_id: 'vol-12' is not valid")


def test_unreachable_endpoint_is_one_line_exit_1(run: Any) -> None:
    started = time.monotonic()
    result = run("--endpoint-url", "http://127.0.0.1:9", "resources", "list")
    assert result.exit_code == 1, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert "127.0.0.1:9" in result.stderr
    assert "Traceback" not in result.output and "internal error" not in result.stderr
    assert time.monotonic() - started < 15


def test_debug_shows_the_traceback(run: Any) -> None:
    result = run("--debug", "--endpoint-url", "http://127.0.0.1:9", "resources", "list")
    assert result.exit_code == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: ")


def test_unexpected_exception_is_an_internal_error(run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import tasks.inventory

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("kaboom")

    monkeypatch.setattr(tasks.inventory, "collect_inventory", boom)
    result = run("resources", "list")
    assert result.exit_code == 1
    assert result.stderr == ("error: internal error: RuntimeError('kaboom'); rerun with --debug for the traceback\n")


def test_version(run: Any) -> None:
    result = run("version", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["trainctl"]
    assert run("version").stdout.startswith("trainctl ")


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(5, "5s"), (180, "3m"), (7500, "2h5m"), (7200, "2h"), (4 * 86400, "4d"), (4 * 86400 + 3 * 3600, "4d3h")],
)
def test_format_age(seconds: int, expected: str) -> None:
    from datetime import timedelta

    assert format_age(timedelta(seconds=seconds)) == expected


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_sandbox_up_port_in_use_is_a_usage_error(run: Any) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run("sandbox", "up", "--port", str(port))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: port {port} on 127.0.0.1 is not available")


def test_sandbox_up_serves_until_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "sandbox", "up", "--port", str(port), "--state-dir", str(tmp_path)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    killer = threading.Timer(20, proc.kill)  # never let a hung sandbox hang the test run
    killer.start()
    try:
        assert proc.stdout is not None
        exported: dict[str, str] = {}
        while len(exported) < 5:
            line = proc.stdout.readline()
            assert line, f"sandbox up ended early: {proc.stderr.read() if proc.stderr else ''}"
            name, _, value = line.removeprefix("export ").strip().partition("=")
            exported[name] = value
        assert exported["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{port}"
        ec2 = boto3.client(
            "ec2",
            endpoint_url=exported["AWS_ENDPOINT_URL"],
            region_name=exported["AWS_REGION"],
            aws_access_key_id=exported["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=exported["AWS_SECRET_ACCESS_KEY"],
        )
        assert ec2.describe_volumes()["Volumes"] == []
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        killer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
