"""Transfer throughput: trainctl vs `aws s3 cp --recursive` vs s5cmd, same data, same endpoint, one run.

    python -m bench.transfer                        # 1 GB file + 10,000 x 10 KB files, up and down
    python -m bench.transfer --big-mib 256 --small-count 2000   # a quick run

The endpoint is the local sandbox (moto server) in a process of its own — as a real endpoint is never inside
trainctl's process; in-process, trainctl's own Python work (listing, checksums, placing files) would fight the
server for the GIL while aws-cli and s5cmd, being other processes, would not. No network, and moto itself
(Python, ~3–5 ms a request) is the bottleneck, so the ratios measure per-request overhead and parallelism more
than bandwidth. On AWS the ratios will differ. trainctl's figure includes its planning listing and checksum
verification (unless --no-verify); the other tools verify nothing. With --repeat N each figure is the best of N.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

BUCKET = "bench"
_ENDPOINT = """
import json, sys
from sandbox import Sandbox
with Sandbox() as cloud:
    print(json.dumps(cloud.env), flush=True)
    sys.stdin.read()  # serve until the bench closes this pipe
"""


@contextmanager
def endpoint() -> Iterator[dict[str, str]]:
    """The sandbox in its own process; its environment (AWS_ENDPOINT_URL, credentials, region)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _ENDPOINT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert proc.stdout is not None
        yield json.loads(proc.stdout.readline())
    finally:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _tree(root: Path, kind: str, big_mib: int, small_count: int, small_kib: int) -> int:
    root.mkdir(parents=True)
    if kind == "big":
        with (root / "big.bin").open("wb") as f:
            for _ in range(big_mib):
                f.write(os.urandom(1024 * 1024))
        return big_mib * 1024 * 1024
    for i in range(small_count):
        folder = root / f"d{i % 100:02d}"
        folder.mkdir(exist_ok=True)
        (folder / f"f{i:05d}.bin").write_bytes(os.urandom(small_kib * 1024))
    return small_count * small_kib * 1024


def _timed(fn: Callable[[], object], cleanup: Callable[[], object], repeat: int) -> float:
    """The best of `repeat` runs (a shared machine's noise only ever slows a run down)."""
    best = float("inf")
    for i in range(repeat):
        if i:
            cleanup()
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--big-mib", type=int, default=1024, help="size of the single big file (MiB)")
    parser.add_argument("--small-count", type=int, default=10_000, help="number of small files")
    parser.add_argument("--small-kib", type=int, default=10, help="size of each small file (KiB)")
    parser.add_argument("--no-verify", action="store_true", help="trainctl without its checksum verification")
    parser.add_argument("--repeat", type=int, default=1, help="best of N runs per figure")
    args = parser.parse_args()

    os.environ.setdefault("AWS_REGION", "us-east-1")
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    import boto3

    from blocks.aws import clear_client_cache
    from core.transfer import TransferRequest
    from flows.transfer import raise_on_mismatch, run_transfer
    from tasks.transfer import find_s5cmd

    s5cmd, aws = find_s5cmd(), shutil.which("aws")
    if not s5cmd or not aws:
        raise SystemExit(f"needs s5cmd ({s5cmd}) and the aws CLI ({aws})")
    work = Path(tempfile.mkdtemp(prefix="trainctl-bench-transfer-"))
    results: dict[tuple[str, str, str], float] = {}
    with endpoint() as cloud_env:
        os.environ.update(cloud_env)
        clear_client_cache()
        env = {**os.environ}
        url = cloud_env["AWS_ENDPOINT_URL"]
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        print(f"endpoint: local sandbox (moto server, own process) at {url} — no network; AWS ratios will differ")
        print(
            f"s5cmd: {s5cmd}; aws: {subprocess.run([aws, '--version'], capture_output=True, text=True).stdout.strip()}"
        )
        for kind in ("big", "small"):
            src = work / f"src-{kind}"
            nbytes = _tree(src, kind, args.big_mib, args.small_count, args.small_kib)
            label = f"1 x {args.big_mib} MiB" if kind == "big" else f"{args.small_count} x {args.small_kib} KiB"
            for tool in ("trainctl", "aws-cli", "s5cmd"):
                prefix = f"s3://{BUCKET}/{tool}-{kind}/"
                down = work / f"down-{tool}-{kind}"

                def up(tool: str = tool, src: Path = src, prefix: str = prefix) -> None:
                    if tool == "trainctl":
                        request = TransferRequest(src=str(src), dst=prefix, verify=not args.no_verify)
                        raise_on_mismatch(run_transfer(request))
                    elif tool == "aws-cli":
                        cmd = [aws, "s3", "cp", "--recursive", "--only-show-errors", "--endpoint-url", url]
                        subprocess.run([*cmd, str(src), prefix], check=True, env=env)
                    else:
                        cmd = [s5cmd, "--endpoint-url", url, "--log", "error", "cp"]
                        subprocess.run([*cmd, f"{src}/*", prefix], check=True, env=env)

                def get(tool: str = tool, prefix: str = prefix, down: Path = down) -> None:
                    if tool == "trainctl":
                        request = TransferRequest(src=prefix, dst=str(down), verify=not args.no_verify)
                        raise_on_mismatch(run_transfer(request))
                    elif tool == "aws-cli":
                        cmd = [aws, "s3", "cp", "--recursive", "--only-show-errors", "--endpoint-url", url]
                        subprocess.run([*cmd, prefix, str(down)], check=True, env=env)
                    else:
                        cmd = [s5cmd, "--endpoint-url", url, "--log", "error", "cp"]
                        subprocess.run([*cmd, f"{prefix}*", f"{down}/"], check=True, env=env)

                def clear(tool: str = tool, kind: str = kind) -> None:
                    keys = [
                        {"Key": o["Key"]}
                        for page in s3.get_paginator("list_objects_v2").paginate(
                            Bucket=BUCKET, Prefix=f"{tool}-{kind}/"
                        )
                        for o in page.get("Contents", [])
                    ]
                    for i in range(0, len(keys), 1000):  # also frees moto's memory before the next tool
                        s3.delete_objects(Bucket=BUCKET, Delete={"Objects": keys[i : i + 1000], "Quiet": True})

                def clear_down(down: Path = down) -> None:
                    shutil.rmtree(down, ignore_errors=True)

                results[(label, "upload", tool)] = nbytes / 1e6 / _timed(up, clear, args.repeat)
                results[(label, "download", tool)] = nbytes / 1e6 / _timed(get, clear_down, args.repeat)
                print(
                    f"  {label:>20} {tool:>9}: up {results[(label, 'upload', tool)]:8.1f} MB/s, "
                    f"down {results[(label, 'download', tool)]:8.1f} MB/s",
                    flush=True,
                )
                clear_down()
                clear()
            shutil.rmtree(src)
    shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"{'data':>20} {'direction':>9} {'trainctl':>9} {'aws-cli':>9} {'s5cmd':>9}   vs s5cmd  vs aws-cli")
    for (label, direction, tool), _ in sorted(results.items()):
        if tool != "trainctl":
            continue
        ours, awscli, s5 = (results[(label, direction, t)] for t in ("trainctl", "aws-cli", "s5cmd"))
        print(
            f"{label:>20} {direction:>9} {ours:9.1f} {awscli:9.1f} {s5:9.1f}   {ours / s5:7.2f}x  {ours / awscli:8.2f}x"
        )
    print("MB/s (10^6 bytes). Targets: >= 1.00x s5cmd, >= 2.00x aws-cli.")


if __name__ == "__main__":
    main()
