"""The local cloud: moto's server behind middleware that answers what moto gets wrong or lacks.

    with Sandbox() as cloud:
        os.environ.update(cloud.env)      # AWS_ENDPOINT_URL, dummy credentials, region
        boto3.client("ec2").run_instances(...)

Request flow: every request is parsed once (`protocol.parse_request`). Paths under `/_sandbox/` are the control
surface, paths under `/_imds/<instance-id>/` are that instance's metadata service. AWS requests go through the
`before` hooks registered for `(service, action)` — a hook may answer itself (SSM run-command, Pricing, EC2 rules)
— then to moto, then through the `after` hooks (which see moto's answer: RunInstances starts the instance
runtime, for example). Components register their hooks in `install(sandbox)`. A component may also name what a
request must not race with (`serialise`: an idempotency token, an S3 object): requests naming the same key run one
at a time, from the first hook to the last.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server
from werkzeug.wrappers import Response

from sandbox.protocol import ACCOUNT_ID, DUMMY_ACCESS_KEY, DUMMY_SECRET_KEY, AwsRequest, parse_request

BeforeHook = Callable[[AwsRequest], Response | None]
AfterHook = Callable[[AwsRequest, int, bytes], bytes | None]
ControlRoute = Callable[[dict[str, Any]], Any]
RawRoute = Callable[[AwsRequest, list[str]], Response]
SerialKey = Callable[[AwsRequest], str | None]


class _Middleware:
    """WSGI middleware in front of moto's application (see the module docstring for the order)."""

    def __init__(self, app: Any, sandbox: Sandbox) -> None:
        self.app = app
        self.sandbox = sandbox

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            response = self._handle(environ)
        except Exception as exc:  # a crash in the sandbox must never take the server down
            self.sandbox.log(f"internal error: {exc!r}")
            response = Response(
                json.dumps({"__type": "InternalError", "message": f"sandbox: {exc!r}"}),
                status=500,
                content_type="application/json",
            )
        return response(environ, start_response)

    def _handle(self, environ: dict[str, Any]) -> Response:
        req = parse_request(environ)
        parts = [p for p in req.path.split("/") if p]
        if parts and parts[0] in self.sandbox.raw_routes:
            return self.sandbox.raw_routes[parts[0]](req, parts[1:])
        key = (req.service or "", req.action or "")
        lock = self.sandbox.ec2_lock if req.service == "ec2" else _NO_LOCK
        # The keyed locks come first: a request waiting for one must not hold the EC2 lock meanwhile.
        with self.sandbox.keyed_locks.holding(self.sandbox.serial_keys(req)), lock:
            hooks = self.sandbox.before_hooks.get(("*", "*"), []) + self.sandbox.before_hooks.get(key, [])
            body_in = req.body
            for before in hooks:
                answer = before(req)
                if answer is not None:
                    return answer
            if req.body is not body_in:  # a hook completed the request (e.g. DetachVolume's InstanceId for moto)
                environ["wsgi.input"] = io.BytesIO(req.body)
                environ["CONTENT_LENGTH"] = str(len(req.body))
            status, headers, body = self._call_moto(environ)
            for after in self.sandbox.after_hooks.get(key, []):
                rewritten = after(req, status, body)
                if rewritten is not None:
                    body = rewritten
        # The body may have been rewritten, so its length is recomputed; a HEAD answer has no body but must
        # still report the object's length, as S3 does.
        moto_length = next((v for k, v in headers if k.lower() == "content-length"), None)
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        response = Response(body, status=status, headers=headers)
        if req.method == "HEAD" and moto_length is not None:
            response.headers["Content-Length"] = moto_length
        return response

    def _call_moto(self, environ: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
        captured: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            captured["status"] = int(status.split(" ", 1)[0])
            captured["headers"] = headers

        chunks = self.app(environ, start_response)
        try:
            body = b"".join(chunks)
        finally:
            close = getattr(chunks, "close", None)
            if close:
                close()
        return captured["status"], captured["headers"], body


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NO_LOCK = _NoLock()


class _KeyedLocks:
    """One lock per key, created on demand and dropped when no request holds or waits for it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextmanager
    def holding(self, keys: list[str]) -> Iterator[None]:
        held: list[tuple[str, threading.Lock]] = []
        try:
            for key in sorted(set(keys)):  # one order for everyone: two requests never wait for each other
                with self._guard:
                    lock, users = self._locks.get(key, (threading.Lock(), 0))
                    self._locks[key] = (lock, users + 1)
                lock.acquire()
                held.append((key, lock))
            yield
        finally:
            for key, lock in reversed(held):
                lock.release()
                with self._guard:
                    users = self._locks[key][1]
                    if users == 1:
                        del self._locks[key]
                    else:
                        self._locks[key] = (lock, users - 1)


class _QuietHandler(MotoRequestHandler):
    """moto's request handler without the per-request access log (a training run makes thousands of calls)."""

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class _Server(ThreadedMotoServer):
    """moto's in-process threaded server, with our middleware wrapped around its WSGI app."""

    def __init__(self, sandbox: Sandbox, host: str, port: int) -> None:
        super().__init__(ip_address=host, port=port, verbose=False)
        self._sandbox = sandbox

    def _server_entry(self) -> None:
        app = _Middleware(DomainDispatcherApplication(create_backend_app), self._sandbox)
        self._server = make_server(self._ip_address, self._port, app, True, request_handler=_QuietHandler)
        self._server_ready_event.set()
        self._server.serve_forever()


class Sandbox:
    """A local AWS: moto server + middleware + instance runtime + IMDS. Use as a context manager in tests.

    `boot_delay` is how long a new instance takes to show as SSM Online; `transition_delay` (seconds, 0 = instant,
    as moto) is how long pending/attaching/detaching/snapshot-pending states last so waiters really wait.
    `iam` turns IAM enforcement on for keys other than the sandbox's own (sandbox/iam.py says what is checked).
    """

    def __init__(
        self,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        state_dir: str | Path | None = None,
        region: str = "us-east-1",
        boot_delay: float = 0.5,
        transition_delay: float = 0.0,
        iam: bool = False,
        verbose: bool = False,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.region = region
        self.boot_delay = boot_delay
        self.transition_delay = transition_delay
        self.verbose = verbose
        self.iam_enforced = iam
        self._own_state_dir = state_dir is None
        self.state_dir = Path(state_dir) if state_dir else Path(tempfile.mkdtemp(prefix="trainctl-sandbox-"))
        self.ec2_lock = threading.RLock()
        self.keyed_locks = _KeyedLocks()
        self.serial_key_fns: dict[str, list[SerialKey]] = {}
        self.before_hooks: dict[tuple[str, str], list[BeforeHook]] = {}
        self.after_hooks: dict[tuple[str, str], list[AfterHook]] = {}
        self.raw_routes: dict[str, RawRoute] = {"_sandbox": self._control}
        self.control_routes: dict[str, ControlRoute] = {"reset": lambda _: self.reset(), "health": lambda _: "ok"}
        self._server: _Server | None = None
        self._reset_callbacks: list[Callable[[], None]] = []
        self._stop_callbacks: list[Callable[[], None]] = []
        self.endpoint_url = ""
        # Components, created in start() once the endpoint is known.
        self.runtime: Any = None
        self.ec2: Any = None
        self.ssm: Any = None
        self.faults: Any = None
        self.iam: Any = None

    # -- registration (used by the components' install functions) -------------------------------------------
    def before(self, service: str, action: str, hook: BeforeHook, *, first: bool = False) -> None:
        hooks = self.before_hooks.setdefault((service, action), [])
        if first:  # answers before the hooks registered earlier (a replayed idempotent call, for example)
            hooks.insert(0, hook)
        else:
            hooks.append(hook)

    def after(self, service: str, action: str, hook: AfterHook) -> None:
        self.after_hooks.setdefault((service, action), []).append(hook)

    def serialise(self, service: str, key: SerialKey) -> None:
        """Requests to `service` for which `key` gives the same string run one at a time (None: no constraint)."""
        self.serial_key_fns.setdefault(service, []).append(key)

    def serial_keys(self, req: AwsRequest) -> list[str]:
        found = (key(req) for key in self.serial_key_fns.get(req.service or "", []))
        return [f"{req.service}:{k}" for k in found if k is not None]

    def control(self, name: str, route: ControlRoute) -> None:
        self.control_routes[name] = route

    def on_reset(self, callback: Callable[[], None]) -> None:
        self._reset_callbacks.append(callback)

    def on_stop(self, callback: Callable[[], None]) -> None:
        self._stop_callbacks.append(callback)

    def log(self, message: str) -> None:
        if self.verbose:
            print(f"[sandbox] {message}", flush=True)

    def ec2_backend(self, region: str | None = None) -> Any:
        """moto's EC2 backend for a region (private moto API: allowed only inside sandbox/)."""
        from moto.backends import get_backend

        return get_backend("ec2")[ACCOUNT_ID][region or self.region]

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> Sandbox:
        from sandbox import ec2, faults, iam, imds, pricing, runtime, s3, ssm

        self._server = _Server(self, self.host, self.requested_port)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.port = port
        self.endpoint_url = f"http://{host}:{port}"
        self.iam = iam.install(self, enforce=self.iam_enforced)  # first: the caller is checked before anything runs
        self.runtime = runtime.install(self)
        self.ssm = ssm.install(self)
        imds.install(self)
        self.ec2 = ec2.install(self)
        pricing.install(self)
        s3.install(self)
        self.faults = faults.install(self)
        self.log(f"listening on {self.endpoint_url}, state in {self.state_dir}")
        return self

    def stop(self) -> None:
        for callback in reversed(self._stop_callbacks):
            try:
                callback()
            except Exception as exc:
                self.log(f"stop callback failed: {exc!r}")
        if self._server is not None:
            self._server.stop()
            self._server = None
        from moto.backends import get_backend

        # The backends are process-global: leave no instances or buckets behind for the next sandbox.
        for name in ("ec2", "s3", "ssm", "secretsmanager", "iam", "sts"):
            get_backend(name).reset()
        if self._own_state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def env(self) -> dict[str, str]:
        """The environment that points boto3, the AWS CLI and trainctl at this sandbox."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": DUMMY_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET_KEY,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
        }

    def client(self, service: str, *, retries: int = 1, **config: Any) -> Any:
        """A boto3 client for this sandbox (tests use retries=1 so a refused call fails at once); `config`: more
        botocore Config options."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            service,
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=DUMMY_ACCESS_KEY,
            aws_secret_access_key=DUMMY_SECRET_KEY,
            config=Config(
                retries={"total_max_attempts": retries, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
                **config,
            ),
        )

    def reset(self) -> str:
        """Forget every resource and end every instance process; the sandbox keeps running."""
        for callback in self._reset_callbacks:
            callback()
        from moto.moto_api._internal.models import moto_api_backend

        with self.ec2_lock:
            moto_api_backend.reset()
        return "reset"

    # -- control surface -----------------------------------------------------------------------------------
    def interrupt_spot(
        self, instance_id: str, *, delay_seconds: float = 120.0, reason: str = "price"
    ) -> dict[str, Any]:
        """A spot interruption: the IMDS notice now, termination (Server.SpotInstanceTermination) after the delay;
        `reason` ("price" | "capacity") sets the spot request status codes AWS would show (sandbox/ec2_spot.py)."""
        result: dict[str, Any] = self.ec2.interrupt_spot(instance_id, delay_seconds=delay_seconds, reason=reason)
        return result

    def recommend_rebalance(self, instance_id: str) -> dict[str, Any]:
        """An EC2 rebalance recommendation, visible in the instance's IMDS."""
        result: dict[str, Any] = self.runtime.recommend_rebalance(instance_id)
        return result

    def set_capacity(
        self, availability_zone: str, instance_type: str, *, available: bool, spot_only: bool = False
    ) -> None:
        """Make RunInstances of `instance_type` in `availability_zone` fail with InsufficientInstanceCapacity (only
        spot launches with `spot_only`), and GetSpotPlacementScores score that AZ low for the type."""
        self.ec2.set_capacity(availability_zone, instance_type, available=available, spot_only=spot_only)

    def throttle(self, fraction: float, services: Iterable[str] | None = None) -> None:
        """Answer `fraction` of AWS calls (optionally only for `services`) with the service's throttling error."""
        self.faults.throttle(fraction, services)

    def set_gpu_utilization(self, instance_id: str, percent: float | list[float]) -> None:
        """What the fake `nvidia-smi` on that instance reports: one utilisation for all its GPUs, or one per GPU.
        ValueError for an instance type without a GPU (there nvidia-smi fails, as on AWS)."""
        self.runtime.set_gpu_utilization(instance_id, percent)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0, interval: float = 0.1) -> bool:
        """Poll `predicate` until true or the timeout passes; returns the last result."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(interval)
        return predicate()

    def _control(self, req: AwsRequest, parts: list[str]) -> Response:
        name = parts[0] if parts else "health"
        route = self.control_routes.get(name)
        if route is None:
            return Response(json.dumps({"error": f"unknown control {name!r}"}), 404, content_type="application/json")
        try:
            payload = json.loads(req.body or b"{}") if req.body else {}
            result = route(payload)
        except (KeyError, ValueError, TypeError) as exc:
            return Response(json.dumps({"error": str(exc)}), 400, content_type="application/json")
        return Response(json.dumps({"result": result}, default=str), 200, content_type="application/json")
