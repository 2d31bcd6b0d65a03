"""The AWS account: the only place that builds boto3 sessions, clients and s3fs filesystems.

Configuration is checked up front (region known, profile present, credentials whole, endpoint an http(s) URL)
so a typo is reported before any AWS call, naming the field or environment variable and the fix.

`AwsConfig` is the account as a plain pydantic model: what the AWS environment gives, with no Prefect import
(~1 s a command that runs no flow does not pay, issue 17). The saved Prefect block `AwsAccount` is the same model
as a Block (blocks/account.py), imported only when a block is named.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Mapping
from datetime import datetime
from functools import cache
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast
from urllib.parse import urlparse

import boto3
import botocore.loaders
import botocore.session
import botocore.utils
from botocore.config import Config
from botocore.credentials import DeferredRefreshableCredentials
from pydantic import BaseModel, Field, SecretStr, model_validator

from core.errors import ConfigurationError
from core.names import NameKind, validate_name

if TYPE_CHECKING:
    from prefect.blocks.core import Block

    from blocks.account import AwsAccount as AwsAccount  # re-exported lazily: see __getattr__ at the end

# Environment variables botocore reads on its own; clients built from the environment are cached per value of
# these (hashed), so a changed environment (a test, a rotated key) never gets a stale client.
_ENV_KEYS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CA_BUNDLE",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_EC2_METADATA_DISABLED",
)

B = TypeVar("B", bound="Block")

_CREDENTIALS_FIX = (
    "Provide credentials: `aws configure` (or AWS_PROFILE=<profile>), AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
    "or save an AwsAccount block with aws_access_key_id and aws_secret_access_key"
)

# One lock for both caches: building a session/client is rare and boto3 Sessions are not thread-safe.
_LOCK = threading.RLock()
_SESSIONS: dict[tuple[Any, ...], boto3.Session] = {}
_CLIENTS: dict[tuple[Any, ...], Any] = {}


# One service-model loader for every session: parsing the EC2 model costs ~0.5 s per new session otherwise.
_LOADER = botocore.loaders.create_loader()


def _parse_timestamp(value: Any) -> datetime:
    """ISO 8601 with a zone (what S3 and EC2 send) through datetime.fromisoformat; anything else through botocore's
    own parser. botocore's (dateutil) takes half the time of a large S3 listing: 0.6 s → 0.3 s per 5,000 keys."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return parsed
    return cast(datetime, botocore.utils.parse_timestamp(value))


def _botocore_session() -> botocore.session.Session:
    session = botocore.session.get_session()
    session.register_component("data_loader", _LOADER)
    session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=_parse_timestamp)
    return session


def clear_client_cache() -> None:
    """Forget every cached session and client (tests; a process that rotates its configuration)."""
    with _LOCK:
        _SESSIONS.clear()
        _CLIENTS.clear()


@cache
def known_regions() -> frozenset[str]:
    """Every region botocore knows EC2 in, across partitions (aws, aws-cn, aws-us-gov, ...)."""
    session = _botocore_session()  # the shared loader: the EC2 model read here is the one the EC2 client uses
    regions: set[str] = set()
    for partition in session.get_available_partitions():
        regions.update(session.get_available_regions("ec2", partition_name=partition, allow_non_regional=False))
    return frozenset(regions)


def check_region(value: str, source: str) -> str:
    """Refuse a region botocore does not know, naming where the value came from and the closest fix."""
    region = value.strip()
    if region in known_regions():
        return region
    close = sorted(r for r in known_regions() if r.split("-")[0] == region.split("-")[0])[:8]
    hint = f" Known regions like it: {', '.join(close)}." if close else ""
    raise ConfigurationError(
        f"{source}: unknown AWS region {value!r}",
        fix=f"Set {source} to a region such as us-east-1 (`aws ec2 describe-regions` lists them).{hint}",
    )


def check_endpoint(value: str, source: str) -> str:
    parsed = urlparse(value.strip())
    if parsed.scheme not in {"http", "https"} or not parsed.hostname:
        raise ConfigurationError(
            f"{source}: {value!r} is not an http(s) URL",
            fix=f"Set {source} to a URL such as http://127.0.0.1:5000 (the sandbox prints it), or unset it for AWS",
        )
    return value.strip()


def check_profile(value: str, source: str) -> str:
    available = botocore.session.Session(profile=None).available_profiles
    if value not in available:
        listed = ", ".join(sorted(available)) or "none configured"
        raise ConfigurationError(
            f"{source}: AWS profile {value!r} does not exist (profiles: {listed})",
            fix=f"Create it with `aws configure --profile {value}` or set {source} to an existing profile",
        )
    return value


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


class AwsConfig(BaseModel):
    """Where and as whom trainctl calls AWS: region, profile or keys, optional role and endpoint (sandbox)."""

    region: str | None = Field(default=None, description="AWS region, e.g. us-east-1. Default: the environment.")
    profile: str | None = Field(default=None, description="A profile from ~/.aws/config.")
    endpoint_url: str | None = Field(default=None, description="Custom endpoint (sandbox, moto server).")
    aws_access_key_id: SecretStr | None = Field(default=None, title="AWS access key ID")
    aws_secret_access_key: SecretStr | None = Field(default=None, title="AWS secret access key")
    aws_session_token: SecretStr | None = Field(default=None, title="AWS session token")
    role_arn: str | None = Field(default=None, description="Role assumed via STS; credentials refresh themselves.")
    connect_timeout: float = Field(default=5, gt=0, description="Seconds to wait for a TCP connection.")
    read_timeout: float = Field(default=60, gt=0, description="Seconds to wait for a response.")
    max_attempts: int = Field(
        default=3, ge=1, le=20, description="Total attempts per call (botocore standard mode; 1 = no retry)."
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        # ConfigurationError is not a ValueError, so pydantic lets it through unchanged to the caller.
        if self.region is not None:
            self.region = check_region(self.region, "AwsAccount.region")
        if self.endpoint_url is not None:
            self.endpoint_url = check_endpoint(self.endpoint_url, "AwsAccount.endpoint_url")
        if self.profile is not None:
            check_profile(self.profile, "AwsAccount.profile")
        if (self.aws_access_key_id is None) != (self.aws_secret_access_key is None):
            given, missing = (
                ("aws_access_key_id", "aws_secret_access_key")
                if self.aws_access_key_id is not None
                else ("aws_secret_access_key", "aws_access_key_id")
            )
            raise ConfigurationError(
                f"AwsAccount.{given} is set but AwsAccount.{missing} is not",
                fix=f"Set both {given} and {missing}, or neither to use the profile/environment credentials",
            )
        if self.aws_session_token is not None and self.aws_access_key_id is None:
            raise ConfigurationError(
                "AwsAccount.aws_session_token is set without aws_access_key_id and aws_secret_access_key",
                fix="A session token only works together with the key pair it was issued with; set all three",
            )
        if self.role_arn is not None and not self.role_arn.startswith("arn:"):
            raise ConfigurationError(
                f"AwsAccount.role_arn: {self.role_arn!r} is not a role ARN",
                fix="Use the role's ARN, e.g. arn:aws:iam::123456789012:role/trainctl",
            )
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        """The standard AWS environment as an account (no saved block): AWS_PROFILE, AWS_REGION, AWS_ENDPOINT_URL."""
        env = os.environ if environ is None else environ
        profile = env.get("AWS_PROFILE") or None
        region_var = next((k for k in ("AWS_REGION", "AWS_DEFAULT_REGION") if env.get(k)), None)
        region = env[region_var] if region_var else None
        endpoint = env.get("AWS_ENDPOINT_URL") or None
        # Checked here first so the message names the environment variable, not the block field.
        if region is not None and region_var is not None:
            region = check_region(region, region_var)
        if endpoint is not None:
            endpoint = check_endpoint(endpoint, "AWS_ENDPOINT_URL")
        if profile is not None:
            check_profile(profile, "AWS_PROFILE")
        return cls(region=region, profile=profile, endpoint_url=endpoint)

    # -- sessions and clients

    def _settings_key(self) -> tuple[Any, ...]:
        # Secrets enter the key only as a digest; the environment matters whenever a field defers to it.
        secret = "\0".join(
            _secret(s) or "" for s in (self.aws_access_key_id, self.aws_secret_access_key, self.aws_session_token)
        )
        env = "\0".join(f"{k}={os.environ.get(k, '')}" for k in _ENV_KEYS)
        return (
            self.region,
            self.profile,
            self.endpoint_url,
            self.role_arn,
            self.connect_timeout,
            self.read_timeout,
            self.max_attempts,
            hashlib.sha256(secret.encode()).hexdigest(),
            hashlib.sha256(env.encode()).hexdigest(),
        )

    def _botocore_config(self) -> Config:
        return Config(
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            retries={"mode": "standard", "total_max_attempts": self.max_attempts},
            # Tasks run up to 16 calls at once on one cached client (kms_checksums); botocore's default pool of 10
            # would open and throw away a connection for each call beyond that.
            max_pool_connections=32,
        )

    def _base_session(self) -> boto3.Session:
        return boto3.Session(
            botocore_session=_botocore_session(),
            aws_access_key_id=_secret(self.aws_access_key_id),
            aws_secret_access_key=_secret(self.aws_secret_access_key),
            aws_session_token=_secret(self.aws_session_token),
            profile_name=self.profile,
            region_name=self.region,
        )

    def session(self) -> boto3.Session:
        """The account's boto3 Session (one per settings), with the role assumed if `role_arn` is set."""
        key = self._settings_key()
        with _LOCK:
            cached = _SESSIONS.get(key)
            if cached is not None:
                return cached
            region = self.resolved_region()
            base = self._base_session()
            if base.get_credentials() is None:
                raise ConfigurationError("No AWS credentials found", fix=_CREDENTIALS_FIX)
            session = self._assume_role(base, region) if self.role_arn else base
            _SESSIONS[key] = session
            return session

    def _assume_role(self, base: boto3.Session, region: str) -> boto3.Session:
        sts = base.client("sts", region_name=region, endpoint_url=self.endpoint_url, config=self._botocore_config())
        role_arn = self.role_arn

        def refresh() -> dict[str, str]:
            creds = sts.assume_role(RoleArn=role_arn, RoleSessionName="trainctl")["Credentials"]
            expiration: datetime = creds["Expiration"]
            return {
                "access_key": creds["AccessKeyId"],
                "secret_key": creds["SecretAccessKey"],
                "token": creds["SessionToken"],
                "expiry_time": expiration.isoformat(),
            }

        # Deferred: the first AssumeRole happens on the first call, and botocore refreshes before expiry.
        core_session = _botocore_session()
        core_session._credentials = DeferredRefreshableCredentials(refresh_using=refresh, method="sts-assume-role")
        core_session.set_config_variable("region", region)
        return boto3.Session(botocore_session=core_session, region_name=region)

    def client(self, service: str, *, retries: bool = True) -> Any:
        """A boto3 client for `service`, cached (thread-safe) per service and account settings.

        `retries=False`: one attempt per call, for calls that must not be sent twice without a look first
        (botocore's standard mode resends after a read timeout, when the first request may have been carried out).
        """
        key = (service, retries, *self._settings_key())
        cached = _CLIENTS.get(key)
        if cached is not None:
            return cached
        with _LOCK:
            cached = _CLIENTS.get(key)
            if cached is None:
                config = self._botocore_config()
                if not retries:
                    config = config.merge(Config(retries={"mode": "standard", "total_max_attempts": 1}))
                cached = self.session().client(
                    service,
                    region_name=self.resolved_region(),
                    endpoint_url=self.endpoint_url,
                    config=config,
                )
                _CLIENTS[key] = cached
            return cached

    def filesystem(self) -> Any:
        """An s3fs filesystem with the same credentials, region, endpoint and timeouts as the clients.

        With `role_arn`, the assumed role's current credentials are frozen into the filesystem: build one per
        transfer rather than keeping it for longer than the role session (1 hour by default).
        """
        import s3fs  # deferred: s3fs pulls in aiobotocore, which most commands never need

        session = self.session()
        creds = session.get_credentials()
        frozen = creds.get_frozen_credentials()
        return s3fs.S3FileSystem(
            key=frozen.access_key,
            secret=frozen.secret_key,
            token=frozen.token,
            endpoint_url=self.endpoint_url,
            client_kwargs={"region_name": self.resolved_region()},
            config_kwargs={
                "connect_timeout": self.connect_timeout,
                "read_timeout": self.read_timeout,
                "retries": {"mode": "standard", "total_max_attempts": self.max_attempts},
            },
        )

    def resolved_region(self) -> str:
        """The region calls go to: the block's, else the profile's or environment's; refused if none or unknown."""
        if self.region:
            return self.region
        source = f"the region of profile {self.profile!r}" if self.profile else "AWS_REGION"
        region = self._base_session().region_name
        if not region:
            raise ConfigurationError(
                "No AWS region configured",
                fix="Set AWS_REGION (e.g. export AWS_REGION=us-east-1), the profile's region in ~/.aws/config, "
                "or the region field of the AwsAccount block",
            )
        return check_region(region, source)


def load_account(name: str | None = None) -> AwsConfig:
    """The saved AwsAccount block `name`, or the standard AWS environment when no name is given (no Prefect)."""
    if name is None:
        return AwsConfig.from_env()
    from blocks.account import AwsAccount as AwsAccount  # re-exported lazily: see __getattr__ at the end

    return load_block(AwsAccount, name)


def load_block(cls: type[B], name: str) -> B:
    """`cls.load(name)` with a one-line error naming the block and how to create it when it is missing."""
    validate_name(NameKind.BLOCK, name, field=f"{cls.__name__} block name")
    try:
        # Block.load is sync here (we are not in an event loop); the union with a coroutine is Prefect's typing.
        return cast(B, cls.load(name))
    except ValueError as exc:
        if "Unable to find block document" not in str(exc) and "not found" not in str(exc).lower():
            raise
        slug = cls.get_block_type_slug()
        raise ConfigurationError(
            f"No {cls.__name__} block named {name!r} ({slug}/{name})",
            fix=f"Create and save it (`{cls.__name__}(...).save({name!r})`, or in the Prefect UI), "
            "list saved blocks with `prefect block ls`, or leave the name out to use the defaults/environment",
        ) from exc


def __getattr__(name: str) -> Any:
    """`from blocks.aws import AwsAccount` keeps working, importing Prefect only then (PEP 562)."""
    if name == "AwsAccount":
        from blocks.account import AwsAccount

        return AwsAccount
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
