"""IAM enforcement: a request signed with an IAM user's (or an assumed role's) keys gets only what that identity's
policies allow, as on AWS. The sandbox's own keys (`Sandbox.env`) are the account's root and are never restricted
(AWS does not restrict the root user by IAM policies either). Off by default, as in moto; `Sandbox(iam=True)` or
POST /_sandbox/iam {"enforce": true} turns it on.

What is evaluated (moto's evaluator: Allow, Action and Resource patterns; it evaluates no Condition):

- S3, in moto: the action (s3:GetObject, s3:ListBucket, ...) and the resource (the bucket's or the object's ARN),
  so prefix scoping is enforced. HeadBucket is authorized as s3:ListBucket, as on AWS.
- every other service (EC2, SSM including the run-command the sandbox answers itself, IAM, STS), here: the action
  only. A statement's Resource is taken to match: moto does not know which resources a call touches (it passes
  "*", which no ARN pattern matches).
- what AWS checks besides the call's own action: ec2:CreateTags when RunInstances, CreateVolume or CreateSnapshot
  carry TagSpecifications; iam:PassRole, on the role's ARN, when RunInstances names an instance profile.
- instances launched with an instance profile get an STS session of its role in their environment (instead of
  the root keys), so what runs there (the agent, s5cmd, the aws CLI) is held to the instance policy; and an
  instance comes Online in SSM only when its role allows the SSM agent's calls (no profile: never), as on AWS.

Not evaluated: conditions (tag conditions, ec2:CreateAction, s3:prefix, iam:PassedToService), permission
boundaries, SCPs, resource policies. Outside S3 a Deny statement applies to every resource of its actions.
"""

from __future__ import annotations

import json
import re
import threading
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import unescape

from moto.core.authorization import ActionAuthenticatorMixin
from moto.core.exceptions import ServiceException
from moto.iam.access_control import IAMPolicy, IAMRequest, PermissionResult, S3IAMRequest
from moto.s3.exceptions import BucketAccessDeniedError, S3AccessDeniedError
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from sandbox.protocol import ACCOUNT_ID, DUMMY_ACCESS_KEY, AwsRequest, error_for

if TYPE_CHECKING:
    from sandbox.server import Sandbox

_KEY = re.compile(r"Credential=([^/,\s]+)/")
_state: dict[str, Any] = {"enforce": False, "root": None, "patched": False}
_lock = threading.Lock()


def _access_key(authorization: str) -> str | None:
    match = _KEY.search(authorization or "")
    return match.group(1) if match else None


def _restricted(authorization: str) -> bool:
    """Enforcement is on and the request is signed with keys other than the sandbox's root keys."""
    key = _access_key(authorization)
    return bool(_state["enforce"]) and key is not None and key != _state["root"]


def _denial(arn: str, action: str, resource: str | None) -> str:
    on = f' on resource: "{resource}"' if resource else ""
    return (
        f"User: {arn} is not authorized to perform: {action}{on} "
        f"because no identity-based policy allows the {action} action"
    )


class _Denied(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _allows(policies: list[Any], action: str, resource: str | None) -> bool:
    """moto's evaluation of the identity's policies; resource None = unknown, so each statement's Resource matches."""
    permitted = False
    for policy in policies:
        document = IAMPolicy(policy)._policy_json  # private moto API: allowed only inside sandbox/
        if resource is None:
            statements = document["Statement"] if isinstance(document["Statement"], list) else [document["Statement"]]
            anywhere = [{**{k: v for k, v in s.items() if k != "NotResource"}, "Resource": "*"} for s in statements]
            document = {**document, "Statement": anywhere}
        result = IAMPolicy(json.dumps(document)).is_action_permitted(action, resource or "*")
        if result == PermissionResult.DENIED:
            return False
        permitted = permitted or result == PermissionResult.PERMITTED
    return permitted


class _ActionRequest(IAMRequest):
    """moto's IAMRequest (signature check, the caller's policies), judged on the action alone."""

    def require(self, action: str, resource: str | None = None) -> None:
        if not _allows(self._access_key.collect_policies(), action, resource):
            raise _Denied(_denial(self._access_key.arn, action, resource))

    def check_action_permitted(self, resource: str) -> None:
        if self._action != "sts:GetCallerIdentity":  # allowed to everyone, even under an explicit Deny
            self.require(self._action)


class _S3Request(S3IAMRequest):
    """moto's S3 check, with AWS's message naming the action and resource (moto says only "Access Denied")."""

    def check_action_permitted(self, resource: str) -> None:
        self._resource = resource
        super().check_action_permitted(resource)

    def _raise_access_denied(self) -> None:
        message = _denial(self._access_key.arn, self._action, getattr(self, "_resource", None))
        exc = BucketAccessDeniedError(self._data["BucketName"]) if "BucketName" in self._data else S3AccessDeniedError()
        exc.message = message
        exc.args = (message,)
        raise exc


def _authorize_in_moto(self: Any, iam_request_cls: type, resource: str = "*") -> None:
    """Replaces ActionAuthenticatorMixin._authenticate_and_authorize_action: S3 is checked here (moto knows the
    bucket and key); other services are checked by the before hook, which sees the calls moto never does."""
    if iam_request_cls is not S3IAMRequest or not _restricted(self.headers.get("Authorization", "")):
        return
    action = self._get_action()
    action = action[0] if isinstance(action, list) else action
    path = self.raw_path + (f"?{self.uri.split('?', 1)[1]}" if "?" in self.uri else "")
    request = _S3Request(
        account_id=self.current_account,
        method=self.method,
        path=path,
        data=self.data,
        body=self.raw_body,
        headers=self.headers,
        action="ListBucket" if action == "HeadBucket" else action,  # AWS authorizes HeadBucket as s3:ListBucket
    )
    request.check_signature()
    if action == "DeleteObject" and "/" not in resource.split(":::", 1)[-1]:
        # DeleteObjects: moto asks about the bucket; AWS authorizes s3:DeleteObject on each key's ARN. One key
        # refused refuses all here (AWS would list only that key among the errors).
        for key in _keys_to_delete(self.raw_body):
            request.check_action_permitted(f"{resource}/{key}")
        return
    request.check_action_permitted(resource)


def _keys_to_delete(body: bytes) -> list[str]:
    """The keys of a DeleteObjects body (`<Object><Key>k</Key></Object>...`; a regex, no XML parser needed)."""
    return [unescape(k) for k in re.findall(r"<Key>(.*?)</Key>", (body or b"").decode("utf-8", "replace"), re.S)]


def _patch_moto() -> None:
    with _lock:
        if not _state["patched"]:
            ActionAuthenticatorMixin._authenticate_and_authorize_action = _authorize_in_moto  # type: ignore[method-assign]
            _state["patched"] = True


def set_enforcement(enforce: bool, *, root_key: str) -> None:
    """On or off for every sandbox of this process (moto's backends are process-global too)."""
    _patch_moto()
    _state["root"] = root_key
    _state["enforce"] = bool(enforce)


def enforcing() -> bool:
    return bool(_state["enforce"])


# -- the before hook: every service but S3 ------------------------------------------------------------------------

_DENIED_CODES = {"ec2": ("UnauthorizedOperation", 403), "iam": ("AccessDenied", 403), "sts": ("AccessDenied", 403)}


def _implied(req: AwsRequest) -> list[tuple[str, str | None]]:
    """Actions AWS authorizes on top of the call's own: tags at creation, the role an instance profile passes."""
    implied: list[tuple[str, str | None]] = []
    if req.service != "ec2":
        return implied
    if req.action in {"RunInstances", "CreateVolume", "CreateSnapshot"} and any(
        k.startswith("TagSpecification.") for k in req.params
    ):
        implied.append(("ec2:CreateTags", None))
    profile = req.params.get("IamInstanceProfile.Name") or req.params.get("IamInstanceProfile.Arn")
    if req.action == "RunInstances" and profile:
        for role_arn in _profile_roles(profile.rsplit("/", 1)[-1]):
            implied.append(("iam:PassRole", role_arn))
    return implied


def _profile_roles(profile_name: str) -> list[str]:
    from moto.backends import get_backend

    try:
        profile = get_backend("iam")[ACCOUNT_ID]["aws"].get_instance_profile(profile_name)
    except Exception:  # an unknown profile: RunInstances itself answers that
        return []
    return [role.arn for role in profile.roles]


def _check(req: AwsRequest) -> Response | None:
    if req.service in (None, "s3") or not _restricted(req.headers.get("authorization", "")):
        return None
    # moto reads headers by their canonical names (`X-Amz-Date`); the parsed request has them lowercased.
    headers = {"-".join(p.capitalize() for p in k.split("-")): v for k, v in req.headers.items()}
    if req.body:
        headers.setdefault("Content-Length", str(len(req.body)))
    try:
        request = _ActionRequest(
            account_id=ACCOUNT_ID,
            method=req.method,
            path=req.path + (f"?{req.query}" if req.query else ""),
            data=req.params,
            body=req.body,
            headers=headers,
            action=req.action or "",
        )
        request.check_signature()
        request.check_action_permitted("*")
        for action, resource in _implied(req):
            request.require(action, resource)
    except _Denied as denied:
        code, status = _DENIED_CODES.get(req.service or "", ("AccessDeniedException", 400))
        prefix = "You are not authorized to perform this operation. " if req.service == "ec2" else ""
        return error_for(req, code, prefix + denied.message, status)
    except (HTTPException, ServiceException) as exc:  # bad signature, unknown key: moto's own answer
        error_code = str(getattr(exc, "error_type", None) or getattr(exc, "code", "AccessDenied"))
        status = exc.code if isinstance(exc, HTTPException) and isinstance(exc.code, int) else 403
        return error_for(req, error_code, str(getattr(exc, "message", exc)), status)
    return None


# What the SSM agent calls to register and to receive commands (the sandbox's stand-in for the agent's needs).
SSM_AGENT_ACTIONS = ("ssm:UpdateInstanceInformation", "ec2messages:GetMessages")


# -- instance profiles: the role's credentials on the instance -----------------------------------------------------


class InstanceCredentials:
    """An STS session of each instance's profile role, made once per instance (moto sessions last an hour)."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self._sessions: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()

    def env(self, instance_id: str, region: str) -> dict[str, str] | None:
        """AWS_ACCESS_KEY_ID/SECRET/SESSION_TOKEN of the instance's role; None when not enforcing or no profile."""
        if not enforcing():
            return None
        with self._lock:
            if instance_id not in self._sessions:
                session = self._assume(instance_id, region)
                if session is None:
                    return None
                self._sessions[instance_id] = session
            return dict(self._sessions[instance_id])

    def agent_registers(self, instance_id: str, region: str) -> bool:
        """Whether the SSM agent can register (the instance comes Online): with enforcement on, only when the
        instance's role allows the agent's calls, as on AWS, where an instance without them never shows up."""
        if not enforcing():
            return True
        role = self._role(instance_id, region)
        if role is None:
            return False
        from moto.backends import get_backend

        iam = get_backend("iam")[ACCOUNT_ID]["aws"]
        policies: list[Any] = [iam.get_role_policy(role.name, n)[1] for n in iam.list_role_policies(role.name)]
        policies += iam.list_attached_role_policies(role.name)[0]
        return all(_allows(policies, action, None) for action in SSM_AGENT_ACTIONS)

    def _role(self, instance_id: str, region: str) -> Any:
        associations = self.sandbox.ec2_backend(region).iam_instance_profile_associations
        association = associations.get(instance_id)
        roles = association.iam_instance_profile.roles if association else []
        return roles[0] if roles else None

    def _assume(self, instance_id: str, region: str) -> dict[str, str] | None:
        from moto.backends import get_backend

        role = self._role(instance_id, region)
        if role is None:
            return None
        sts = get_backend("sts")[ACCOUNT_ID]["aws"]
        session = sts.assume_role(
            region_name=region,
            role_session_name=instance_id,
            role_arn=role.arn,
            policy="",
            duration=3600,
            external_id="",
        )
        return {
            "AWS_ACCESS_KEY_ID": session.access_key_id,
            "AWS_SECRET_ACCESS_KEY": session.secret_access_key,
            "AWS_SESSION_TOKEN": session.session_token,
        }

    def reset(self) -> None:
        with self._lock:
            self._sessions.clear()


def install(sandbox: Sandbox, *, enforce: bool) -> InstanceCredentials:
    set_enforcement(enforce, root_key=DUMMY_ACCESS_KEY)
    sandbox.before("*", "*", _check)
    credentials = InstanceCredentials(sandbox)
    sandbox.on_reset(credentials.reset)
    sandbox.on_stop(lambda: set_enforcement(False, root_key=DUMMY_ACCESS_KEY))  # the next sandbox starts open

    def control(payload: dict[str, Any]) -> dict[str, Any]:
        if "enforce" in payload:
            set_enforcement(bool(payload["enforce"]), root_key=DUMMY_ACCESS_KEY)
        return {"enforce": enforcing()}

    sandbox.control("iam", control)
    return credentials
