"""EC2 instances: describe, resolve an AMI, launch (spot or on-demand, IMDSv2, encrypted root, tagged at creation,
idempotent by ClientToken), wait, observe training instances, and terminate — the one terminate, under rule 1
(persistent volumes survive their instance).
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any, Literal

from pydantic import BaseModel, Field

from blocks.aws import load_account
from core import tags as t
from core.data import InstanceTypeIO
from core.errors import AwsError, CapacityRefusedError, InvalidInputError, SafetyRefusalError, UsageError
from core.ids import validate_id
from core.models import Instance, Volume
from core.transfer import Location
from tasks.aws import WAIT, aws_task, translate
from tasks.capacity import offered_zones

DEFAULT_AMI_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
GONE_STATES = {"shutting-down", "terminated"}


class LaunchRequest(BaseModel):
    """One instance to launch. `idempotency_key` (e.g. job + attempt) makes a retried launch return the same
    instance instead of a second one."""

    name: str
    role: t.Role
    idempotency_key: str
    instance_type: str
    image_id: str | None = None
    image_parameter: str = DEFAULT_AMI_PARAMETER
    job: str | None = None
    attempt: int | None = None
    availability_zone: str | None = None
    subnet_id: str | None = None
    security_group_ids: list[str] = Field(default_factory=list)
    instance_profile: str | None = None
    root_volume_gib: int | None = None
    user_data: str | None = None
    spot: bool = False  # the capacity to launch; the spot → on-demand choice is the caller's (core.recovery)
    max_price: str | None = None
    bucket: str | None = None  # a training instance's job bucket (tagged: its record is found from the instance)
    extra_tags: dict[str, str] = Field(default_factory=dict)
    # What `shutdown` on the instance does (InstanceInitiatedShutdownBehavior); None: AWS's default, stop.
    shutdown_behavior: Literal["stop", "terminate"] | None = None

    @property
    def client_token(self) -> str:
        return client_token_for(self.idempotency_key)


def client_token_for(idempotency_key: str) -> str:
    """RunInstances' ClientToken (64 characters at most), also tagged so a retry finds its own instance."""
    return "trainctl-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:40]


def _ec2(account: str | None) -> Any:
    return load_account(account).client("ec2")


def get_instance(ec2: Any, instance_id: str) -> Instance:
    validate_id("instance", instance_id)
    with translate("DescribeInstances"):
        reservations = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    return Instance.from_aws(reservations[0]["Instances"][0])


@aws_task(name="describe-instance", task_run_name="describe {instance_id}", tags=["aws-ec2"])
def describe_instance(instance_id: str, *, account: str | None = None) -> Instance:
    """The instance as EC2 has it now (flows: a task, so a throttled call is retried)."""
    return get_instance(_ec2(account), instance_id)


class ImageInfo(BaseModel):
    image_id: str
    root_device: str
    root_size_gib: int | None = None


def resolve_image(request: LaunchRequest, *, account: str | None = None) -> ImageInfo:
    """The AMI given, or the one an SSM public parameter names, with its root device. Unknown → error."""
    image_id = request.image_id
    if not image_id:
        ssm = load_account(account).client("ssm")
        try:
            with translate("GetParameter"):
                image_id = ssm.get_parameter(Name=request.image_parameter)["Parameter"]["Value"]
        except Exception as exc:
            if getattr(exc, "code", "") == "ParameterNotFound":
                raise InvalidInputError(
                    "image_parameter", request.image_parameter, "an SSM parameter naming an AMI in this region"
                ) from exc
            raise
    validate_id("image", image_id or "", field="image_id")
    try:
        with translate("DescribeImages"):
            images = _ec2(account).describe_images(ImageIds=[image_id])["Images"]
    except Exception as exc:
        if getattr(exc, "code", "").startswith("InvalidAMIID"):
            images = []
        else:
            raise
    if not images:
        raise InvalidInputError("image_id", image_id, "an AMI that exists in this region")
    root_device = images[0].get("RootDeviceName", "/dev/xvda")
    root: dict[str, Any] = next(
        (b for b in images[0].get("BlockDeviceMappings", []) if b.get("DeviceName") == root_device), {}
    )
    size = root.get("Ebs", {}).get("VolumeSize")
    return ImageInfo(image_id=str(image_id), root_device=root_device, root_size_gib=int(size) if size else None)


def describe_instance_types(ec2: Any, instance_types: list[str]) -> dict[str, dict[str, Any]]:
    """DescribeInstanceTypes of these types in one call, by type. A type the region does not have is an input error
    naming it (AWS, and moto, refuse the whole call with InvalidInstanceType)."""
    wanted = list(dict.fromkeys(instance_types))
    try:
        with translate("DescribeInstanceTypes"):
            found = ec2.describe_instance_types(InstanceTypes=wanted)["InstanceTypes"]
    except Exception as exc:
        if getattr(exc, "code", "") in {"InvalidInstanceType", "InvalidParameterValue"}:
            found = []
        else:
            raise
    by_type = {str(data["InstanceType"]): data for data in found}
    missing = [name for name in wanted if name not in by_type]
    if missing:
        raise InvalidInputError("instance_type", missing[0], "an EC2 instance type offered in this region")
    return by_type


@aws_task(name="describe-instance-type-io", tags=["aws-ec2"])
def instance_type_io(instance_types: list[str], *, account: str | None = None) -> dict[str, InstanceTypeIO]:
    """Instance store, network and EBS bandwidth of these types (one DescribeInstanceTypes call)."""
    found = describe_instance_types(_ec2(account), instance_types)
    return {name: InstanceTypeIO.from_aws(data) for name, data in found.items()}


def check_instance_type(
    instance_type: str, *, availability_zone: str | None = None, account: str | None = None
) -> None:
    """The type exists in the region (DescribeInstanceTypes answers InvalidInstanceType otherwise, moto too) and,
    when the AZ is known, is offered there (RunInstances itself accepts any type in moto, so this is the check)."""
    ec2 = _ec2(account)
    describe_instance_types(ec2, [instance_type])
    if availability_zone and not offered_zones(ec2, instance_type, availability_zone=availability_zone):
        raise InvalidInputError(
            "instance_type",
            instance_type,
            f"a type offered in {availability_zone}",
            fix="Pick another type, or move the data volume to a zone that offers it (trainctl ebs move).",
        )


def subnet_zone(subnet_id: str, *, account: str | None = None) -> str:
    """The AZ a subnet is in (a launch into a subnet lands there)."""
    validate_id("subnet", subnet_id)
    try:
        with translate("DescribeSubnets"):
            subnets = _ec2(account).describe_subnets(SubnetIds=[subnet_id])["Subnets"]
    except Exception as exc:
        if getattr(exc, "code", "") == "InvalidSubnetID.NotFound":
            subnets = []
        else:
            raise
    if not subnets:
        raise InvalidInputError("subnet_id", subnet_id, "a subnet that exists in this region")
    return str(subnets[0]["AvailabilityZone"])


def validate_request(request: LaunchRequest, *, account: str | None = None) -> ImageInfo:
    """Everything RunInstances would need that can be checked without launching: type (and its offering in the
    AZ), AMI, root size. Called by launch_instance, and by flows before their first mutation."""
    zone = request.availability_zone
    if request.subnet_id:
        zone = subnet_zone(request.subnet_id, account=account)
    check_instance_type(request.instance_type, availability_zone=zone, account=account)
    image = resolve_image(request, account=account)
    if request.root_volume_gib and image.root_size_gib and request.root_volume_gib < image.root_size_gib:
        raise InvalidInputError(
            "root_volume_gib", request.root_volume_gib, f"at least the AMI's root size, {image.root_size_gib} GiB"
        )
    return image


# RunInstances answers these when spot cannot be had now at this price (CapacityRefusedError); on-demand may still
# launch.
SPOT_UNAVAILABLE = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InsufficientCapacity",
        "SpotMaxPriceTooLow",
        "MaxSpotInstanceCountExceeded",
        "UnfulfillableCapacity",
    }
)


def _existing_launch(ec2: Any, token: str) -> Instance | None:
    """The instance an earlier attempt with this token launched (a retried task must not make a second)."""
    with translate("DescribeInstances"):
        pages = ec2.get_paginator("describe_instances").paginate(
            Filters=[
                {"Name": f"tag:{t.CLIENT_TOKEN}", "Values": [token]},
                {"Name": "instance-state-name", "Values": ["pending", "running"]},
            ]
        )
        for page in pages:
            for reservation in page["Reservations"]:
                for data in reservation["Instances"]:
                    return Instance.from_aws(data)
    return None


def find_launched(idempotency_key: str, *, account: str | None = None) -> Instance | None:
    """The pending/running instance a launch with this key made, if any (cleanup after a half-done launch)."""
    return _existing_launch(_ec2(account), client_token_for(idempotency_key))


@aws_task(name="launch-instance", task_run_name="launch {request.role} {request.name}", tags=["aws-ec2"])
def launch_instance(request: LaunchRequest, *, account: str | None = None) -> Instance:
    """Launch one instance of the capacity asked for and wait until it is `running`. Validates type and AMI before
    any mutation. Spot refused for capacity or price raises CapacityRefusedError (EC2's code and the AZ): whether
    to ask on-demand instead is the caller's decision (core.recovery.launch_capacity)."""
    image = validate_request(request, account=account)
    ec2 = _ec2(account)
    existing = _existing_launch(ec2, request.client_token)
    if existing is not None:
        return wait_running(ec2, existing.id)
    params = {**_run_params(request, image), **_placement_params(request), **_capacity_params(request)}
    try:
        with translate("RunInstances"):
            launched = ec2.run_instances(**params)["Instances"][0]
    except AwsError as exc:
        if request.spot and exc.code in SPOT_UNAVAILABLE:
            zone = request.availability_zone
            raise CapacityRefusedError(
                exc.operation, exc.code, exc.aws_message, capacity="spot", availability_zone=zone, fix=exc.fix
            ) from exc
        raise
    return wait_running(ec2, launched["InstanceId"])


def _run_params(request: LaunchRequest, image: ImageInfo) -> dict[str, Any]:
    """What every launch asks: the image, type, token, IMDSv2, tags at creation and an encrypted root volume."""
    token = request.client_token
    root_size = request.root_volume_gib or image.root_size_gib
    tag_map = t.managed_tags(
        job=request.job,
        role=request.role,
        attempt=request.attempt,
        bucket=request.bucket,
        name=request.name,
        client_token=token,
        extra=request.extra_tags,
    )
    return {
        "ImageId": image.image_id,
        "InstanceType": request.instance_type,
        "MinCount": 1,
        "MaxCount": 1,
        "ClientToken": token,
        # IMDSv2 only: a stolen-credential SSRF cannot read the instance role through IMDSv1.
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 2},
        "TagSpecifications": [
            *t.tag_specifications("instance", tag_map),
            *t.tag_specifications("volume", {k: v for k, v in tag_map.items() if k != t.CLIENT_TOKEN}),
        ],
        "BlockDeviceMappings": [
            {
                "DeviceName": image.root_device,
                "Ebs": {
                    "Encrypted": True,
                    "DeleteOnTermination": True,
                    "VolumeType": "gp3",
                    # Restating the AMI's own root size keeps the mapping valid when only encryption changes.
                    **({"VolumeSize": root_size} if root_size else {}),
                },
            }
        ],
    }


def _placement_params(request: LaunchRequest) -> dict[str, Any]:
    """Where and as what it runs: subnet or AZ, security groups, profile, shutdown behaviour, user data."""
    params: dict[str, Any] = {}
    if request.subnet_id:
        params["SubnetId"] = validate_id("subnet", request.subnet_id)
    elif request.availability_zone:
        params["Placement"] = {"AvailabilityZone": request.availability_zone}
    if request.security_group_ids:
        params["SecurityGroupIds"] = [validate_id("security_group", g) for g in request.security_group_ids]
    if request.instance_profile:
        key = "Arn" if request.instance_profile.startswith("arn:") else "Name"
        params["IamInstanceProfile"] = {key: request.instance_profile}
    if request.shutdown_behavior:
        params["InstanceInitiatedShutdownBehavior"] = request.shutdown_behavior
    if request.user_data:
        params["UserData"] = base64.b64encode(request.user_data.encode()).decode()
    return params


def _capacity_params(request: LaunchRequest) -> dict[str, Any]:
    """Spot (one-time, terminated on interruption, under the max price) or on-demand."""
    if request.spot:
        spot_options: dict[str, Any] = {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}
        if request.max_price:
            spot_options["MaxPrice"] = request.max_price
        return {"InstanceMarketOptions": {"MarketType": "spot", "SpotOptions": spot_options}}
    # Another token: AWS ties a ClientToken to the parameters of its first call, and a spot job's key may have been
    # refused spot first. Same client-token tag, so a retry of this task and terminate_instance still recognise
    # the instance.
    return {"ClientToken": client_token_for(request.idempotency_key + ":on-demand")}


def wait_running(ec2: Any, instance_id: str) -> Instance:
    with translate("wait instance_running"):
        ec2.get_waiter("instance_running").wait(InstanceIds=[instance_id], WaiterConfig=WAIT)
    return get_instance(ec2, instance_id)


@aws_task(
    name="set-delete-on-termination", task_run_name="keep {volume_id} when {instance_id} terminates", tags=["aws-ec2"]
)
def keep_on_termination(instance_id: str, volume_id: str, *, account: str | None = None) -> None:
    """Set DeleteOnTermination=false for the volume on the instance, so terminating never deletes it."""
    ec2 = _ec2(account)
    validate_id("volume", volume_id)
    validate_id("instance", instance_id)
    # Read from the instance's block device mappings, not the volume's attachments: DescribeVolumes may omit
    # DeleteOnTermination (moto, hence the sandbox, does), and a missing flag must never read as "already false".
    with translate("DescribeInstances"):
        data = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    mapping = next(
        (b for b in data.get("BlockDeviceMappings", []) if b.get("Ebs", {}).get("VolumeId") == volume_id), None
    )
    if mapping is None or mapping["Ebs"].get("DeleteOnTermination") is False:
        return
    with translate("ModifyInstanceAttribute"):
        ec2.modify_instance_attribute(
            InstanceId=instance_id,
            BlockDeviceMappings=[{"DeviceName": mapping["DeviceName"], "Ebs": {"DeleteOnTermination": False}}],
        )


@aws_task(name="terminate-instance", task_run_name="terminate {instance_id}", tags=["aws-ec2"])
def terminate_instance(
    instance_id: str, *, idempotency_key: str | None = None, wait: bool = True, account: str | None = None
) -> bool:
    """Terminate a managed instance; False when it was already gone (or going). Each check is made against AWS
    at the moment of the call and refuses rather than forcing (DESIGN.md section 3). Two kinds of caller:

    - the run that launched it (`idempotency_key`: the instance's client-token tag must match it; anything else
      is refused). Persistent volumes still attached are set DeleteOnTermination=false and detached first (rule 1).
    - teardown (no key): any managed, unprotected instance. A persistent or protected volume still attached
      refuses the terminate: the plan's detach step did not happen (failed, skipped), and is never forced here.
    """
    ec2 = _ec2(account)
    try:
        instance = get_instance(ec2, instance_id)
    except Exception as exc:
        if getattr(exc, "code", "") == "InvalidInstanceID.NotFound":
            return False
        raise
    if instance.state in GONE_STATES:
        if wait:
            _wait_terminated(ec2, instance_id)
        return False
    if idempotency_key is None:
        _check_teardown_may_terminate(ec2, instance)
    else:
        _check_launched_by(instance, idempotency_key)
        for volume in _attached_volumes(ec2, instance_id):
            if volume.persistent and volume.attached_instance_id == instance_id:
                _keep_volume(ec2, instance_id, volume.id, account=account)
    with translate("TerminateInstances"):
        ec2.terminate_instances(InstanceIds=[instance_id])
    if wait:
        _wait_terminated(ec2, instance_id)
    return True


def _check_launched_by(instance: Instance, idempotency_key: str) -> None:
    if not instance.managed or instance.tags.get(t.CLIENT_TOKEN) != client_token_for(idempotency_key):
        raise SafetyRefusalError(
            f"refusing to terminate {instance.id}: it was not launched by this run",
            fix="Use `trainctl teardown` for resources of other runs.",
        )
    if instance.protected:  # someone marked it while the run went on: theirs to end, not this cleanup's
        raise SafetyRefusalError(
            f"refusing to terminate {instance.id}: it was tagged protected after this run launched it",
            fix="Remove the protected tag and run `trainctl teardown`, or terminate it yourself.",
        )


def _check_teardown_may_terminate(ec2: Any, instance: Instance) -> None:
    if not instance.managed or instance.protected:
        raise SafetyRefusalError(
            f"refusing to terminate {instance.id}: it is {'protected' if instance.managed else 'not managed'}"
        )
    attached = _attached_volumes(ec2, instance.id)
    kept = [v.id for v in attached if v.attached and (v.persistent or v.protected)]
    if kept:
        raise SafetyRefusalError(
            f"refusing to terminate {instance.id}: persistent/protected volume(s) {', '.join(kept)} still attached",
            fix="The detach step must succeed first; run the teardown again.",
        )


def _attached_volumes(ec2: Any, instance_id: str) -> list[Volume]:
    with translate("DescribeVolumes"):
        data = ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [instance_id]}])["Volumes"]
    return [Volume.from_aws(v) for v in data]


def _keep_volume(ec2: Any, instance_id: str, volume_id: str, *, account: str | None) -> None:
    """Rule 1 for a run's own instance: the persistent volume outlives it (DeleteOnTermination off, detached)."""
    keep_on_termination.fn(instance_id, volume_id, account=account)
    with translate("DetachVolume"):
        ec2.detach_volume(VolumeId=volume_id, InstanceId=instance_id)
    with translate("wait volume_available"):
        ec2.get_waiter("volume_available").wait(VolumeIds=[volume_id], WaiterConfig=WAIT)


@aws_task(name="wait-terminated", task_run_name="wait-terminated {instance_id}", tags=["aws-ec2"])
def wait_terminated(instance_id: str, *, account: str | None = None) -> None:
    validate_id("instance", instance_id)
    try:
        _wait_terminated(_ec2(account), instance_id)
    except Exception as exc:
        if "NotFound" not in str(getattr(exc, "code", "") or ""):  # forgotten by EC2 already: terminated long ago
            raise


def _wait_terminated(ec2: Any, instance_id: str) -> None:
    with translate("wait instance_terminated"):
        ec2.get_waiter("instance_terminated").wait(InstanceIds=[instance_id], WaiterConfig=WAIT)


# Every state an observed training instance can be in; terminated ones stay listed by EC2 for about an hour, long
# enough for a pass to see how an attempt ended.
TRAINING_INSTANCE_STATES = ["pending", "running", "shutting-down", "stopping", "stopped", "terminated"]
# EC2 accepts at most 200 values in one filter: more spot requests than that take one call per 200.
_FILTER_VALUES_MAX = 200


@aws_task(name="observe-training-instances", tags=["aws-ec2"])
def observe_training_instances(*, account: str | None = None) -> list[Instance]:
    """Every managed training instance (role `train`, terminated ones included) with its spot request's status
    code, in one paginated DescribeInstances and one DescribeSpotInstanceRequests (per 200 requests).

    An error raises (after the task's retries for transient ones): the caller must never read "could not look"
    as "gone". `core.spot.spot_interruption` classifies the result.
    """
    ec2 = _ec2(account)
    instances: dict[str, Instance] = {}
    with translate("DescribeInstances"):
        pages = ec2.get_paginator("describe_instances").paginate(
            Filters=[
                {"Name": f"tag:{t.ROLE}", "Values": [t.Role.TRAIN.value]},
                {"Name": "instance-state-name", "Values": TRAINING_INSTANCE_STATES},
            ],
            PaginationConfig={"PageSize": 1000},
        )
        for page in pages:
            for reservation in page["Reservations"]:
                for data in reservation["Instances"]:
                    if t.is_managed(t.from_aws(data.get("Tags"))):
                        instances.setdefault(data["InstanceId"], Instance.from_aws(data))
    statuses = _spot_request_statuses(ec2, sorted({i.spot_request_id for i in instances.values() if i.spot_request_id}))
    return [
        i.model_copy(update={"spot_request_status": statuses.get(i.spot_request_id or "")})
        for i in sorted(instances.values(), key=lambda i: i.id)
    ]


def _spot_request_statuses(ec2: Any, request_ids: list[str]) -> dict[str, str]:
    """Request ID → Status.Code. A filter rather than SpotInstanceRequestIds: an expired request is then simply
    absent instead of failing the whole call with InvalidSpotInstanceRequestID.NotFound."""
    statuses: dict[str, str] = {}
    for start in range(0, len(request_ids), _FILTER_VALUES_MAX):
        chunk = request_ids[start : start + _FILTER_VALUES_MAX]
        with translate("DescribeSpotInstanceRequests"):
            pages = ec2.get_paginator("describe_spot_instance_requests").paginate(
                Filters=[{"Name": "spot-instance-request-id", "Values": chunk}]
            )
            for page in pages:
                for request in page["SpotInstanceRequests"]:
                    code = (request.get("Status") or {}).get("Code")
                    if code:
                        statuses[request["SpotInstanceRequestId"]] = str(code)
    return statuses


@aws_task(name="resolve-instance", task_run_name="resolve {location}", tags=["aws-ec2"])
def resolve_instance(location: Location, *, account: str | None = None) -> Instance:
    """The running, trainctl-managed instance behind `i-…:/path` or `job:NAME:/path` (clear error otherwise)."""
    ec2 = load_account(account).client("ec2")
    if location.instance_id:
        with translate("ec2:DescribeInstances"):
            reservations = ec2.describe_instances(InstanceIds=[location.instance_id])["Reservations"]
        found = [Instance.from_aws(i) for r in reservations for i in r["Instances"]]
        if not found:
            raise InvalidInputError("instance", location.instance_id, "an existing instance")
        instance = found[0]
    else:
        filters = [
            {"Name": f"tag:{t.JOB}", "Values": [location.job]},
            {"Name": "instance-state-name", "Values": ["running"]},
        ]
        with translate("ec2:DescribeInstances"):
            pages = ec2.get_paginator("describe_instances").paginate(Filters=filters)
            found = [Instance.from_aws(i) for page in pages for r in page["Reservations"] for i in r["Instances"]]
        found = [i for i in found if i.managed]
        if not found:
            raise UsageError(
                f"job {location.job!r} has no running trainctl-managed instance",
                fix="Check `trainctl resources list`; name the instance directly (i-…:/path) if it has no job tag",
            )
        instance = max(found, key=lambda i: (i.attempt or 0, i.created_at))
    if not t.is_managed(instance.tags):
        raise UsageError(
            f"{instance.id} was not created by trainctl (no trainctl:managed tag in {t.MANAGED_VALUES}); "
            "trainctl only runs commands on instances it manages",
            fix="Launch the instance with trainctl, or copy through S3 yourself",
        )
    if instance.state != "running":
        raise UsageError(f"{instance.id} is {instance.state}; a transfer needs it running", fix="Start it first")
    return instance
