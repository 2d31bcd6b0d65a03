"""The agent as shipped: package_agent's files, standard library only."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "agent"


def test_every_module_imports_only_the_standard_library_and_its_siblings() -> None:
    siblings = {p.stem for p in PACKAGE.glob("*.py")}
    for source in sorted(PACKAGE.glob("*.py")):
        outside: set[str] = set()
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                outside.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "agent.cli":
                assert source.name == "trainctl_agent.py", source  # the entry point reaches the package by name
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                outside.add(node.module.split(".")[0])
            elif isinstance(node, ast.ImportFrom):  # relative: a module of the package
                assert node.level == 1 and node.module in siblings, (source.name, node.module)
        assert outside <= set(sys.stdlib_module_names), (source.name, outside - set(sys.stdlib_module_names))
