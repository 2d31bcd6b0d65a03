"""The agent as shipped: package_agent's files, standard library only, self-contained, run by their entry point
(core/launch.py AGENT_SCRIPT) with a bare python and nothing of ours on sys.path."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from core import jobs
from core.launch import AGENT_SCRIPT
from tests.conftest import ship_agent

PACKAGE = Path(__file__).resolve().parents[2] / "agent"


def _optional_imports(tree: ast.AST) -> set[int]:
    """The import statements inside `try: ... except ImportError:`: optional speed-ups with a stdlib fallback
    (awscrt's C CRCs in transfer_helper.py), not requirements."""
    optional: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
            isinstance(h.type, ast.Name) and h.type.id == "ImportError" for h in node.handlers
        ):
            optional |= {
                id(n) for stmt in node.body for n in ast.walk(stmt) if isinstance(n, ast.Import | ast.ImportFrom)
            }
    return optional


def test_every_module_imports_only_the_standard_library_and_its_siblings() -> None:
    siblings = {p.stem for p in PACKAGE.glob("*.py")}
    for source in sorted(PACKAGE.glob("*.py")):
        outside: set[str] = set()
        tree = ast.parse(source.read_text())
        optional = _optional_imports(tree)
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            if isinstance(node, ast.Import):
                outside.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "agent.cli":
                assert source.name == "trainctl_agent.py", source  # the entry point reaches the package by name
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                outside.add(node.module.split(".")[0])
            elif isinstance(node, ast.ImportFrom):  # relative: a module of the package
                assert node.level == 1 and node.module in siblings, (source.name, node.module)
        assert outside <= set(sys.stdlib_module_names), (source.name, outside - set(sys.stdlib_module_names))


def _bare(entry: Path, *args: str, root: Path) -> subprocess.CompletedProcess[str]:
    """The entry point run as the instance runs it, but with -I (no PYTHON* variables, no script folder or cwd
    on sys.path) and -S (no site-packages: neither trainctl nor anything installed)."""
    return subprocess.run(
        [sys.executable, "-I", "-S", str(entry), *args],
        capture_output=True,
        text=True,
        cwd=root,
        env={"PATH": "/usr/bin:/bin", "TRAINCTL_ROOT": str(root)},
        timeout=60,
    )


def test_the_shipped_package_runs_its_cli_with_a_bare_python(tmp_path: Path) -> None:
    job_dir = tmp_path / jobs.instance_job_dir("demo").lstrip("/")
    ship_agent(job_dir)  # where train-launch unpacks it
    shipped = job_dir / "agent"
    assert sorted(p.name for p in shipped.iterdir()) == sorted(p.name for p in PACKAGE.glob("*.py"))
    entry = job_dir / AGENT_SCRIPT
    helped = _bare(entry, "--help", root=tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert all(verb in helped.stdout for verb in ("run", "status", "poll", "prefetch", "stop")), helped.stdout
    # A cheap subcommand through every layer: poll reads the job's folder under $TRAINCTL_ROOT.
    (job_dir / jobs.LOG_FILE).write_text("step 1\nstep 2\n")
    (job_dir / jobs.EXIT_CODE_FILE).write_text("0\n")
    polled = _bare(entry, "poll", "--job", "demo", "--offset", "7", root=tmp_path)
    assert polled.returncode == 0, polled.stderr
    answer = json.loads(polled.stdout)
    assert (answer["installed"], answer["status"], answer["exit_code"]) == (True, "succeeded", 0)
    assert (answer["chunk"], answer["job_dir"]) == ("step 2\n", str(job_dir))
    refused = _bare(entry, "poll", "--job", "Not A Job", root=tmp_path)
    assert refused.returncode == 2 and "job:" in json.loads(refused.stderr)["error"]
    assert not (shipped / "__pycache__").exists()  # the job's folder stays as shipped
