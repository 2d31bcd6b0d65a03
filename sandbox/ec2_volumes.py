"""EBS volume rules the way AWS answers them, where moto 5.2.5 does not.

Before-hooks, answered before moto sees the call:
  DescribeVolumes InvalidVolume.NotFound naming the unknown ID (moto puts a Python set in the message).
  AttachVolume   InvalidVolume.ZoneMismatch, VolumeInUse, IncorrectState, IncorrectInstanceState, device clash
                 (InvalidParameterValue); unknown IDs are left to moto's own NotFound errors.
  DetachVolume   IncorrectState for a volume that is not attached.
  DeleteVolume   moto already answers VolumeInUse with AWS's message.

Transitions (with `sandbox.transition_delay > 0`, on sandbox/ec2_transitions.py's timers): attachments
attaching → attached and detaching → (volume) available; volumes creating → available; snapshots pending →
completed. As on AWS, a volume being attached is already `in-use` (the attachment says `attaching`).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from moto.ec2.models.elastic_block_store import Snapshot, Volume
from werkzeug.wrappers import Response

from sandbox.ec2_common import backend
from sandbox.ec2_transitions import Transitions
from sandbox.protocol import AwsRequest, ec2_error

if TYPE_CHECKING:
    from sandbox.server import AfterHook, BeforeHook, Sandbox


def install_model_overrides() -> None:
    """Let a volume show `creating` and a snapshot show its progress: both are read-only properties in moto.

    The override only applies to objects the sandbox marked (attribute set), so plain moto use is unaffected.
    """
    if getattr(Volume, "_sandbox_patched", False):
        return
    original_status = Volume.status

    def volume_status(self: Volume) -> str:
        override = self.__dict__.get("_sandbox_status")
        return str(override) if override else str(original_status.fget(self))  # type: ignore[attr-defined]

    def snapshot_progress(self: Snapshot) -> str:
        return str(self.__dict__.get("_sandbox_progress", "100%"))

    Volume.status = property(volume_status)  # type: ignore[method-assign,assignment]
    Snapshot.progress = property(snapshot_progress)  # type: ignore[method-assign,assignment]
    Volume._sandbox_patched = True  # type: ignore[attr-defined]


class VolumeRules:
    """Volume and snapshot hooks (see the module docstring)."""

    def __init__(self, sandbox: Sandbox, transitions: Transitions) -> None:
        self.sandbox = sandbox
        self.transitions = transitions
        self._detaching: dict[str, tuple[Any, Any, str, Any]] = {}

    def reset(self) -> None:
        self._detaching.clear()

    # -- before moto -----------------------------------------------------------------------------------------
    def _describe_volumes_before(self, req: AwsRequest) -> Response | None:
        """AWS names the unknown volume; moto 5.2.5 formats the whole set of IDs (`'{'vol-…'}'`) into it."""
        unknown = [v for v in req.param_list("VolumeId") if v not in backend(self.sandbox, req).volumes]
        if unknown:
            return ec2_error("InvalidVolume.NotFound", f"The volume '{unknown[0]}' does not exist.")
        return None

    def _attach_before(self, req: AwsRequest) -> Response | None:
        ec2 = backend(self.sandbox, req)
        volume_id, instance_id = req.params.get("VolumeId", ""), req.params.get("InstanceId", "")
        device = req.params.get("Device", "")
        volume = ec2.volumes.get(volume_id)
        instance = ec2.get_instance_by_id(instance_id)
        if volume is None or instance is None:
            return None  # moto's own InvalidVolume.NotFound / InvalidInstanceID.NotFound
        if instance.state not in ("running", "stopped"):
            return ec2_error("IncorrectInstanceState", f"Instance '{instance_id}' is not 'running'.")
        if volume.availability_zone != instance.availability_zone:
            return ec2_error(
                "InvalidVolume.ZoneMismatch",
                f"The volume '{volume_id}' is not in the same availability zone as instance '{instance_id}'",
            )
        if volume.attachment is not None:
            return ec2_error("VolumeInUse", f"{volume_id} is already attached to an instance")
        if volume.status != "available":
            return ec2_error("IncorrectState", f"Volume '{volume_id}' is in the '{volume.status}' state.")
        if device in instance.block_device_mapping or device == instance.root_device_name:
            return ec2_error(
                "InvalidParameterValue",
                f"Invalid value '{device}' for unixDevice. Attachment point {device} is already in use",
            )
        return None

    def _detach_before(self, req: AwsRequest) -> Response | None:
        volume_id = req.params.get("VolumeId", "")
        volume = backend(self.sandbox, req).volumes.get(volume_id)
        if volume is None:
            return None
        if volume.attachment is None:
            return ec2_error("IncorrectState", f"Volume '{volume_id}' is in the '{volume.status}' state.")
        attachment = volume.attachment
        instance = attachment.instance
        if not req.params.get("InstanceId") and req.body:
            # AWS lets the caller omit InstanceId; moto 5.2.5 crashes without it, so complete the request.
            req.params["InstanceId"] = instance.id
            req.body = req.body + b"&InstanceId=" + quote(instance.id).encode()
        # Remember the attachment: with a transition delay it stays visible as `detaching` after moto drops it.
        self._detaching[volume_id] = (
            volume,
            attachment,
            attachment.device,
            instance.block_device_mapping.get(attachment.device),
        )
        return None

    # -- after moto: transitions -----------------------------------------------------------------------------
    def _attach_after(self, req: AwsRequest, status: int, body: bytes) -> bytes | None:
        if status != 200 or self.transitions.delay <= 0:
            return None
        volume = backend(self.sandbox, req).volumes.get(req.params.get("VolumeId", ""))
        if volume is None or volume.attachment is None:
            return None
        attachment = volume.attachment
        attachment.status = "attaching"
        mapping = attachment.instance.block_device_mapping.get(attachment.device)
        if mapping is not None:
            mapping.status = "attaching"

        def done() -> None:
            if volume.attachment is attachment and attachment.status == "attaching":
                attachment.status = "attached"
                if mapping is not None:
                    mapping.status = "in-use"

        self.transitions.schedule(self.transitions.delay, done)
        return None

    def _detach_after(self, req: AwsRequest, status: int, body: bytes) -> bytes | None:
        remembered = self._detaching.pop(req.params.get("VolumeId", ""), None)
        if status != 200 or self.transitions.delay <= 0 or remembered is None:
            return None
        volume, attachment, device, mapping = remembered
        instance = attachment.instance
        attachment.status = "detaching"
        volume.attachment = attachment
        if mapping is not None:
            mapping.status = "detaching"
            instance.block_device_mapping[device] = mapping

        def done() -> None:
            if volume.attachment is attachment:
                volume.attachment = None
                attachment.status = "detached"
            if mapping is not None and instance.block_device_mapping.get(device) is mapping:
                del instance.block_device_mapping[device]

        self.transitions.schedule(self.transitions.delay, done)
        return re.sub(rb"<status>[a-z]+</status>", b"<status>detaching</status>", body, count=1)

    def _created(self, req: AwsRequest, status: int, body: bytes, kind: str, pattern: bytes) -> Any:
        """The volume or snapshot (`kind`: moto's collection) a create call made, when it is to show a transition."""
        if status != 200 or self.transitions.delay <= 0:
            return None
        m = re.search(pattern, body)
        return getattr(backend(self.sandbox, req), kind).get(m.group(1).decode()) if m else None

    def _create_volume_after(self, req: AwsRequest, status: int, body: bytes) -> bytes | None:
        volume = self._created(req, status, body, "volumes", rb"<volumeId>(vol-[0-9a-f]+)</volumeId>")
        if volume is None:
            return None
        volume._sandbox_status = "creating"

        def done() -> None:
            volume.__dict__.pop("_sandbox_status", None)

        self.transitions.schedule(self.transitions.delay, done)
        return body.replace(b"<status>available</status>", b"<status>creating</status>", 1)

    def _create_snapshot_after(self, req: AwsRequest, status: int, body: bytes) -> bytes | None:
        snapshot = self._created(req, status, body, "snapshots", rb"<snapshotId>(snap-[0-9a-f]+)</snapshotId>")
        if snapshot is None:
            return None
        snapshot.status = "pending"
        snapshot._sandbox_progress = "0%"

        def halfway() -> None:
            if snapshot.status == "pending":
                snapshot._sandbox_progress = "50%"

        def done() -> None:
            if snapshot.status == "pending":
                snapshot.status = "completed"
                snapshot.__dict__.pop("_sandbox_progress", None)

        self.transitions.schedule(self.transitions.delay / 2, halfway)
        self.transitions.schedule(self.transitions.delay, done)
        body = body.replace(b"<status>completed</status>", b"<status>pending</status>", 1)
        return body.replace(b"<progress>100%</progress>", b"<progress>0%</progress>", 1)

    def register(self) -> None:
        before: dict[str, BeforeHook] = {
            "DescribeVolumes": self._describe_volumes_before,
            "AttachVolume": self._attach_before,
            "DetachVolume": self._detach_before,
        }
        after: dict[str, AfterHook] = {
            "AttachVolume": self._attach_after,
            "DetachVolume": self._detach_after,
            "CreateVolume": self._create_volume_after,
            "CreateSnapshot": self._create_snapshot_after,
        }
        for action, hook in before.items():
            self.sandbox.before("ec2", action, hook)
        for action, after_hook in after.items():
            self.sandbox.after("ec2", action, after_hook)
