"""AwsAccount: configuration checked before any AWS call, environment fallback, a thread-safe client cache."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from moto import mock_aws
from pydantic import SecretStr

from blocks.aws import AwsAccount, clear_client_cache, load_account
from core.errors import ConfigurationError


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    clear_client_cache()
    yield
    clear_client_cache()


def test_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:5000")
    aws = AwsAccount.from_env()
    assert (aws.region, aws.profile, aws.endpoint_url) == ("eu-west-1", None, "http://127.0.0.1:5000")
    assert load_account(None).resolved_region() == "eu-west-1"
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-southeast-2")
    assert AwsAccount.from_env().resolved_region() == "ap-southeast-2"


def test_unknown_region_names_the_field_or_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError) as info:
        AwsAccount(region="us-east-7")
    assert "AwsAccount.region" in str(info.value) and "us-east-7" in str(info.value)
    assert "us-east-1" in str(info.value)  # the fix shows real regions
    assert info.value.exit_code == 2
    monkeypatch.setenv("AWS_REGION", "mars-north-1")
    with pytest.raises(ConfigurationError, match="AWS_REGION"):
        AwsAccount.from_env()
    # Other partitions are known too.
    assert AwsAccount(region="cn-north-1").region == "cn-north-1"
    assert AwsAccount(region="us-gov-west-1").region == "us-gov-west-1"


def test_no_region_at_all(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    aws = AwsAccount.from_env()
    with pytest.raises(ConfigurationError, match="No AWS region") as info:
        aws.client("ec2")
    assert "AWS_REGION" in str(info.value)


def test_profile_must_exist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="'nope' does not exist"):
        AwsAccount(profile="nope")
    monkeypatch.setenv("AWS_PROFILE", "nope")
    with pytest.raises(ConfigurationError, match="AWS_PROFILE"):
        AwsAccount.from_env()
    config = tmp_path / "config"
    config.write_text("[profile train]\nregion = eu-central-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_PROFILE", "train")
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    assert AwsAccount.from_env().resolved_region() == "eu-central-1"


def test_half_given_credentials() -> None:
    with pytest.raises(ConfigurationError, match=r"aws_access_key_id is set but AwsAccount\.aws_secret_access_key"):
        AwsAccount(region="us-east-1", aws_access_key_id=SecretStr("AKIAEXAMPLE"))
    with pytest.raises(ConfigurationError, match="aws_secret_access_key is set"):
        AwsAccount(region="us-east-1", aws_secret_access_key=SecretStr("s"))
    with pytest.raises(ConfigurationError, match="session_token"):
        AwsAccount(region="us-east-1", aws_session_token=SecretStr("t"))


@pytest.mark.parametrize("url", ["127.0.0.1:5000", "ftp://host", "http://", "localhost"])
def test_endpoint_must_be_http_url(url: str) -> None:
    with pytest.raises(ConfigurationError, match="endpoint_url"):
        AwsAccount(region="us-east-1", endpoint_url=url)


def test_endpoint_and_config_honoured() -> None:
    aws = AwsAccount(region="eu-west-1", endpoint_url="http://127.0.0.1:5999", read_timeout=7, max_attempts=1)
    client = aws.client("ec2")
    assert client.meta.endpoint_url == "http://127.0.0.1:5999"
    assert client.meta.region_name == "eu-west-1"
    assert client.meta.config.read_timeout == 7
    assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": 1}
    fs = aws.filesystem()
    assert fs.client_kwargs["region_name"] == "eu-west-1"
    assert fs.endpoint_url == "http://127.0.0.1:5999"


def test_explicit_keys_used_and_not_leaked() -> None:
    aws = AwsAccount(
        region="us-east-1", aws_access_key_id=SecretStr("AKIAEXAMPLEKEY"), aws_secret_access_key=SecretStr("s3cr3t")
    )
    creds = aws.client("s3")._request_signer._credentials
    assert (creds.access_key, creds.secret_key) == ("AKIAEXAMPLEKEY", "s3cr3t")
    for text in (repr(aws), str(aws), aws.model_dump_json()):
        assert "s3cr3t" not in text and "AKIAEXAMPLEKEY" not in text


def test_missing_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ConfigurationError, match="No AWS credentials") as info:
        AwsAccount(region="us-east-1").client("ec2")
    assert "aws configure" in str(info.value)


def test_client_cache_same_object_and_thread_safe() -> None:
    aws = AwsAccount(region="us-east-1")
    results: list[object] = []
    barrier = threading.Barrier(16)

    def grab() -> None:
        barrier.wait()
        results.extend(aws.client("ec2") for _ in range(20))

    threads = [threading.Thread(target=grab) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 320 and len({id(c) for c in results}) == 1
    # Same settings, another block object: the same client. Other settings or service: another client.
    assert AwsAccount(region="us-east-1").client("ec2") is results[0]
    assert AwsAccount(region="us-west-2").client("ec2") is not results[0]
    assert aws.client("s3") is not results[0]


def test_changed_environment_gets_a_new_client(monkeypatch: pytest.MonkeyPatch) -> None:
    aws = AwsAccount(region="us-east-1")
    first = aws.client("ec2")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "rotated")
    assert aws.client("ec2") is not first


def test_role_assumed_through_sts() -> None:
    with mock_aws():
        aws = AwsAccount(region="us-east-1", role_arn="arn:aws:iam::123456789012:role/trainctl", max_attempts=1)
        ident = aws.client("sts").get_caller_identity()
    assert "assumed-role/trainctl/trainctl" in ident["Arn"]
    with pytest.raises(ConfigurationError, match="role_arn"):
        AwsAccount(region="us-east-1", role_arn="trainctl")


def test_invalid_numbers_rejected() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        AwsAccount(region="us-east-1", max_attempts=0)
    with pytest.raises(ValidationError):
        AwsAccount(region="us-east-1", connect_timeout=-1)
