"""The agent's errors: a spec it refuses, an S3 or AWS API answer it cannot use, a checkpoint that fails its
checks, secrets that cannot be read."""

from __future__ import annotations


class SpecError(ValueError):
    """A spec (or a job name) the agent refuses; the message names the field."""


class S3Error(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"S3 {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class AwsApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.status = status
        self.code = code
        self.message = message


class IntegrityError(Exception):
    """A checkpoint that fails its manifest (a size, a sha256, an unsafe name)."""


class SecretError(Exception):
    """Secrets that cannot be resolved; the message names each reference and why, never a value."""
