"""A catalogue of bad inputs for every CLI group: each gets exactly one clear line on stderr, exit 2 (1 when AWS
itself refuses), and changes nothing in AWS.

One module-scoped sandbox holds trainctl's resources and other people's (a volume, a snapshot and an instance
without the managed tag). After each case the sandbox's state — instances, volumes, snapshots, their tags, the
buckets and the objects in the test bucket, one call per kind — must equal the state read once after the scene
was set (so a case that changed something fails itself, and the ones after it).
No case may start a Prefect flow: a bad input is refused before that, or it is a bug.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest
from typer.testing import CliRunner

from cli.main import app
from core import tags as t
from sandbox import Sandbox
from tests.conftest import raw_instance, raw_volume

BUCKET = "bad-inputs-bucket"
ZONE = "us-east-1a"
LONG = "x" * 300


class Case(NamedTuple):
    args: tuple[str, ...]
    exit_code: int = 2
    says: str | None = None  # a piece of the one line: the field named, or the rule


def case(*args: str, exit_code: int = 2, says: str | None = None) -> Case:
    return Case(args, exit_code, says)


def launch_job(*options: str) -> tuple[str, ...]:
    """`train launch` with valid options but the given ones (later options override earlier ones)."""
    base = ("--name", "good-job", "--bucket", BUCKET, "--instance-type", "t3.micro")
    return ("train", "launch", *base, *options, "--", "python", "train.py")


def prewarm(*options: str) -> tuple[str, ...]:
    return ("ebs", "prewarm", f"s3://{BUCKET}/data/", *options)


IDS = {
    "resources show malformed": case("resources", "show", "not-an-id", says="resource_id"),
    "resources show short id": case("resources", "show", "vol-12", says="resource_id"),
    "resources show wrong kind (AMI)": case("resources", "show", "ami-0123456789abcdef0", says="resource_id"),
    "resources show someone else's volume": case("resources", "show", "{theirs_volume}", says="not a trainctl"),
    "resources show someone else's instance": case("resources", "show", "{theirs_instance}", says="not a trainctl"),
    "resources show uppercase id": case("resources", "show", "VOL-0123456789ABCDEF0", says="resource_id"),
    "attach malformed volume": case("ebs", "attach", "vol-zz", "{our_instance}", says="volume_id"),
    "attach malformed instance": case("ebs", "attach", "{our_volume}", "i-123", says="instance_id"),
    "attach snapshot as volume": case("ebs", "attach", "{our_snapshot}", "{our_instance}", says="volume_id"),
    "attach volume to a volume": case("ebs", "attach", "{our_volume}", "{our_volume}", says="instance_id"),
    "attach unknown volume": case(
        "ebs", "attach", "vol-0123456789abcdef0", "{our_instance}", exit_code=1, says="'vol-0123456789abcdef0'"
    ),
    "detach malformed": case("ebs", "detach", "vol-", says="volume_id"),
    "detach unknown volume": case("ebs", "detach", "vol-0123456789abcdef0", exit_code=1, says="NotFound"),
    "delete a snapshot id as volume": case("ebs", "delete", "{our_snapshot}", "--yes", says="volume_id"),
    "delete id with a newline": case("ebs", "delete", "vol-0123\n456789abcdef0", "--yes", says="volume_id"),
    "snapshot malformed": case("ebs", "snapshot", "snap-0123456789abcdef0", says="volume_id"),
    "snapshot unknown volume": case("ebs", "snapshot", "vol-0123456789abcdef0", exit_code=1, says="does not exist"),
    "snapshots --volume wrong kind": case("ebs", "snapshots", "--volume", "i-0123456789abcdef0", says="--volume"),
    "restore malformed": case("ebs", "restore", "snap-x", "--az", ZONE, "--name", "r", says="snapshot_id"),
    "restore volume id": case("ebs", "restore", "{our_volume}", "--az", ZONE, "--name", "r", says="snapshot_id"),
    "restore unknown snapshot": case(
        "ebs", "restore", "snap-0123456789abcdef0", "--az", ZONE, "--name", "r", exit_code=1, says="does not exist"
    ),
    "move malformed": case("ebs", "move", "volume-1", "us-east-1b", says="volume_id"),
    "move unknown volume": case("ebs", "move", "vol-0123456789abcdef0", "us-east-1b", exit_code=1, says="NotFound"),
    "teardown malformed id": case("teardown", "not-an-id", says="ids"),
    "teardown wrong kind": case("teardown", "ami-0123456789abcdef0", says="ids"),
    "teardown subnet id": case("teardown", "subnet-0123456789abcdef0", says="ids"),
}

OTHER_PEOPLES = {
    "attach someone else's volume": case("ebs", "attach", "{theirs_volume}", "{our_instance}", says="--adopt"),
    "attach to someone else's instance": case("ebs", "attach", "{our_volume}", "{theirs_instance}", says="not managed"),
    "detach someone else's volume": case("ebs", "detach", "{theirs_attached}", says="--adopt"),
    "delete someone else's volume": case("ebs", "delete", "{theirs_volume}", "--yes", says="adopt"),
    "delete someone else's volume with --force": case(
        "ebs", "delete", "{theirs_volume}", "--force", "--yes", says="trainctl:managed=true"
    ),
    "snapshot someone else's volume": case("ebs", "snapshot", "{theirs_volume}", says="--adopt"),
    "restore someone else's snapshot": case(
        "ebs", "restore", "{theirs_snapshot}", "--az", "us-east-1b", "--name", "stolen", says="will not restore"
    ),
    "move someone else's volume": case("ebs", "move", "{theirs_volume}", "us-east-1b", says="will not move"),
    "prewarm someone else's volume": case(*prewarm("--volume", "{theirs_volume}"), says="will not prewarm"),
    "prewarm on someone else's instance": case(
        *prewarm("--volume", "{our_volume}", "--instance", "{theirs_instance}"), says="not managed"
    ),
    "delete an attached volume": case("ebs", "delete", "{our_attached}", "--force", "--yes", says="detach"),
    "delete a protected young volume": case("ebs", "delete", "{our_volume}", "--yes", says="--force"),
    "force-detach from a running instance": case("ebs", "detach", "{our_attached}", "--force", says="--force"),
    "move an attached volume": case("ebs", "move", "{our_attached}", "us-east-1b", says="detach"),
    "attach across zones": case("ebs", "attach", "{our_volume_b}", "{our_instance}", says="us-east-1b"),
    "prewarm a volume in use": case(*prewarm("--volume", "{our_attached}"), says="in use"),
}

NAMES = {
    f"create name {label}": case("ebs", "create", name, "--size", "5", says="name")
    for label, name in {
        "with ;$(id)": "a;$(id)",
        "with backticks": "a`id`",
        "with a newline": "line\nbreak",
        "with NUL": "nul\x00name",
        "with U+202E": "evil\u202egpj.exe",
        "with U+2066": "iso\u2066late",
        "of 300 characters": LONG,
        "empty": "",
        "with a space": "two words",
        "with a slash": "a/b",
        "with a pipe": "a|b",
        "with $HOME": "$HOME",
        "with a redirect": "a>b",
        "with a leading underscore": "_x",
    }.items()
} | {
    "create duplicate name": case("ebs", "create", "ours-data", "--size", "5", says="already exists"),
    "create --job with uppercase": case("ebs", "create", "fine", "--size", "5", "--job", "Bad", says="--job"),
    "restore name with ;$(id)": case(
        "ebs", "restore", "{our_snapshot}", "--az", ZONE, "--name", "a;$(id)", says="--name"
    ),
    "restore name of 300 characters": case(
        "ebs", "restore", "{our_snapshot}", "--az", ZONE, "--name", LONG, says="300 characters"
    ),
    "restore duplicate name": case(
        "ebs", "restore", "{our_snapshot}", "--az", ZONE, "--name", "ours-data", says="already exists"
    ),
    "prewarm new name with newline": case(*prewarm("--new", "a\nb", "--size", "5"), says="name"),
    "prewarm new name with U+202E": case(*prewarm("--new", "ab\u202ec", "--size", "5"), says="U+202E"),
    "prewarm job with ;": case(*prewarm("--new", "ok", "--size", "5", "--job", "j;b"), says="job"),
    "launch job name with ;$(id)": case(*launch_job("--name", "a;$(id)"), says="name"),
    "launch job name uppercase": case(*launch_job("--name", "BadJob"), says="name"),
    "launch job name of 300 characters": case(*launch_job("--name", LONG), says="300 characters"),
    "launch job name with newline": case(*launch_job("--name", "job\n"), says="name"),
    "launch template name with a space": case(*launch_job("--template", "my template"), says="--template"),
    "status job name with backticks": case("train", "status", "a`id`", "--bucket", BUCKET, says="job"),
    "logs job name with U+202E": case("train", "logs", "ab\u202e", "--bucket", BUCKET, says="job"),
    "stop job name with NUL": case("train", "stop", "a\x00", "--bucket", BUCKET, says="job"),
    "teardown job name with ;": case("teardown", "--job", "a;b", says="job"),
    "teardown policy name with a space": case("teardown", "--all", "--policy", "my policy", says="policy"),
    "resources list job filter with ;": case("resources", "list", "--job", "a;b", says="--job"),
    "account name with a space": case("--account", "my account", "ebs", "snapshots", says="--account"),
}

DEVICES = {
    f"attach --device {label}": case(
        "ebs", "attach", "{our_volume}", "{our_instance}", "--device", device, says="device"
    )
    for label, device in {
        "/dev/sda1;reboot": "/dev/sda1;reboot",
        "the root /dev/sda1": "/dev/sda1",
        "/dev/xvda": "/dev/xvda",
        "instance store /dev/sdb": "/dev/sdb",
        "/dev/sdz": "/dev/sdz",
        "with a newline": "/dev/sdf\n",
        "/dev/nvme1n1": "/dev/nvme1n1",
        "relative sdf": "sdf",
        "$(reboot)": "/dev/sd$(reboot)",
        "/dev/sdf7": "/dev/sdf7",
    }.items()
}

SIZES_AND_ZONES = {
    "size 0": case("ebs", "create", "v", "--size", "0", says="size_gib"),
    "size negative": case("ebs", "create", "v", "--size", "-5", says="size_gib"),
    "size too big": case("ebs", "create", "v", "--size", "20000", says="size_gib"),
    "size not a number": case("ebs", "create", "v", "--size", "ten", says="--size"),
    "st1 below its minimum": case("ebs", "create", "v", "--size", "10", "--type", "st1", says="size_gib"),
    "unknown type": case("ebs", "create", "v", "--size", "5", "--type", "gp9", says="--type"),
    "gp3 iops too low": case("ebs", "create", "v", "--size", "10", "--iops", "100", says="iops"),
    "gp3 iops too high": case("ebs", "create", "v", "--size", "100", "--iops", "20000", says="iops"),
    "gp3 iops per GiB": case("ebs", "create", "v", "--size", "4", "--iops", "3000", says="per GiB"),
    "gp2 takes no iops": case("ebs", "create", "v", "--size", "10", "--type", "gp2", "--iops", "3000", says="iops"),
    "io2 without iops": case("ebs", "create", "v", "--size", "10", "--type", "io2", says="iops"),
    "throughput too high": case("ebs", "create", "v", "--size", "10", "--throughput", "2000", says="throughput"),
    "throughput over iops": case("ebs", "create", "v", "--size", "10", "--throughput", "900", says="throughput"),
    "io1 takes no throughput": case(
        "ebs", "create", "v", "--size", "10", "--type", "io1", "--iops", "100", "--throughput", "200", says="throughput"
    ),
    "zone unknown": case("ebs", "create", "v", "--size", "5", "--az", "us-east-1z", says="availability_zone"),
    "zone malformed": case("ebs", "create", "v", "--size", "5", "--az", "east", says="--az"),
    "zone with ;": case("ebs", "create", "v", "--size", "5", "--az", "us-east-1a;id", says="--az"),
    "zone and type both": case("ebs", "create", "v", "--size", "5", "--az", ZONE, "--for-type", "t3.micro"),
    "type not offered": case("ebs", "create", "v", "--size", "5", "--for-type", "t3.micro;id", says="instance_type"),
    "instance option wrong kind": case("ebs", "create", "v", "--size", "5", "--instance", "vol-0123456789abcdef0"),
    "restore smaller than the snapshot": case(
        "ebs", "restore", "{our_snapshot}", "--az", ZONE, "--name", "small", "--size", "1", says="size_gib"
    ),
    "restore io1 without iops": case(
        "ebs", "restore", "{our_snapshot}", "--az", ZONE, "--name", "r", "--type", "io1", "--size", "10", says="iops"
    ),
    "restore zone unknown": case(
        "ebs", "restore", "{our_snapshot}", "--az", "us-east-1z", "--name", "r", says="availability_zone"
    ),
    "restore zone malformed": case("ebs", "restore", "{our_snapshot}", "--az", "nowhere", "--name", "r", says="--az"),
    "move zone unknown": case("ebs", "move", "{our_volume}", "us-east-1z", says="availability_zone"),
    "move zone malformed": case("ebs", "move", "{our_volume}", "b@d", says="az"),
    "prewarm new without size": case(*prewarm("--new", "n"), says="--size"),
    "prewarm size for an existing volume": case(*prewarm("--volume", "{our_volume}", "--size", "5"), says="--size"),
    "prewarm new size 0": case(*prewarm("--new", "n", "--size", "0"), says="size_gib"),
    "prewarm new gp3 iops too high": case(*prewarm("--new", "n", "--size", "10", "--iops", "99999"), says="iops"),
    "prewarm both volume and new": case(*prewarm("--volume", "{our_volume}", "--new", "n", "--size", "5")),
    "prewarm neither volume nor new": case(*prewarm(), says="exactly one"),
    "prewarm zone malformed": case(*prewarm("--new", "n", "--size", "5", "--az", "zone-a"), says="availability_zone"),
    "prewarm instance type with ;": case(
        *prewarm("--new", "n", "--size", "5", "--instance-type", "m5.large;id"), says="instance_type"
    ),
    "prewarm filesystem ntfs": case(*prewarm("--new", "n", "--size", "5", "--filesystem", "ntfs"), says="--filesystem"),
}

PATHS_AND_URIS = {
    "prewarm source not s3": case("ebs", "prewarm", "/data", "--new", "n", "--size", "5", says="source"),
    "prewarm source bucket uppercase": case("ebs", "prewarm", "s3://Data/x", "--new", "n", "--size", "5"),
    "prewarm source bucket an IP": case("ebs", "prewarm", "s3://1.2.3.4/x", "--new", "n", "--size", "5"),
    "prewarm source with ..": case("ebs", "prewarm", "s3://bucket/a/../b", "--new", "n", "--size", "5"),
    "prewarm target dir ..": case(*prewarm("--new", "n", "--size", "5", "--target-dir", "../etc"), says="target_dir"),
    "prewarm target dir newline": case(
        *prewarm("--new", "n", "--size", "5", "--target-dir", "a\nb"), says="target_dir"
    ),
    "prewarm target dir manifest": case(
        *prewarm("--new", "n", "--size", "5", "--target-dir", ".trainctl"), says="target_dir"
    ),
    "launch bucket s3://s3://": case(*launch_job("--bucket", "s3://s3://jobs"), says="'s3://s3://jobs'"),
    "launch bucket with a prefix": case(*launch_job("--bucket", "s3://jobs/prefix"), says="without a key"),
    "launch bucket uppercase": case(*launch_job("--bucket", "Jobs"), says="bucket"),
    "launch checkpoint uri not s3": case(*launch_job("--checkpoint-uri", "/ckpt"), says="checkpoint_uri"),
    "launch checkpoint uri without a key": case(*launch_job("--checkpoint-uri", "s3://ckpts"), says="checkpoint_uri"),
    "launch mount point relative": case(
        *launch_job("--volume", "{our_volume}", "--mount-point", "mnt/data"), says="mount_point"
    ),
    "launch mount point with ..": case(
        *launch_job("--volume", "{our_volume}", "--mount-point", "/mnt/../etc"), says="mount_point"
    ),
    "launch mount point without a volume": case(*launch_job("--mount-point", "/mnt/data"), says="mount_point"),
    "launch data not s3": case(*launch_job("--data", "/datasets/x"), says="data"),
    "launch data strategy unknown": case(*launch_job("--data", f"s3://{BUCKET}/d/", "--data-strategy", "fast")),
    "launch data strategy without data": case(*launch_job("--data-strategy", "direct-s3"), says="--data s3://"),
    "launch existing-ebs without a volume": case(*launch_job("--data-strategy", "existing-ebs"), says="--volume"),
    "launch direct-s3 with a volume": case(
        *launch_job("--data", f"s3://{BUCKET}/d/", "--data-strategy", "direct-s3", "--volume", "{our_volume}"),
        says="data_volume_id",
    ),
    "launch data runs zero": case(*launch_job("--data", f"s3://{BUCKET}/d/", "--data-runs", "0"), says="data_runs"),
    "launch code dir missing": case(*launch_job("--code-dir", "/nonexistent/code"), says="code_dir"),
    "launch spec file missing": case(*launch_job("--spec", "/nonexistent/spec.json"), says="--spec"),
    "status bucket s3://s3://": case("train", "status", "job", "--bucket", "s3://s3://jobs", says="'s3://s3://jobs'"),
    "logs bucket with a prefix": case("train", "logs", "job", "--bucket", "s3://jobs/x", says="--bucket"),
    "stop bucket uppercase": case("train", "stop", "job", "--bucket", "JOBS", says="--bucket"),
    "status unknown job": case("train", "status", "no-such-job", "--bucket", BUCKET, says="no job"),
    "transfer missing local source": case("transfer", "/nonexistent/src", f"s3://{BUCKET}/x/", says="source"),
    "transfer bad bucket": case("transfer", "s3://B/x", "/tmp/x", says="bucket"),
    "transfer s3 key with ..": case("transfer", f"s3://{BUCKET}/a/../b", "/tmp/x"),
    "transfer instance path relative": case("transfer", "i-0123456789abcdef0:data", f"s3://{BUCKET}/x/"),
    "transfer instance path ..": case("transfer", "i-0123456789abcdef0:/a/../b", f"s3://{BUCKET}/x/"),
    "transfer malformed instance": case("transfer", "i-xyz:/data", f"s3://{BUCKET}/x/"),
    "transfer job name uppercase": case("transfer", "job:Bad:/data", f"s3://{BUCKET}/x/"),
    "transfer local to instance without staging": case("transfer", "/tmp", "i-0123456789abcdef0:/data", says="staging"),
    "transfer staging not s3": case(
        "transfer", f"s3://{BUCKET}/x/", "i-0123456789abcdef0:/data", "--staging", "/tmp", says="staging"
    ),
    "transfer empty source": case("transfer", "", f"s3://{BUCKET}/x/"),
    "teardown bucket s3://s3://": case("teardown", "--all", "--bucket", "s3://s3://jobs", says="'s3://s3://jobs'"),
    "teardown bucket with a prefix": case("teardown", "--all", "--bucket", "s3://jobs/p", says="bucket"),
}

ENV_AND_OPTIONS = {
    "env without =": case(*launch_job("--env", "NOVALUE"), says="--env"),
    "env key with a digit first": case(*launch_job("--env", "1BAD=x"), says="env"),
    "env key with a dash": case(*launch_job("--env", "A-B=x"), says="env"),
    "env key with a newline": case(*launch_job("--env", "A\n=x"), says="env"),
    "env key reserved": case(*launch_job("--env", "TRAINCTL_JOB=x"), says="TRAINCTL_JOB"),
    "env key empty": case(*launch_job("--env", "=x"), says="env"),
    "env key with $(id)": case(*launch_job("--env", "$(id)=x"), says="env"),
    "max price negative": case(*launch_job("--max-price", "-1"), says="max_price"),
    "max price not a number": case(*launch_job("--max-price", "cheap"), says="max_price"),
    "max price on demand": case(*launch_job("--on-demand", "--max-price", "1"), says="spot"),
    "instance type with ;": case(*launch_job("--instance-type", "g5.xlarge;reboot"), says="instance_type"),
    "image id malformed": case(*launch_job("--image-id", "ami-xyz"), says="image_id"),
    "subnet malformed": case(*launch_job("--subnet", "subnet-1"), says="subnet_id"),
    "launch zone malformed": case(*launch_job("--az", "us-east"), says="availability_zone"),
    "launch volume malformed": case(*launch_job("--volume", "vol-1"), says="data_volume_id"),
    "template and inline options": case(*launch_job("--template", "gpu"), says="not both"),
    "max runtime 0": case(*launch_job("--max-runtime-minutes", "0"), says="max_runtime_minutes"),
    "sync interval 0": case(*launch_job("--sync-interval", "0"), says="sync_interval_s"),
    "launch without a command": case(
        "train", "launch", "--name", "j", "--bucket", BUCKET, "--instance-type", "t3.micro"
    ),
    "launch without a bucket": case("train", "launch", "--name", "j", "--instance-type", "t3.micro", "--", "x"),
    "logs attempt not a number": case("train", "logs", "job", "--bucket", BUCKET, "--attempt", "last"),
    "status without --bucket": case("train", "status", "job", says="--bucket"),
    "transfer unknown engine": case("transfer", f"s3://{BUCKET}/x/", "/tmp/x", "--engine", "rsync", says="--engine"),
    "resources list unknown kind": case("resources", "list", "--kind", "bucket", says="--kind"),
    "delete --json without --yes": case("ebs", "delete", "{our_volume}", "--json", says="--yes"),
    "teardown without scope": case("teardown", says="teardown"),
    "teardown job and ids": case("teardown", "--job", "j", "vol-0123456789abcdef0", says="not both"),
    "teardown unknown option": case("teardown", "--everything"),
    "unknown command": case("frobnicate"),
    "unknown ebs command": case("ebs", "frobnicate"),
    "unknown root option": case("--verbose", "resources", "list"),
    "unknown region": case("--region", "mars-1", "resources", "list", says="--region"),
    "region with ;": case("--region", "us-east-1;id", "ebs", "snapshots", says="--region"),
    "endpoint not a url": case("--endpoint-url", "localhost", "ebs", "snapshots", says="--endpoint-url"),
    "unknown profile": case("--profile", "nobody", "resources", "list", says="--profile"),
    "account with region": case("--account", "acct", "--region", "us-east-1", "ebs", "snapshots"),
}

CATALOGUE: dict[str, Case] = IDS | OTHER_PEOPLES | NAMES | DEVICES | SIZES_AND_ZONES | PATHS_AND_URIS | ENV_AND_OPTIONS


def test_the_catalogue_has_at_least_100_cases() -> None:
    assert len(CATALOGUE) >= 100


# -- the scene ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cloud() -> Iterator[Sandbox]:
    with Sandbox(boot_delay=0.1) as sandbox:
        yield sandbox


def _wait_running(cloud: Sandbox, ec2: Any, *ids: str) -> None:
    def running() -> bool:
        found = ec2.describe_instances(InstanceIds=list(ids))["Reservations"]
        return all(i["State"]["Name"] == "running" for r in found for i in r["Instances"])

    assert cloud.wait_for(running, timeout=10)


def _wait_attached(cloud: Sandbox, ec2: Any, volume_id: str) -> None:
    def attached() -> bool:
        volume = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]
        return [a["State"] for a in volume["Attachments"]] == ["attached"]

    assert cloud.wait_for(attached, timeout=10)


@pytest.fixture(scope="module")
def scene(cloud: Sandbox) -> dict[str, str]:
    """trainctl's: a protected data volume with a snapshot, a volume in another zone, a running instance with a
    volume attached. Other people's: a volume, a snapshot, and a running instance with their volume attached."""
    ec2 = cloud.client("ec2")

    def volume(tags: dict[str, str], zone: str = ZONE) -> str:
        return raw_volume(ec2, tags, zone)

    def instance(tags: dict[str, str]) -> str:
        return raw_instance(ec2, tags, ZONE)

    ours = t.managed_tags(job="bad-inputs", role=t.Role.DATA, name="ours-data", persistent=True, protected=True)
    ids = {
        "our_volume": volume(ours),
        "our_volume_b": volume(t.managed_tags(name="ours-b"), zone="us-east-1b"),
        "our_attached": volume(t.managed_tags(name="ours-attached", persistent=True)),
        "our_instance": instance(t.managed_tags(job="bad-inputs", role=t.Role.TRAIN)),
        "theirs_volume": volume({"Name": "theirs"}),
        "theirs_attached": volume({"Name": "theirs-attached"}),
        "theirs_instance": instance({"Name": "theirs"}),
    }
    ids["our_snapshot"] = ec2.create_snapshot(
        VolumeId=ids["our_volume"], TagSpecifications=t.tag_specifications("snapshot", t.managed_tags(name="s"))
    )["SnapshotId"]
    ids["theirs_snapshot"] = ec2.create_snapshot(VolumeId=ids["theirs_volume"])["SnapshotId"]
    _wait_running(cloud, ec2, ids["our_instance"], ids["theirs_instance"])
    ec2.attach_volume(VolumeId=ids["our_attached"], InstanceId=ids["our_instance"], Device="/dev/sdf")
    ec2.attach_volume(VolumeId=ids["theirs_attached"], InstanceId=ids["theirs_instance"], Device="/dev/sdf")
    _wait_attached(cloud, ec2, ids["our_attached"])
    _wait_attached(cloud, ec2, ids["theirs_attached"])
    s3 = cloud.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    for key in ("data/a.bin", "data/b.bin", "trainctl/jobs/good-job/job.json"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"{}")
    return ids


def aws_state(cloud: Sandbox, volume_ids: list[str]) -> dict[str, Any]:
    """Everything a command could have changed: one call per kind of resource, plus the buckets and objects."""
    ec2, s3 = cloud.client("ec2"), cloud.client("s3")
    instances = {
        i["InstanceId"]: (
            i["State"]["Name"],
            t.from_aws(i.get("Tags")),
            sorted(str(b) for b in i["BlockDeviceMappings"]),
        )
        for r in ec2.describe_instances()["Reservations"]
        for i in r["Instances"]
    }
    volumes = {
        v["VolumeId"]: (v["State"], v["AvailabilityZone"], v["Size"], t.from_aws(v.get("Tags")), str(v["Attachments"]))
        for v in ec2.describe_volumes()["Volumes"]
    }
    # Snapshots of any volume there is or was in the scene (the sandbox also holds ~1,300 AMI snapshots).
    of_volumes = [{"Name": "volume-id", "Values": sorted({*volume_ids, *volumes})}]
    snapshots = {
        s["SnapshotId"]: (s["State"], t.from_aws(s.get("Tags")))
        for s in ec2.describe_snapshots(OwnerIds=["self"], Filters=of_volumes)["Snapshots"]
    }
    buckets = sorted(b["Name"] for b in s3.list_buckets()["Buckets"])
    objects = {o["Key"]: o["ETag"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])}
    return {"instances": instances, "volumes": volumes, "snapshots": snapshots, "buckets": buckets, "objects": objects}


@pytest.fixture(scope="module")
def runner(cloud: Sandbox) -> Any:
    cli = CliRunner()
    env: dict[str, str | None] = {"AWS_PROFILE": None, **cloud.env}

    def invoke(args: list[str]) -> Any:
        return cli.invoke(app, args, env=env)

    return invoke


@pytest.fixture(scope="module")
def before(cloud: Sandbox, scene: dict[str, str]) -> dict[str, Any]:
    """The state every case must leave behind: read once, after the scene is set (no case changes anything)."""
    return aws_state(cloud, list(scene.values()))


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_bad_input_is_one_line_and_changes_nothing(
    name: str, cloud: Sandbox, scene: dict[str, str], runner: Any, before: dict[str, Any]
) -> None:
    bad = CATALOGUE[name]
    args = [arg.format(**scene) if "{" in arg else arg for arg in bad.args]

    result = runner(args)

    assert result.exit_code == bad.exit_code, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    if "--json" in args:  # the same one line, as a JSON object
        error = json.loads(line)
        assert error["exit_code"] == bad.exit_code
        line = f"error: {error['error']}"
    assert line.startswith("error: "), line
    assert "Traceback" not in result.output and "Task run is not set" not in result.output
    assert "None." not in line and "'{'" not in line  # no AWS message lost, no Python set formatted in
    if bad.says:
        assert bad.says in line, line
    assert aws_state(cloud, list(scene.values())) == before
