"""The CLI is a thin front (DESIGN.md section 1): it reaches AWS only through flows/ (a flow or an operation), and
its start (`trainctl --help`, a usage error) imports neither Prefect nor a task module."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
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
