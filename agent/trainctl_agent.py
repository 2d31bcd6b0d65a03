#!/usr/bin/env python3
"""The agent's entry point on the instance: `python3 <job dir>/agent/trainctl_agent.py <verb> ...` (the verbs:
agent/cli.py). The package is shipped as files (tasks/code.py package_agent) and run with the instance's python3,
standard library only (python3 >= 3.9).

The name stays the one the single-file agent had: the controller's scripts (core/launch.py AGENT_SCRIPT) run this
file and take its presence for "an agent is installed", and instances launched by an earlier trainctl answer
the same command line with the file they have.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    # Run as a file, python puts this folder first on sys.path (not with -I) and the package is not importable:
    # its parent goes first instead (ahead of any other `agent` on the instance), so its modules import as
    # `agent.<module>`, never as top-level names.
    here = os.path.dirname(os.path.realpath(__file__))
    sys.path[:] = [os.path.dirname(here)] + [p for p in sys.path if os.path.realpath(p or ".") != here]
    sys.dont_write_bytecode = True  # the job's folder stays as shipped (no __pycache__ in it)
    from agent.cli import main

    sys.exit(main())
