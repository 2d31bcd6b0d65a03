"""The retry policy and AWS error translation every AWS task uses (DESIGN.md section 4).

Two layers of retries: botocore's standard mode (a few quick attempts inside one call), then Prefect task
retries with exponential backoff and jitter — only for errors a retry can fix. Everything else fails at once
as one of our errors, carrying the AWS code and a sentence the user can act on.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    PartialCredentialsError,
    ReadTimeoutError,
    WaiterError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from core.errors import (
    AwsError,
    CapacityRefusedError,
    ConfigurationError,
    EndpointUnreachableError,
    TrainctlError,
    UsageError,
)

if TYPE_CHECKING:
    # Types only: `import prefect` costs ~1 s, which a command that runs no flow never pays (issue 17).
    from prefect import Task
    from prefect.client.schemas.objects import TaskRun
    from prefect.futures import PrefectFuture, PrefectFutureList
    from prefect.states import State

P = ParamSpec("P")
R = TypeVar("R")

# Codes AWS documents as "try again": throttling, service-side failures, and capacity that may free up.
TRANSIENT_CODES: frozenset[str] = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "SlowDown",
        "BandwidthLimitExceeded",
        "EC2ThrottledException",
        "PriorRequestNotComplete",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "InternalFailure",
        "InternalServerError",
        "InternalServiceError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "Unavailable",
        "InsufficientInstanceCapacity",
        "InsufficientHostCapacity",
        "InsufficientReservedInstanceCapacity",
        "InsufficientCapacity",
    }
)

# Network failures: retried like throttling, shown as EndpointUnreachableError once retries are spent.
CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    BotoConnectionError,  # EndpointConnectionError, ConnectTimeoutError, ProxyConnectionError
    ReadTimeoutError,
    ConnectionClosedError,
)

DEFAULT_RETRIES = 4
# boto3 waiters poll every 2 s here (their default of 15 s makes a sandbox run, and an impatient user, wait for
# nothing); 450 polls make the 15 minutes a slow volume or instance transition may take.
WAIT = {"Delay": 2, "MaxAttempts": 450}
_DENIED_ACTION = re.compile(r"not authorized to perform: ([a-z0-9-]+:[A-Za-z0-9*]+)")


def _code_and_status(exc: BaseException) -> tuple[str | None, int | None]:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return error.get("Code"), status
    if isinstance(exc, AwsError):
        return exc.code, getattr(exc, "http_status", None)
    return None, None


def is_transient(exc: BaseException) -> bool:
    """Would the same call, made again a little later, plausibly succeed?"""
    if isinstance(exc, CapacityRefusedError):
        return False  # the caller decides what to ask for next (core/recovery.py), not a blind retry
    if isinstance(exc, (EndpointUnreachableError, *CONNECTION_ERRORS)):
        return True
    code, status = _code_and_status(exc)
    if code is None and status is None:
        return False
    return code in TRANSIENT_CODES or (status is not None and 500 <= status < 600)


def _fix_for(code: str, operation: str, status: int | None) -> str:
    """One sentence per family of AWS error codes, telling the user what to do."""
    permission = operation if ":" in operation else f"the permission for {operation}"
    if code in TRANSIENT_CODES and "Capacity" in code:
        return (
            "AWS has no capacity for this instance type in this availability zone right now; try another zone "
            "or instance type, or allow the on-demand fallback"
        )
    if code in TRANSIENT_CODES or (status is not None and status >= 500):
        return (
            "AWS kept throttling or failing after several retries; run again later, or lower concurrency with a "
            "Prefect concurrency limit on the aws-ec2 tag"
        )
    if code == "NoSuchBucket":
        return "Check the bucket name (`aws s3 ls` lists the buckets this identity sees) and the region"
    if code.endswith("NotFound") or code in {"NoSuchKey", "NoSuchEntity", "ResourceNotFoundException"}:
        return "Check the ID (`trainctl resources list` shows what exists); the resource may already be deleted"
    if code.endswith(".Malformed") or code.startswith("InvalidID"):
        return "The ID is malformed; copy it from `trainctl resources list` or the AWS console"
    if code in {"UnauthorizedOperation", "AccessDenied", "AccessDeniedException", "Forbidden"}:
        return (
            f"Grant {permission} to the identity in use (`aws sts get-caller-identity` shows it); "
            "`aws sts decode-authorization-message` explains an encoded EC2 message"
        )
    if code in {"AuthFailure", "InvalidClientTokenId", "SignatureDoesNotMatch", "UnrecognizedClientException"}:
        return "The credentials are not valid for this account or region; check AWS_PROFILE / the access key in use"
    if code in {"ExpiredToken", "ExpiredTokenException", "RequestExpired"}:
        return "The credentials have expired; refresh them (`aws sso login`, a new session token) and run again"
    if code == "InvalidVolume.ZoneMismatch":
        return "The volume and the instance are in different availability zones; snapshot the volume and restore it"
    if code in {"IncorrectState", "IncorrectInstanceState", "VolumeInUse", "DependencyViolation", "InvalidState"}:
        return (
            "The resource is in the wrong state for this action; wait for it to settle or do the step before "
            "(e.g. detach a volume before deleting it) and run again"
        )
    if code.endswith("LimitExceeded") or code in {"MaxSpotInstanceCountExceeded", "VcpuLimitExceeded"}:
        return "An account quota was reached; free resources or request an increase in Service Quotas"
    if code == "OptInRequired":
        return "The account is not subscribed to this service or region; opt in from the AWS console"
    if code.startswith(("InvalidParameter", "MissingParameter", "Validation", "InvalidRequest", "Unsupported")):
        return "AWS rejected a value in the request; check the parameter named in the message and run again"
    if code.startswith("Invalid"):
        return "AWS rejected a value in the request; check the value named in the message"
    return "See the AWS message; run with --debug for the full details"


def _no_message(code: str) -> str:
    """A sentence for an error AWS sent without a message (EC2 does for InvalidSnapshot.NotFound)."""
    if code.endswith(".NotFound"):
        # InvalidSnapshot.NotFound → "snapshot", InvalidInstanceID.NotFound → "instance ID"
        noun = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", code.removesuffix(".NotFound").removeprefix("Invalid"))
        return f"the {noun.lower().replace(' id', ' ID')} does not exist (AWS sent no message)"
    return "AWS sent no message"


def aws_error(operation: str, exc: ClientError) -> AwsError:
    """A botocore ClientError as our AwsError (code, HTTP status and a fix sentence kept)."""
    code, status = _code_and_status(exc)
    code = code or "Unknown"
    message = (exc.response.get("Error", {}).get("Message") or "").strip() or _no_message(code)
    # AWS's access-denied messages name the IAM action ("... not authorized to perform: ec2:RunInstances ..."),
    # the one to grant: it may differ from the call's name (HeadBucket needs s3:ListBucket).
    action = _DENIED_ACTION.search(message)
    err = AwsError(operation, code, message, fix=_fix_for(code, action.group(1) if action else operation, status))
    err.http_status = status  # type: ignore[attr-defined]  # kept so is_transient can read 5xx after translation
    return err


@contextmanager
def translate(operation: str) -> Iterator[None]:
    """Turn botocore errors raised inside into trainctl errors. Usable as a decorator too.

    `operation` names what was being done, best as the IAM action (`ec2:DescribeVolumes`) so an access-denied
    message can name the permission to grant. Our own errors pass through unchanged.
    """
    try:
        yield
    except TrainctlError:
        raise
    except ClientError as exc:
        raise aws_error(operation, exc) from exc
    except S3UploadFailedError as exc:
        # boto3's upload_file wraps the ClientError; the user needs its code, not the wrapper's name.
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, ClientError):
            raise aws_error(operation, cause) from exc
        raise AwsError(operation, "S3UploadFailed", str(exc), fix="Check the bucket and your access to it") from exc
    except (NoCredentialsError, PartialCredentialsError) as exc:
        raise ConfigurationError(
            f"AWS {operation}: no usable AWS credentials ({exc})",
            fix="Run `aws configure`, set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
            "or save an AwsAccount block with keys",
        ) from exc
    except NoRegionError as exc:
        raise ConfigurationError(
            f"AWS {operation}: no AWS region configured",
            fix="Set AWS_REGION (e.g. us-east-1) or the region field of the AwsAccount block",
        ) from exc
    except CONNECTION_ERRORS as exc:
        endpoint = getattr(exc, "kwargs", {}).get("endpoint_url") or "the AWS endpoint"
        override = os.environ.get("AWS_ENDPOINT_URL")
        where = f" (AWS_ENDPOINT_URL={override})" if override else ""
        verb = "timed out answering" if isinstance(exc, ReadTimeoutError | ConnectTimeoutError) else "did not answer"
        raise EndpointUnreachableError(
            f"AWS {operation}: {endpoint}{where} {verb}",
            fix="Check the network, or AWS_ENDPOINT_URL / the AwsAccount endpoint_url "
            "(is the sandbox running? `trainctl sandbox up`); unset it to use AWS itself",
        ) from exc
    except WaiterError as exc:
        # A waiter gave up (too many attempts) or saw a failure state; its last response says which.
        error = (exc.last_response or {}).get("Error", {})
        reason = str(getattr(exc, "kwargs", {}).get("reason", ""))
        code = error.get("Code") or ("WaiterTimeout" if "Max attempts" in reason else "WaiterFailed")
        fix = (
            _fix_for(code, operation, None)
            if error.get("Code")
            else "The resource did not reach the expected state; check it with `trainctl resources list` and run again"
        )
        raise AwsError(operation, code, str(exc), fix=fix) from exc
    except ParamValidationError as exc:
        raise UsageError(
            f"AWS {operation}: the request was refused before sending: {exc}",
            fix="Check the values passed (IDs, sizes, names)",
        ) from exc


def exception_of(state: State[Any]) -> BaseException | None:
    """The exception a Failed state carries, whether held directly or in a result record."""
    data = state.data
    if isinstance(data, BaseException):
        return data
    result = getattr(data, "result", None)  # ResultRecord when results are persisted
    if isinstance(result, BaseException):
        return result
    try:
        value = state.result(raise_on_failure=False)
    except Exception:
        return None
    return value if isinstance(value, BaseException) else None


def retry_transient(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect `retry_condition_fn`: retry only errors `is_transient` accepts (a plain function on purpose:
    Prefect 3 calls the condition only when `inspect.isfunction` is true)."""
    exc = exception_of(state)
    return exc is not None and is_transient(exc)


class AwsTask(Generic[P, R]):
    """A Prefect task built on first use. `.fn` is the plain function (translated errors, no Prefect import): what
    the CLI's operations call. Calling it, `.submit`, `.map`, `.with_options` and every other Task attribute build
    the real `prefect.Task` once and delegate to it, so a flow gets real task runs with retries."""

    def __init__(self, fn: Callable[P, R], options: dict[str, Any]) -> None:
        self.fn = fn
        self._options = options
        self._task: Task[P, R] | None = None
        self._lock = threading.Lock()

    @property
    def task(self) -> Task[P, R]:
        """The real Prefect task (built once, thread-safe: flows submit from several threads)."""
        with self._lock:
            if self._task is None:
                from prefect import task as prefect_task
                from prefect.cache_policies import NO_CACHE
                from prefect.tasks import exponential_backoff

                options: dict[str, Any] = {
                    "cache_policy": NO_CACHE,
                    "retries": DEFAULT_RETRIES,
                    "retry_delay_seconds": exponential_backoff(backoff_factor=1),
                    "retry_jitter_factor": 0.5,
                    "retry_condition_fn": retry_transient,
                    **self._options,
                }
                self._task = prefect_task(**options)(self.fn)
            return self._task

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.task(*args, **kwargs)

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> PrefectFuture[R]:
        return self.task.submit(*args, **kwargs)

    def map(self, *args: Any, **kwargs: Any) -> PrefectFutureList[R]:
        return self.task.map(*args, **kwargs)

    def with_options(self, **kwargs: Any) -> Task[P, R]:
        return self.task.with_options(**kwargs)

    def __getattr__(self, name: str) -> Any:
        # Only attributes not found on this object reach here (name, tags, retries, ...): the real task's.
        if name.startswith("__") or name in {"fn", "_options", "_task", "_lock"}:
            raise AttributeError(name)
        return getattr(self.task, name)

    def __repr__(self) -> str:
        return f"AwsTask({self._options.get('name') or self.fn.__name__!r})"


def aws_task(**kwargs: Any) -> Callable[[Callable[P, R]], AwsTask[P, R]]:
    """`prefect.task` with trainctl's AWS policy: no caching, retries of transient errors only, backoff + jitter.

    The body runs inside `translate(<task name>)`, so whatever botocore raises reaches the caller as a trainctl
    error. Callers pass `name=` and `tags=` (`aws-ec2`, `aws-ssm`: the concurrency-limit keys); any other
    `prefect.task` option overrides the defaults. The task is an `AwsTask`: Prefect is imported only when a flow
    (or anyone) uses it as a task; `.fn` runs without it.
    """

    def decorate(fn: Callable[P, R]) -> AwsTask[P, R]:
        operation = str(kwargs.get("name") or fn.__name__)

        @functools.wraps(fn)
        def run(*args: P.args, **kw: P.kwargs) -> R:
            with translate(operation):
                return fn(*args, **kw)

        return AwsTask(run, dict(kwargs))

    return decorate


def current_task_run_id() -> str | None:
    """The ID of the Prefect task run this code runs in, or None outside one. Without Prefect imported there is
    no run, and nothing is imported to find that out."""
    if "prefect" not in sys.modules:
        return None
    from prefect.context import TaskRunContext

    context = TaskRunContext.get()
    return str(context.task_run.id) if context is not None else None


def run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """Prefect's run logger inside a flow or task run (its lines reach the run's page), else a plain logger."""
    if "prefect" in sys.modules:
        from prefect.context import FlowRunContext, TaskRunContext

        if TaskRunContext.get() is not None or FlowRunContext.get() is not None:
            from prefect import get_run_logger

            return get_run_logger()
    return logging.getLogger("trainctl")
