"""Session-wide test environment: a private Prefect home and dummy AWS credentials, so no test reaches real AWS.

Set at import time (before any test module imports prefect or boto3, which read settings on import).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from sandbox import Sandbox

_ROOT = Path(tempfile.mkdtemp(prefix="trainctl-tests-"))

_ENV = {
    "PREFECT_HOME": str(_ROOT / "prefect"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "60",
    # Dummy credentials and no real config files: botocore's chain stops at these and never finds a real key.
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": str(_ROOT / "aws" / "config-does-not-exist"),
    "AWS_SHARED_CREDENTIALS_FILE": str(_ROOT / "aws" / "credentials-does-not-exist"),
    # Never ask the instance metadata service for credentials (it would hang off EC2).
    "AWS_EC2_METADATA_DISABLED": "true",
    # Price answers are cached on disk for a day (tasks/pricing.py): in the test run's folder, not the user's.
    "TRAINCTL_CACHE_DIR": str(_ROOT / "cache"),
    # The local Prefect server's files (cli/local_server.py) in the test run's folder; a flow command outside the
    # harness keeps Prefect's temporary server (tests/cli/test_server_command.py asks for the local one itself).
    "TRAINCTL_DATA_HOME": str(_ROOT / "data"),
    "TRAINCTL_PREFECT_SERVER": "temporary",
}
_CLEARED = (
    "PREFECT_API_URL",
    "PREFECT_API_KEY",
    "PREFECT_PROFILE",
    "TRAINCTL_PREFECT_PORT",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
)

for _key in _CLEARED:
    os.environ.pop(_key, None)
os.environ.update(_ENV)
Path(_ENV["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One Prefect test server per worker for the whole session (starting one costs ~20 s on an idle machine):
    flows and deployments share it. Up to 300 s to start: on a loaded 2-core machine (load 20+) it took 55-154 s,
    and past 120 s every test of the worker's flow files errored instead of running."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=300):
        yield


@contextmanager
def exported_sandbox(*, boot_delay: float = 0.2) -> Iterator[Sandbox]:
    """A sandbox whose environment the product code picks up, as a user's `export` would; restored after."""
    from blocks.aws import clear_client_cache
    from sandbox import Sandbox

    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    with Sandbox(boot_delay=boot_delay) as cloud:
        os.environ.update(cloud.env)
        clear_client_cache()
        try:
            yield cloud
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            clear_client_cache()


def raw_volume(ec2: Any, tags: dict[str, str], zone: str = "us-east-1a") -> str:
    """A 10 GiB volume made directly with EC2 (not through trainctl), carrying exactly `tags`: a scene's own
    resources (trainctl's tags) or other people's (none, or everything but the managed tag)."""
    from core import tags as t

    specs = t.tag_specifications("volume", tags) if tags else []
    return str(ec2.create_volume(AvailabilityZone=zone, Size=10, TagSpecifications=specs)["VolumeId"])


def raw_instance(ec2: Any, tags: dict[str, str], zone: str = "us-east-1a") -> str:
    """A t3.micro made directly with EC2 (not through trainctl), carrying exactly `tags`."""
    from core import tags as t

    image_id = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    made = ec2.run_instances(
        ImageId=image_id,
        InstanceType="t3.micro",
        MinCount=1,
        MaxCount=1,
        Placement={"AvailabilityZone": zone},
        TagSpecifications=t.tag_specifications("instance", tags),
    )
    return str(made["Instances"][0]["InstanceId"])


def ship_agent(folder: Path) -> None:
    """The agent as train-launch ships it: package_agent's tarball unpacked into `folder` (`folder/agent/*.py`)."""
    import tarfile

    from tasks.code import package_agent

    with tempfile.TemporaryDirectory() as tmp, tarfile.open(package_agent(f"{tmp}/agent.tar.gz").path) as tar:
        tar.extractall(folder, filter="data")


def start_agent_job(instance_root: str, instance_id: str, job: str, bucket: str, command: list[str]) -> None:
    """A job run by the real agent on a sandbox instance (SSM Online), shipped where train-launch ships it: the
    agent and its spec in the job's folder. The instance is kept when the job ends; `bucket` gets its records."""
    import json

    from core import jobs
    from core.launch import AGENT_SPEC, start_agent_script
    from tasks.ssm import run_command

    job_dir = Path(instance_root) / jobs.instance_job_dir(job).lstrip("/")
    (job_dir / jobs.CODE_DIR).mkdir(parents=True, exist_ok=True)
    ship_agent(job_dir)
    spec = {"job": job, "attempt": 1, "bucket": bucket, "command": command, "keep_instance": True}
    (job_dir / AGENT_SPEC).write_text(json.dumps(spec))
    run_command.fn(instance_id, start_agent_script(job))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Flow tests first. `make test` runs files in parallel (`--dist loadfile`), handing them out in this order: the
    sandbox flow files take 30-130 s each, the rest a few seconds, so starting the long ones first keeps one of
    them from running alone at the end."""
    items.sort(key=lambda item: 0 if item.nodeid.startswith("tests/flows/") else 1)
