"""The temporary Prefect server a command starts dies with the command, however the command ends.

Flow commands use the local server (cli/local_server.py); a temporary one is started only with
TRAINCTL_PREFECT_SERVER=temporary.

Prefect starts its temporary server (`SubprocessASGIServer`, when PREFECT_API_URL is unset) with `subprocess.Popen`
in `prefect.server.api.server`, and stops it from an atexit hook: a killed command (kill -9, OOM) left the server
running under PID 1. `tie_temporary_server()` gives that one module a `subprocess` whose Popen runs Prefect's own
command (arguments and environment untouched) under cli/_server_child.py, a watchdog that ends the server when
this process is gone. Prefect's source is not changed.

The module is patched when it is imported, not imported here: importing it costs ~3 s, and most commands never
start a server (`version`, `sandbox up`, commands with PREFECT_API_URL set).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import subprocess
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SERVER_MODULE = "prefect.server.api.server"
WATCHDOG = Path(__file__).with_name("_server_child.py")


def watched(command: Sequence[str]) -> list[str]:
    """`command` run under the watchdog, tied to this process."""
    return [sys.executable, "-I", str(WATCHDOG), str(os.getpid()), "--", *command]


class _WatchedSubprocess(types.ModuleType):
    """`subprocess` as Prefect's server module sees it: Popen starts the command under the watchdog."""

    def __init__(self) -> None:
        super().__init__("subprocess")

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    @staticmethod
    def Popen(args: Sequence[str], *rest: Any, **kwargs: Any) -> subprocess.Popen[Any]:
        return subprocess.Popen(watched(args), *rest, **kwargs)


def _patch(module: types.ModuleType) -> None:
    if not isinstance(getattr(module, "subprocess", None), _WatchedSubprocess):
        module.subprocess = _WatchedSubprocess()  # type: ignore[attr-defined]


class _PatchingLoader(importlib.abc.Loader):
    """The module's own loader, patching the module once it has run."""

    def __init__(self, inner: importlib.abc.Loader) -> None:
        self.inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        self.inner.exec_module(module)
        _patch(module)

    def __getattr__(self, name: str) -> Any:  # get_source and friends, for tracebacks
        return getattr(self.inner, name)


class _PatchOnImport(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != SERVER_MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _PatchingLoader(spec.loader)
        return spec


def tie_temporary_server() -> None:
    """From now on, a temporary Prefect server started by this process ends when this process does."""
    if SERVER_MODULE in sys.modules:
        _patch(sys.modules[SERVER_MODULE])
    elif not any(isinstance(finder, _PatchOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())
