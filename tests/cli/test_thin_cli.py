"""The CLI is a thin front (DESIGN.md section 1): it reaches AWS only through flows/ (a flow or an operation), and
its start (`trainctl --help`, a usage error) imports neither Prefect nor a task module."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _imported_modules(path: Path) -> set[str]:
    """Every module an import statement of the file names, nested imports (inside functions) included."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            if node.module == "tasks":  # `from tasks import ebs`
                names.update(f"tasks.{alias.name}" for alias in node.names)
    return names


def test_no_cli_module_imports_a_task_module() -> None:
    found = {
        path.name: sorted(m for m in _imported_modules(path) if m == "tasks" or m.startswith("tasks."))
        for path in sorted((REPO / "cli").glob("*.py"))
    }
    assert {name: mods for name, mods in found.items() if mods} == {}
    # The scan sees nested imports: the commands' own lazy imports of flows/ are found.
    assert "flows.ebs" in _imported_modules(REPO / "cli" / "ebs.py")
    assert "flows.jobs" in _imported_modules(REPO / "cli" / "train.py")


def test_the_cli_starts_without_prefect_or_tasks() -> None:
    probe = (
        "import json, sys\n"
        "import cli.main\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {'prefect', 'tasks', 'flows'})))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == []


# A command that runs no flow, in a fresh process as a user runs it: typer's CliRunner over cli.main, then what the
# process imported. Prefect never imported means no Prefect server (temporary or not) was started or asked.
_COMMANDS_PROBE = """
import json, sys
from typer.testing import CliRunner
from cli.main import app
results = [CliRunner().invoke(app, args) for args in json.loads(sys.argv[1])]
print(json.dumps({"runs": [[r.exit_code, r.output] for r in results], "prefect": "prefect" in sys.modules}))
"""


def test_commands_that_run_no_flow_never_import_prefect(tmp_path: Path) -> None:
    import os

    from core import tags as t
    from core.jobs import AttemptRecord, JobRecord, JobStatus
    from tasks.jobs import write_record
    from tests.conftest import exported_sandbox, raw_instance, raw_volume

    with exported_sandbox() as cloud:
        ec2 = cloud.client("ec2")
        instance = raw_instance(ec2, t.managed_tags(job="thin", role=t.Role.TRAIN))
        volume = raw_volume(ec2, t.managed_tags(job="thin", role=t.Role.DATA, name="thin-data"))
        cloud.client("s3").create_bucket(Bucket="thin-bucket")
        now = datetime.now(UTC)
        attempt = AttemptRecord(number=1, instance_id=instance, created_at=now)
        write_record.fn(
            JobRecord(name="thin", bucket="thin-bucket", status=JobStatus.PENDING, attempts=[attempt], created_at=now),
            expected_etag=None,
        )
        commands = [
            ["--help"],
            ["resources", "list", "--json"],
            ["ebs", "attach", volume, instance, "--json"],
            ["train", "status", "thin", "--bucket", "thin-bucket", "--json"],
        ]
        # An empty Prefect home of its own: a server started (or a database made) would leave files in it.
        home = tmp_path / "prefect-home"
        home.mkdir()
        env = {**os.environ, "PREFECT_HOME": str(home)}
        env.pop("PREFECT_API_URL", None)
        done = subprocess.run(
            [sys.executable, "-c", _COMMANDS_PROBE, json.dumps(commands)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        answer = json.loads(done.stdout.splitlines()[-1])
        attached = ec2.describe_volumes(VolumeIds=[volume])["Volumes"][0]["Attachments"]
    assert answer["prefect"] is False
    assert [code for code, _ in answer["runs"]] == [0, 0, 0, 0], answer["runs"]
    assert "resources" in answer["runs"][0][1]  # --help lists the commands
    listed = json.loads(answer["runs"][1][1])
    assert {r["id"] for r in listed["instances"]} == {instance} and {r["id"] for r in listed["volumes"]} == {volume}
    assert [(a["InstanceId"], a["State"]) for a in attached] == [(instance, "attached")]
    status = json.loads(answer["runs"][3][1])
    assert (status["job"]["name"], status["instance_state"]) == ("thin", "running")
    assert list(home.iterdir()) == []
