"""The instance runtime: what makes a sandbox instance a machine rather than a database row.

Each instance gets a root folder (`state_dir/instances/<id>/`) in which its user data and its SSM commands run as
real processes, with the instance's environment (`env_for`). Volumes are folders (`state_dir/volumes/<id>/`:
`volume.json`, the `fstype` marker written by mkfs, and the data folder `fs/`); attaching one makes its device
links appear under the instance's `dev/` the way Nitro does, and the shims (`sandbox/shims/`) mount them.

Every process an instance starts runs in its own session (process group), and carries `TRAINCTL_ROOT=<its root>`
in its environment; Stop/Terminate signal the groups AND every process whose environment carries that marker, so
a job that detached itself with setsid dies with its machine too.

Locking: EC2 after-hooks run under `sandbox.ec2_lock` and then take `self._lock`; nothing here takes ec2_lock
while holding `self._lock` (reads of moto's backend take ec2_lock first, alone).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandbox.protocol import DUMMY_ACCESS_KEY, DUMMY_SECRET_KEY, AwsRequest

if TYPE_CHECKING:
    from sandbox.server import Sandbox

SHIMS_SOURCE = Path(__file__).parent / "shims"
BY_ID_PREFIX = "nvme-Amazon_Elastic_Block_Store_"
# Instance store NVMe devices, as Nitro names them (/dev/disk/by-id/nvme-Amazon_EC2_NVMe_Instance_Storage_AWS<serial>).
INSTANCE_STORE_BY_ID_PREFIX = "nvme-Amazon_EC2_NVMe_Instance_Storage_"
# Folders every instance root starts with (a small Linux tree; on AWS these are the real ones).
ROOT_LAYOUT = (
    "dev/disk/by-id",
    "mnt",
    "tmp",
    "var/log",
    "var/lib/cloud/instance",
    "var/lib/trainctl",
    "etc",
    "home/ubuntu",
    "home/ec2-user",
    "root",
    "opt",
    "proc",
    "data",
    ".sandbox",
)
# GPUs by instance family/size, for the fake nvidia-smi (name, memory MiB, count per size suffix). Other families
# have no NVIDIA GPU: there nvidia-smi fails as it does on AWS (no driver to talk to).
_GPU_FAMILIES: dict[str, tuple[str, int]] = {
    "g4dn": ("Tesla T4", 15360),
    "g5": ("NVIDIA A10G", 23028),
    "g5g": ("NVIDIA T4G", 15360),
    "g6e": ("NVIDIA L40S", 46068),
    "g6": ("NVIDIA L4", 23034),
    "p3": ("Tesla V100-SXM2-16GB", 16384),
    "p4d": ("NVIDIA A100-SXM4-40GB", 40960),
    "p5": ("NVIDIA H100 80GB HBM3", 81559),
}
_GPU_COUNTS: dict[str, int] = {"8xlarge": 4, "12xlarge": 4, "16xlarge": 8, "24xlarge": 4, "48xlarge": 8}

# `shutdown -h now` answers at once and the machine goes down a moment later (systemd): the shim gets its answer.
SHUTDOWN_DELAY_S = 0.3

_ID_IN_XML = re.compile(r"<instanceId>(i-[0-9a-f]+)</instanceId>")


def iso_z(when: datetime) -> str:
    """IMDS and SSM spell times as `2026-01-02T03:04:05Z`."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Attachment:
    volume_id: str
    instance_id: str
    nvme: str  # e.g. "nvme1n1"
    device: str  # the device name asked for, e.g. "/dev/sdf"


@dataclass
class InstanceRecord:
    id: str
    root: Path
    region: str
    availability_zone: str
    instance_type: str
    image_id: str
    private_ip: str
    hostname: str
    lifecycle: str  # "spot" | "on-demand" as seen at launch
    launched_at: datetime
    booted_at: float  # time.monotonic() when it was (re)started; Online after sandbox.boot_delay
    state: str = "running"  # running | stopped | terminated (the runtime's view; moto's state is checked too)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    spot_action: dict[str, Any] | None = None
    rebalance: dict[str, Any] | None = None


class InstanceDown(Exception):
    """Raised by `spawn` when the instance cannot run anything (unknown, stopped, terminated)."""


class InstanceRuntime:
    def __init__(self, sandbox: Sandbox, *, kill_grace: float = 1.0) -> None:
        self.sandbox = sandbox
        self.kill_grace = kill_grace
        self._lock = threading.RLock()
        self.instances: dict[str, InstanceRecord] = {}
        self.attachments: dict[str, Attachment] = {}  # volume id -> attachment
        self._threads: list[threading.Thread] = []
        self._down_listeners: list[Callable[[str], None]] = []
        self._quiesce: list[Callable[[], None]] = []  # run after every process ended, before folders go
        self.shims_dir = self.state_dir / "shims"
        self._install_shims()

    # -- paths ---------------------------------------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        return Path(self.sandbox.state_dir)

    def instance_root(self, instance_id: str) -> Path:
        return self.state_dir / "instances" / instance_id

    def volume_dir(self, volume_id: str) -> Path:
        return self.state_dir / "volumes" / volume_id

    def snapshot_dir(self, snapshot_id: str) -> Path:
        return self.state_dir / "snapshots" / snapshot_id

    def imds_endpoint(self, instance_id: str) -> str:
        # Trailing slash: botocore appends "latest/..." without a separator, urljoin keeps the last segment,
        # and a client that adds "/latest/..." gets "//latest" which the IMDS route tolerates.
        return f"{self.sandbox.endpoint_url}/_imds/{instance_id}/"

    def _install_shims(self) -> None:
        """Copy the shims into the state dir with the executable bit (package data may lose it on install)."""
        self.shims_dir.mkdir(parents=True, exist_ok=True)
        for source in SHIMS_SOURCE.iterdir():
            if source.is_file() and not source.name.startswith("."):
                target = self.shims_dir / source.name
                text = source.read_text()
                if text.startswith("#!/usr/bin/env python3"):
                    # This interpreter, without site (-S): the shims are std-lib only and start 3x faster.
                    text = f"#!{sys.executable} -S" + text[len("#!/usr/bin/env python3") :]
                target.write_text(text)
                target.chmod(target.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

    # -- queries -------------------------------------------------------------------------------------------
    def record(self, instance_id: str) -> InstanceRecord | None:
        with self._lock:
            return self.instances.get(instance_id)

    def moto_state(self, instance_id: str) -> str | None:
        """moto's state name for the instance (the EC2 component may hold it in pending/stopping), or None."""
        try:
            with self.sandbox.ec2_lock:
                for reservation in list(self.sandbox.ec2_backend().reservations.values()):
                    for instance in reservation.instances:
                        if instance.id == instance_id:
                            return str(instance.state)
        except Exception as exc:  # moto's internals changed shape: trust our own record
            self.sandbox.log(f"runtime: cannot read moto state of {instance_id}: {exc!r}")
        return None

    def is_running(self, instance_id: str) -> bool:
        """Running in our view and in moto's (no boot delay: processes may run; SSM waits for `is_online`)."""
        rec = self.record(instance_id)
        if rec is None or rec.state != "running":
            return False
        return self.moto_state(instance_id) in ("running", None)

    def is_online(self, instance_id: str) -> bool:
        """What SSM calls PingStatus Online: running, and booted for at least `sandbox.boot_delay` seconds."""
        rec = self.record(instance_id)
        if rec is None or not self.is_running(instance_id):
            return False
        if self.sandbox.iam and not self.sandbox.iam.agent_registers(instance_id, rec.region):
            return False  # IAM enforced and the instance's role does not let the SSM agent register
        return time.monotonic() - rec.booted_at >= float(self.sandbox.boot_delay)

    def lifecycle(self, instance_id: str) -> str:
        rec = self.record(instance_id)
        try:
            with self.sandbox.ec2_lock:
                instance = self.sandbox.ec2_backend(rec.region if rec else None).get_instance(instance_id)
                if getattr(instance, "lifecycle", None) == "spot":
                    return "spot"
        except Exception as exc:  # terminated and forgotten, or not in moto: the launch-time view
            self.sandbox.log(f"runtime: lifecycle of {instance_id} from the launch record ({exc!r})")
        return rec.lifecycle if rec else "on-demand"

    def env_for(self, instance_id: str) -> dict[str, str]:
        """The environment every process of the instance gets (a clean one: the host's AWS settings stay out)."""
        rec = self.record(instance_id)
        region = rec.region if rec else self.sandbox.region
        root = self.instance_root(instance_id)
        path = os.pathsep.join(
            [str(self.shims_dir), str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin:/bin")]
        )
        env = {
            "PATH": path,
            "HOME": str(root / "root"),
            "USER": "root",
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "TMPDIR": str(root / "tmp"),
            "TRAINCTL_ROOT": str(root),
            "AWS_ENDPOINT_URL": self.sandbox.endpoint_url,
            "S3_ENDPOINT_URL": self.sandbox.endpoint_url,
            "AWS_ACCESS_KEY_ID": DUMMY_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET_KEY,
            "AWS_DEFAULT_REGION": region,
            "AWS_REGION": region,
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": self.imds_endpoint(instance_id),
            # Keep the host's ~/.aws out even if a tool ignores HOME.
            "AWS_CONFIG_FILE": str(root / "root" / ".aws" / "config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(root / "root" / ".aws" / "credentials"),
        }
        # With IAM enforced, an instance with a profile runs as its role (on AWS: IMDS credentials of the role).
        session = self.sandbox.iam.env(instance_id, region) if self.sandbox.iam else None
        env.update(session or {})
        return env

    # -- processes -----------------------------------------------------------------------------------------
    def spawn(
        self,
        instance_id: str,
        argv: list[str],
        *,
        cwd: Path | None = None,
        stdout: Any = None,
        stderr: Any = None,
        extra_env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a process on the instance, in its own session; the caller must wait() on it (or `reap`)."""
        with self._lock:
            rec = self.instances.get(instance_id)
            if rec is None or rec.state != "running":
                raise InstanceDown(instance_id)
            env = self.env_for(instance_id)
            env.update(extra_env or {})
            proc = subprocess.Popen(
                argv,
                cwd=str(cwd or rec.root),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,  # its own process group: Stop/Terminate/timeouts kill the whole tree
                close_fds=True,
            )
            rec.procs = [p for p in rec.procs if p.poll() is None]
            rec.procs.append(proc)
            return proc

    def kill_group(self, proc: subprocess.Popen[bytes], *, grace: float | None = None) -> None:
        """End one process and its group: SIGTERM, then SIGKILL after the grace; reaps it."""
        _killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=self.kill_grace if grace is None else grace)
        _killpg(proc.pid, signal.SIGKILL)  # also whatever it left in its group
        proc.wait()

    def add_down_listener(self, callback: Callable[[str], None]) -> None:
        """`callback(instance_id)` when an instance stops or terminates (SSM fails its running commands)."""
        self._down_listeners.append(callback)

    def add_quiesce(self, callback: Callable[[], None]) -> None:
        """`callback()` on reset once every process has ended and before the folders are removed."""
        self._quiesce.append(callback)

    def _end_processes(self, rec: InstanceRecord, *, wait: bool) -> None:
        """Like losing the machine: SIGTERM to every group and marked process, SIGKILL after the grace."""
        procs = list(rec.procs)
        rec.procs = []
        marker = f"TRAINCTL_ROOT={rec.root}".encode()
        _signal_all(procs, marker, signal.SIGTERM)

        def finish() -> None:
            deadline = time.monotonic() + self.kill_grace
            while time.monotonic() < deadline:
                if all(p.poll() is not None for p in procs) and not _marked_pids(marker):
                    break
                time.sleep(0.05)
            _signal_all(procs, marker, signal.SIGKILL)
            for proc in procs:
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:  # unkillable (D state): nothing more we can do
                    self.sandbox.log(f"runtime: process {proc.pid} of {rec.id} did not die")

        if wait:
            finish()
        else:
            thread = threading.Thread(target=finish, name=f"kill-{rec.id}", daemon=True)
            thread.start()
            with self._lock:
                self._threads = [t for t in self._threads if t.is_alive()]
                self._threads.append(thread)

    def _notify_down(self, instance_id: str) -> None:
        for callback in list(self._down_listeners):
            try:
                callback(instance_id)
            except Exception as exc:
                self.sandbox.log(f"runtime: down listener failed for {instance_id}: {exc!r}")

    # -- lifecycle -----------------------------------------------------------------------------------------
    def launch(self, instance: Any, user_data: bytes | None, region: str) -> InstanceRecord:
        """Give a moto instance a root folder and run its user data (called by the RunInstances hook)."""
        root = self.instance_root(instance.id)
        for sub in ROOT_LAYOUT:
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "proc" / "mounts").write_text("/dev/nvme0n1p1 / xfs rw,noatime 0 0\n")
        (root / "etc" / "fstab").touch()
        (root / "etc" / "hostname").write_text(f"{_hostname(instance)}\n")
        rec = InstanceRecord(
            id=instance.id,
            root=root,
            region=region,
            availability_zone=str(instance.placement.zone or f"{region}a"),
            instance_type=str(instance.instance_type),
            image_id=str(instance.image_id),
            private_ip=str(getattr(instance, "private_ip", None) or "10.0.0.10"),
            hostname=_hostname(instance),
            lifecycle="spot" if getattr(instance, "lifecycle", None) == "spot" else "on-demand",
            launched_at=datetime.now(UTC),
            booted_at=time.monotonic(),
        )
        with self._lock:
            self.instances[instance.id] = rec
        self._write_gpu(rec, 0.0)
        mapping = dict(getattr(instance, "block_device_mapping", {}) or {})
        root_device = mapping.get(getattr(instance, "root_device_name", None))
        info = {
            "instance_id": instance.id,
            "root_volume_id": getattr(root_device, "volume_id", None) or "vol-00000000000000000",
            "root_size": int(getattr(root_device, "size", None) or 8),
        }
        (root / ".sandbox" / "instance.json").write_text(json.dumps(info))
        self._add_instance_store(rec)
        for device_name, device in mapping.items():
            # Extra EBS volumes from BlockDeviceMappings appear like attached ones (the root disk is nvme0n1).
            if device_name != getattr(instance, "root_device_name", None) and getattr(device, "volume_id", None):
                self._ensure_volume(device.volume_id, size=getattr(device, "size", None))
                self.attach(instance.id, device.volume_id, device_name)
        if user_data:
            self._run_user_data(rec, user_data)
        return rec

    def _run_user_data(self, rec: InstanceRecord, user_data: bytes) -> None:
        log_path = rec.root / "var" / "log" / "cloud-init-output.log"
        script = rec.root / "var" / "lib" / "cloud" / "instance" / "user-data.txt"
        script.write_bytes(user_data)
        if user_data.lstrip().startswith(b"#cloud-config"):
            with log_path.open("ab") as notes:
                notes.write(b"sandbox: #cloud-config user data is not supported; ignored\n")
            return
        script.chmod(0o755)
        # A `#!` line picks the interpreter (the kernel reads it); anything else runs under bash, as cloud-init.
        argv = [str(script)] if user_data.startswith(b"#!") else ["bash", str(script)]
        log = log_path.open("ab")
        try:
            proc = self.spawn(rec.id, argv, cwd=rec.root, stdout=log, stderr=subprocess.STDOUT)
        except (InstanceDown, OSError) as exc:
            log.write(f"sandbox: user data did not start: {exc!r}\n".encode())
            log.close()
            return

        def reap() -> None:
            code = proc.wait()
            log.write(f"sandbox: user data finished with exit code {code}\n".encode())
            log.close()

        thread = threading.Thread(target=reap, name=f"userdata-{rec.id}", daemon=True)
        thread.start()

    def start(self, instance_id: str) -> None:
        with self._lock:
            rec = self.instances.get(instance_id)
            if rec is None or rec.state != "stopped":
                return
            rec.state = "running"
            rec.booted_at = time.monotonic()  # Online again after the boot delay; user data runs once, as AWS

    def stop(self, instance_id: str) -> None:
        with self._lock:
            rec = self.instances.get(instance_id)
            if rec is None or rec.state != "running":
                return
            rec.state = "stopped"
        self._notify_down(instance_id)  # first: SSM must see why its processes die
        self._end_processes(rec, wait=False)
        self._unmount_all(rec)  # mounts do not survive a reboot (fstab is not replayed: not implemented)
        self._add_instance_store(rec)  # a stopped instance's store is erased: blank again when it starts

    def terminate(self, instance_id: str) -> None:
        """End the instance's processes, detach its devices; idempotent."""
        with self._lock:
            rec = self.instances.get(instance_id)
            if rec is None or rec.state == "terminated":
                return
            rec.state = "terminated"
            rec.spot_action = None
        self._notify_down(instance_id)  # first: SSM must see why its processes die
        self._end_processes(rec, wait=False)
        self._unmount_all(rec)
        for attachment in [a for a in list(self.attachments.values()) if a.instance_id == instance_id]:
            self.detach(attachment.volume_id)
        for store in self._instance_stores(rec):
            shutil.rmtree(store, ignore_errors=True)  # the instance store ends with the instance

    # -- instance store (NVMe disks of the instance type; erased when the instance stops or ends) -------------
    def _instance_stores(self, rec: InstanceRecord) -> list[Path]:
        return sorted((self.state_dir / "volumes").glob(f"store-{rec.id}-*"))

    def _add_instance_store(self, rec: InstanceRecord) -> None:
        """Blank instance-store devices for the type's disks (DescribeInstanceTypes' InstanceStorageInfo), each a
        volume-like folder the shims format and mount, linked as the next nvmeNn1 with its Nitro by-id name."""
        from moto.ec2.models.instance_types import INSTANCE_TYPES  # moto is pinned exactly (DESIGN.md section 6)

        storage = INSTANCE_TYPES.get(rec.instance_type, {}).get("InstanceStorageInfo") or {}
        disks = [d for d in storage.get("Disks", []) for _ in range(int(d.get("Count", 1)))]
        dev = rec.root / "dev"
        for n, disk in enumerate(disks):
            folder = self.state_dir / "volumes" / f"store-{rec.id}-{n}"
            shutil.rmtree(folder, ignore_errors=True)
            (folder / "fs").mkdir(parents=True)
            serial = f"AWS{uuid.uuid5(uuid.NAMESPACE_OID, folder.name).hex[:17].upper()}"
            meta = {"VolumeId": serial, "Size": int(disk.get("SizeInGB", 1)), "InstanceStore": True}
            (folder / "volume.json").write_text(json.dumps(meta))
            with self._lock:
                by_id = dev / "disk" / "by-id" / f"{INSTANCE_STORE_BY_ID_PREFIX}{serial}"
                if by_id.is_symlink():
                    continue  # a restart: the device is there, its folder is blank again
                k = 1
                while (dev / f"nvme{k}n1").is_symlink() or (dev / f"nvme{k}n1").exists():
                    k += 1
                (dev / f"nvme{k}n1").symlink_to(folder)
                _replace_symlink(by_id, Path("../..") / f"nvme{k}n1")

    def initiated_shutdown(self, instance_id: str) -> dict[str, Any]:
        """`shutdown -h now` / `poweroff` run on the instance (the shims call this through the control surface):
        it goes down SHUTDOWN_DELAY_S later, stopped or terminated as its InstanceInitiatedShutdownBehavior says."""
        rec = self._require(instance_id)
        if rec.state != "running":
            raise ValueError(f"{instance_id} is {rec.state}")
        timer = threading.Timer(SHUTDOWN_DELAY_S, self._go_down, args=(rec,))
        timer.daemon = True
        timer.start()
        return {"instance_id": instance_id, "in_seconds": SHUTDOWN_DELAY_S}

    def _go_down(self, rec: InstanceRecord) -> None:
        try:
            done = self.sandbox.ec2.instance_initiated_shutdown(rec.id, rec.region)
        except Exception as exc:  # a timer thread: log, never raise into the void
            self.sandbox.log(f"runtime: shutdown of {rec.id} failed: {exc!r}")
            return
        if done == "terminate":
            self.terminate(rec.id)
        elif done == "stop":
            self.stop(rec.id)

    # -- spot, rebalance, GPU ------------------------------------------------------------------------------
    def set_spot_action(self, instance_id: str, action: dict[str, Any] | None) -> None:
        """What IMDS `spot/instance-action` answers (None: 404, no notice)."""
        with self._lock:
            rec = self._require(instance_id)
            rec.spot_action = dict(action) if action is not None else None

    def recommend_rebalance(self, instance_id: str) -> dict[str, Any]:
        with self._lock:
            rec = self._require(instance_id)
            rec.rebalance = {"noticeTime": iso_z(datetime.now(UTC))}
            return dict(rec.rebalance)

    def set_gpu_utilization(self, instance_id: str, percent: float | list[float]) -> None:
        """One utilisation for every GPU of the instance, or one per GPU (as many as it has)."""
        values = [float(p) for p in percent] if isinstance(percent, list) else [float(percent)]
        if not all(0 <= value <= 100 for value in values):
            raise ValueError(f"utilization must be between 0 and 100, got {percent}")
        rec = self._require(instance_id)
        if rec.instance_type.partition(".")[0] not in _GPU_FAMILIES:
            raise ValueError(f"{instance_id} ({rec.instance_type}) has no GPU")
        self._write_gpu(rec, values if isinstance(percent, list) else values[0])

    def _write_gpu(self, rec: InstanceRecord, percent: float | list[float]) -> None:
        family, _, size = rec.instance_type.partition(".")
        if family not in _GPU_FAMILIES:
            return
        name, memory = _GPU_FAMILIES[family]
        count = 8 if family in ("p4d", "p5") else _GPU_COUNTS.get(size, 1)
        if isinstance(percent, list) and len(percent) != count:
            raise ValueError(f"{rec.id} ({rec.instance_type}) has {count} GPUs, got {len(percent)} utilizations")
        info = {"utilization": percent, "name": name, "memory_total": memory, "count": count}
        target = rec.root / ".sandbox" / "gpu.json"
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(target)  # atomic: nvidia-smi never reads half a file

    def _require(self, instance_id: str) -> InstanceRecord:
        rec = self.record(instance_id)
        if rec is None:
            raise KeyError(f"unknown instance {instance_id}")
        return rec

    # -- volumes and snapshots -----------------------------------------------------------------------------
    def _ensure_volume(self, volume_id: str, *, size: int | None = None, az: str | None = None) -> Path:
        folder = self.volume_dir(volume_id)
        (folder / "fs").mkdir(parents=True, exist_ok=True)
        meta_path = folder / "volume.json"
        meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        meta["VolumeId"] = volume_id
        if size is not None:
            meta["Size"] = int(size)
        meta.setdefault("Size", 8)
        if az:
            meta["AvailabilityZone"] = az
        meta_path.write_text(json.dumps(meta))
        return folder

    def create_volume(self, volume_id: str, *, size: int | None, az: str | None, snapshot_id: str | None) -> None:
        folder = self.volume_dir(volume_id)
        if snapshot_id and self.snapshot_dir(snapshot_id).is_dir():
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(self.snapshot_dir(snapshot_id), folder, symlinks=True)
        self._ensure_volume(volume_id, size=size, az=az)

    def create_snapshot(self, snapshot_id: str, volume_id: str) -> None:
        target = self.snapshot_dir(snapshot_id)
        shutil.rmtree(target, ignore_errors=True)
        source = self.volume_dir(volume_id)
        if source.is_dir():
            shutil.copytree(source, target, symlinks=True)
        else:
            target.mkdir(parents=True)

    def delete_volume(self, volume_id: str) -> None:
        shutil.rmtree(self.volume_dir(volume_id), ignore_errors=True)

    def delete_snapshot(self, snapshot_id: str) -> None:
        shutil.rmtree(self.snapshot_dir(snapshot_id), ignore_errors=True)

    def attach(self, instance_id: str, volume_id: str, device: str) -> str:
        """Make the volume's device appear under the instance's /dev (as Nitro: nvmeNn1 + by-id + the name asked
        for); returns the nvme name. Public so the EC2 component can call it if it answers AttachVolume itself."""
        with self._lock:
            rec = self._require(instance_id)
            self._ensure_volume(volume_id)
            previous = self.attachments.get(volume_id)
            if previous is not None:
                if previous.instance_id == instance_id:
                    return previous.nvme
                self.detach(volume_id)
            dev = rec.root / "dev"
            (dev / "disk" / "by-id").mkdir(parents=True, exist_ok=True)
            used = {a.nvme for a in self.attachments.values() if a.instance_id == instance_id}
            n = 1
            while f"nvme{n}n1" in used or (dev / f"nvme{n}n1").exists() or (dev / f"nvme{n}n1").is_symlink():
                n += 1
            nvme = f"nvme{n}n1"
            (dev / nvme).symlink_to(self.volume_dir(volume_id))
            by_id = dev / "disk" / "by-id" / f"{BY_ID_PREFIX}{volume_id.replace('-', '')}"
            _replace_symlink(by_id, Path("../..") / nvme)
            name = device.rsplit("/", 1)[-1] if device else ""
            if name and name != nvme:
                _replace_symlink(dev / name, Path(nvme))
            self.attachments[volume_id] = Attachment(volume_id, instance_id, nvme, device)
            return nvme

    def detach(self, volume_id: str) -> None:
        """Remove the device links (and any mount of the volume on that instance); idempotent."""
        with self._lock:
            attachment = self.attachments.pop(volume_id, None)
            if attachment is None:
                return
            rec = self.instances.get(attachment.instance_id)
            root = rec.root if rec else self.instance_root(attachment.instance_id)
            self._unmount_volume(root, volume_id)
            dev = root / "dev"
            name = attachment.device.rsplit("/", 1)[-1] if attachment.device else ""
            for link in (
                dev / attachment.nvme,
                dev / "disk" / "by-id" / f"{BY_ID_PREFIX}{volume_id.replace('-', '')}",
                dev / name if name else None,
            ):
                if link is not None and link.is_symlink():
                    link.unlink()

    # -- mounts (the shims keep the table; the runtime undoes it on detach/stop/terminate) ------------------
    def _unmount_volume(self, root: Path, volume_id: str | None) -> None:
        """Drop mount table entries whose mount point links into the volume (all volumes when None)."""
        table = root / "proc" / "mounts"
        if not table.exists():
            return
        kept: list[str] = []
        volumes = (self.state_dir / "volumes").resolve()
        for line in table.read_text().splitlines():
            fields = line.split()
            if len(fields) < 2 or fields[1] == "/":
                kept.append(line)
                continue
            point = root / fields[1].lstrip("/")
            target = Path(os.path.realpath(point)) if point.is_symlink() else None
            inside = target is not None and target.parent.parent == volumes
            if inside and target is not None and (volume_id is None or target.parent.name == volume_id):
                point.unlink()
                point.mkdir(exist_ok=True)  # the empty mount point is back, as after umount
                continue
            kept.append(line)
        table.write_text("".join(f"{line}\n" for line in kept))

    def _unmount_all(self, rec: InstanceRecord) -> None:
        try:
            self._unmount_volume(rec.root, None)
        except OSError as exc:
            self.sandbox.log(f"runtime: unmount on {rec.id} failed: {exc!r}")

    # -- sandbox lifecycle ---------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """End every process of every instance and wait until they are gone (reset and stop)."""
        with self._lock:
            records = list(self.instances.values())
            for rec in records:
                if rec.state != "terminated":
                    rec.state = "terminated"
        for rec in records:
            self._notify_down(rec.id)
        for rec in records:
            self._end_processes(rec, wait=False)  # all instances in parallel; joined below
        with self._lock:
            threads = list(self._threads)
            self._threads = []
        for thread in threads:
            thread.join(timeout=10)

    def reset(self) -> None:
        self.shutdown()
        for callback in list(self._quiesce):
            callback()  # SSM's command threads finish writing before their folders are removed
        with self._lock:
            self.instances.clear()
            self.attachments.clear()
        for sub in ("instances", "volumes", "snapshots", "commands"):
            shutil.rmtree(self.state_dir / sub, ignore_errors=True)

    # -- EC2 after-hooks -----------------------------------------------------------------------------------
    def after_run_instances(self, req: AwsRequest, status: int, body: bytes) -> None:
        if status != 200:
            return
        user_data = _decode_user_data(req.params.get("UserData"))
        backend = self.sandbox.ec2_backend(req.region)
        for instance_id in dict.fromkeys(_ID_IN_XML.findall(body.decode(errors="replace"))):
            try:
                instance = backend.get_instance(instance_id)
            except Exception as exc:
                self.sandbox.log(f"runtime: launched {instance_id} not in moto: {exc!r}")
                continue
            try:
                self.launch(instance, user_data, req.region)
            except Exception as exc:  # a broken instance must not fail the RunInstances answer
                self.sandbox.log(f"runtime: launch of {instance_id} failed: {exc!r}")

    def after_start(self, req: AwsRequest, status: int, body: bytes) -> None:
        if status == 200:
            for instance_id in req.param_list("InstanceId"):
                self.start(instance_id)

    def after_stop(self, req: AwsRequest, status: int, body: bytes) -> None:
        if status == 200:
            for instance_id in req.param_list("InstanceId"):
                self.stop(instance_id)

    def after_terminate(self, req: AwsRequest, status: int, body: bytes) -> None:
        if status == 200:
            for instance_id in req.param_list("InstanceId"):
                self.terminate(instance_id)

    def after_attach(self, req: AwsRequest, status: int, body: bytes) -> None:
        if status != 200:
            return
        instance_id, volume_id = req.params.get("InstanceId", ""), req.params.get("VolumeId", "")
        if self.record(instance_id) is not None:
            self.attach(instance_id, volume_id, req.params.get("Device", ""))

    def after_detach(self, req: AwsRequest, status: int, body: bytes) -> None:
        if status == 200:
            self.detach(req.params.get("VolumeId", ""))

    def after_create_volume(self, req: AwsRequest, status: int, body: bytes) -> None:
        if status != 200:
            return
        match = re.search(r"<volumeId>(vol-[0-9a-f]+)</volumeId>", body.decode(errors="replace"))
        if match:
            size = req.params.get("Size")
            size_gib = int(size) if size and size.isdigit() else None
            if size_gib is None:
                size_match = re.search(r"<size>(\d+)</size>", body.decode(errors="replace"))
                size_gib = int(size_match.group(1)) if size_match else None
            self.create_volume(
                match.group(1),
                size=size_gib,
                az=req.params.get("AvailabilityZone"),
                snapshot_id=req.params.get("SnapshotId") or None,
            )

    def after_create_snapshot(self, req: AwsRequest, status: int, body: bytes) -> None:
        if status != 200:
            return
        match = re.search(r"<snapshotId>(snap-[0-9a-f]+)</snapshotId>", body.decode(errors="replace"))
        if match:
            self.create_snapshot(match.group(1), req.params.get("VolumeId", ""))

    def after_delete_volume(self, req: AwsRequest, status: int, body: bytes) -> None:
        if status == 200:
            self.delete_volume(req.params.get("VolumeId", ""))

    def after_delete_snapshot(self, req: AwsRequest, status: int, body: bytes) -> None:
        if status == 200:
            self.delete_snapshot(req.params.get("SnapshotId", ""))


# -- helpers -------------------------------------------------------------------------------------------------
def _hostname(instance: Any) -> str:
    try:
        return str(instance.private_dns_name)
    except Exception:
        return f"ip-10-0-0-10.ec2.internal-{instance.id}"


def _decode_user_data(value: str | None) -> bytes | None:
    if not value:
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return value.encode()  # not base64: AWS would refuse; moto passed it, so run it as given


def _replace_symlink(link: Path, target: Path) -> None:
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _marked_pids(marker: bytes) -> list[int]:
    """Processes whose environment carries the instance's TRAINCTL_ROOT (Linux /proc; empty elsewhere)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    me = os.getpid()
    found: list[int] = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or another user's
            continue
        if marker in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def _signal_all(procs: list[subprocess.Popen[bytes]], marker: bytes, sig: signal.Signals) -> None:
    for proc in procs:
        _killpg(proc.pid, sig)
    for pid in _marked_pids(marker):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def install(sandbox: Sandbox) -> InstanceRuntime:
    runtime = InstanceRuntime(sandbox)
    hooks: dict[str, Callable[[AwsRequest, int, bytes], None]] = {
        "RunInstances": runtime.after_run_instances,
        "StartInstances": runtime.after_start,
        "StopInstances": runtime.after_stop,
        "TerminateInstances": runtime.after_terminate,
        "AttachVolume": runtime.after_attach,
        "DetachVolume": runtime.after_detach,
        "CreateVolume": runtime.after_create_volume,
        "CreateSnapshot": runtime.after_create_snapshot,
        "DeleteVolume": runtime.after_delete_volume,
        "DeleteSnapshot": runtime.after_delete_snapshot,
    }
    for action, hook in hooks.items():
        sandbox.after("ec2", action, _observer(sandbox, action, hook))
    sandbox.on_reset(runtime.reset)
    sandbox.on_stop(runtime.shutdown)

    def rebalance(payload: dict[str, Any]) -> dict[str, Any]:
        return runtime.recommend_rebalance(str(payload["instance_id"]))

    def gpu(payload: dict[str, Any]) -> dict[str, Any]:
        utilization = payload["utilization"]
        percent = [float(p) for p in utilization] if isinstance(utilization, list) else float(utilization)
        runtime.set_gpu_utilization(str(payload["instance_id"]), percent)
        return {"instance_id": payload["instance_id"], "utilization": percent}

    sandbox.control("rebalance", rebalance)
    sandbox.control("instance-shutdown", lambda payload: runtime.initiated_shutdown(str(payload["instance_id"])))
    sandbox.control("gpu", gpu)
    return runtime


def _observer(
    sandbox: Sandbox, action: str, hook: Callable[[AwsRequest, int, bytes], None]
) -> Callable[[AwsRequest, int, bytes], bytes | None]:
    """Wrap a hook so it only observes: it never rewrites moto's answer and a crash in it is logged, not raised."""

    def after(req: AwsRequest, status: int, body: bytes) -> bytes | None:
        try:
            hook(req, status, body)
        except Exception as exc:
            sandbox.log(f"runtime: {action} hook failed: {exc!r}")
        return None

    return after


def new_token() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex


def spot_notice(delay_seconds: float) -> dict[str, str]:
    """The `spot/instance-action` document for a termination `delay_seconds` from now."""
    return {"action": "terminate", "time": iso_z(datetime.now(UTC) + timedelta(seconds=delay_seconds))}
