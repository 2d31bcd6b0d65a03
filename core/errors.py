"""Errors users see. Each says what was wrong and how to fix it, in one line.

The CLI maps `UsageError` (bad input, refused by a safety rule) to exit code 2 and every other
`TrainctlError` (AWS said no, endpoint unreachable) to exit code 1.
"""

from __future__ import annotations


class TrainctlError(Exception):
    """Base of every error trainctl raises on purpose. `fix` is the sentence telling the user what to do."""

    exit_code = 1

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        self.message = message.rstrip(".")
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.message}. {self.fix}" if self.fix else f"{self.message}."

    def __reduce__(self) -> tuple[object, ...]:
        # Prefect and multiprocessing pickle exceptions; keep the message and fix intact across that.
        return (_rebuild, (type(self), self.__dict__.copy()))


def _rebuild(cls: type[TrainctlError], state: dict[str, object]) -> TrainctlError:
    err = cls.__new__(cls)
    err.__dict__.update(state)
    Exception.__init__(err, str(err))
    return err


class UsageError(TrainctlError):
    """The request itself is wrong; nothing was changed in AWS."""

    exit_code = 2


class InvalidInputError(UsageError):
    """One field of the input is wrong; the message names it, shows the value, and says what is expected."""

    def __init__(self, field: str, value: object, expected: str, *, fix: str | None = None) -> None:
        self.field = field
        self.value = value
        self.expected = expected
        super().__init__(f"{field}: {_shown(value)} is not valid: expected {expected}", fix=fix)


def _shown(value: object, limit: int = 80) -> str:
    """The value as typed (repr: control and bidi characters escaped), cut short so the message stays one line."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f" ({len(value)} characters)" if isinstance(value, str | list | tuple) else ""
    return f"{text[: limit - 20]}…{size}"


class ConfigurationError(UsageError):
    """trainctl cannot reach AWS as configured: unknown region, no credentials, bad profile."""


# What adopting means, said the same way by every refusal and every --adopt help text.
ADOPT_MEANS = (
    "tag it trainctl:managed=true, so trainctl treats it as its own from now on "
    "(cleanup rules apply to it; --force can then delete it)"
)


class NotManagedError(UsageError):
    """The resource was not created by trainctl; it is never modified, nor read into a managed one, unless adopted."""

    def __init__(self, resource_id: str, *, action: str | None = None) -> None:
        self.resource_id = resource_id
        doing = f" will not {action} it" if action else " will not touch it"
        super().__init__(
            f"{resource_id} was not created by trainctl and is not managed by it (no trainctl:managed=true tag), "
            f"so trainctl{doing}",
            fix=f"To let trainctl use it, pass --adopt (adopt=True): that will {ADOPT_MEANS}. "
            "Otherwise act on it with the AWS console/CLI.",
        )


class SafetyRefusalError(UsageError):
    """A safety rule (DESIGN.md section 3) refused a destructive action; the fix names the override."""


class AwsError(TrainctlError):
    """AWS answered with an error that a retry will not fix. Carries the AWS error code."""

    def __init__(self, operation: str, code: str, aws_message: str, *, fix: str | None = None) -> None:
        self.operation = operation
        self.code = code
        self.aws_message = aws_message
        super().__init__(f"AWS {operation} failed with {code}: {aws_message}", fix=fix)


class CapacityRefusedError(AwsError):
    """EC2 refused the capacity asked for (spot: none now, or the max price is too low) in an AZ. Not retried by
    the task: what comes next (on-demand, another AZ, later) is the caller's decision (core/recovery.py)."""

    def __init__(
        self,
        operation: str,
        code: str,
        aws_message: str,
        *,
        capacity: str,
        availability_zone: str | None,
        fix: str | None = None,
    ) -> None:
        self.capacity = capacity
        self.availability_zone = availability_zone
        super().__init__(operation, code, aws_message, fix=fix)


class TerminatedError(TrainctlError):
    """The command was stopped by a termination signal (SIGTERM); the message says what was cleaned up.

    Exit code 143 (128 + SIGTERM), as a shell reports a process ended by that signal.
    """

    exit_code = 143


class EndpointUnreachableError(TrainctlError):
    """Nothing answered at the AWS endpoint (network, wrong AWS_ENDPOINT_URL, sandbox not running)."""
