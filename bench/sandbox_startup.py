"""How fast the sandbox is ready, against moto's bare server as the baseline, both measured in this run.

Target (issue: sandbox): ready in under 3 s from a fresh process, imports included. Each variant runs in a new
interpreter (imports are most of the cost) and is timed from process start until its first answered request.

    .venv/bin/python bench/sandbox_startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

SANDBOX = """
import time, boto3
from sandbox import Sandbox
t = time.perf_counter()
with Sandbox() as cloud:
    cloud.client("ec2").describe_instances()
    print(f"start {time.perf_counter() - t}", flush=True)
    print("ready", flush=True)
"""

BARE_MOTO = """
import time, boto3
from moto.server import ThreadedMotoServer
t = time.perf_counter()
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
host, port = server.get_host_and_port()
boto3.client("ec2", endpoint_url=f"http://{host}:{port}", region_name="us-east-1",
             aws_access_key_id="x", aws_secret_access_key="y").describe_instances()
print(f"start {time.perf_counter() - t}", flush=True)
print("ready", flush=True)
server.stop()
"""


def time_until_ready(code: str) -> tuple[float, float]:
    """(seconds from process start to the first answer, seconds of that spent after the imports)."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    after_imports = 0.0
    for line in proc.stdout:
        if line.startswith("start "):
            after_imports = float(line.split()[1])
        if line.strip() == "ready":
            elapsed = time.perf_counter() - started
            break
    else:
        raise RuntimeError("the variant never became ready")
    proc.wait(timeout=30)
    return elapsed, after_imports


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    results: dict[str, float] = {}
    for name, code in (("bare moto server", BARE_MOTO), ("trainctl sandbox", SANDBOX)):
        samples = [time_until_ready(code) for _ in range(args.runs)]
        results[name] = statistics.median(total for total, _ in samples)
        start_only = statistics.median(after for _, after in samples)
        print(f"{name:18s} cold process {results[name]:.2f} s, of which start after imports {start_only:.2f} s")
    ratio = results["trainctl sandbox"] / results["bare moto server"]
    met = results["trainctl sandbox"] < 3
    print(
        f"sandbox / bare moto: {ratio:.2f}x; target ready in < 3 s from a cold process: {'met' if met else 'NOT met'}"
    )
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
