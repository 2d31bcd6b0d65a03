"""Names and device names: one rule per kind, refused before any call with the field and the problem named."""

from __future__ import annotations

import pytest

from core.errors import InvalidInputError, NotManagedError
from core.jobs import validate_job_name
from core.names import NameKind, validate_device_name, validate_name
from core.s3uri import validate_bucket


@pytest.mark.parametrize("name", ["bert-data", "ds_1.v2", "a", "x" * 128, "data@us-east-1a", "k=v+w:z"])
def test_resource_names_that_pass(name: str) -> None:
    assert validate_name(NameKind.RESOURCE, name, field="name") == name


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("a;$(id)", "';', a shell metacharacter"),
        ("a`id`", "'`', a shell metacharacter"),
        ("a$HOME", "'$', a shell metacharacter"),
        ("a|b", "'|', a shell metacharacter"),
        ("a/b", None),
        ("../etc", None),
        ("line\nbreak", "U+000A, a control character"),
        ("nul\x00", "U+0000, a control character"),
        ("tab\there", "U+0009, a control character"),
        ("evil\u202egpj.exe", "U+202E, a bidirectional override"),
        ("isolate\u2066x", "U+2066, a bidirectional override"),
        ("zero\u200bwidth", "U+200B, a control character"),
        ("has space", "a space"),
        ("données", "not ASCII"),
        ("x" * 129, "129 characters long"),
        ("", "it is empty"),
        ("-leading-dash", None),
    ],
)
def test_resource_names_refused_with_the_problem_named(name: str, problem: str | None) -> None:
    with pytest.raises(InvalidInputError) as caught:
        validate_name(NameKind.RESOURCE, name, field="--name")
    message = str(caught.value)
    assert message.startswith("--name: ") and "1–128 letters, digits" in message
    if problem:
        assert problem in message
    assert "\n" not in message and "\u202e" not in message and "\x00" not in message  # shown escaped


def test_a_long_value_is_shown_cut_short() -> None:
    with pytest.raises(InvalidInputError) as caught:
        validate_name(NameKind.RESOURCE, "y" * 300, field="name")
    assert "(300 characters)" in str(caught.value) and "y" * 100 not in str(caught.value)


@pytest.mark.parametrize("name", ["train-1", "a", "x" * 63])
def test_job_names_that_pass(name: str) -> None:
    assert validate_job_name(name) == name


@pytest.mark.parametrize("name", ["Train", "a_b", "x" * 64, "-a", "job\n", "a;b", "a/b", ""])
def test_job_names_refused(name: str) -> None:
    with pytest.raises(InvalidInputError, match=r"^job: "):
        validate_job_name(name, field="job")


@pytest.mark.parametrize(("name", "ok"), [("gpu-template", True), ("GPU", False), ("my template", False)])
def test_block_names(name: str, ok: bool) -> None:
    if ok:
        assert validate_name(NameKind.BLOCK, name, field="template") == name
    else:
        with pytest.raises(InvalidInputError, match=r"^template: "):
            validate_name(NameKind.BLOCK, name, field="template")


@pytest.mark.parametrize("device", ["/dev/sdf", "/dev/sdp", "/dev/xvdf", "/dev/xvdp", "/dev/sdf1", "/dev/sdk6"])
def test_device_names_ec2_recommends_for_ebs_pass(device: str) -> None:
    assert validate_device_name(device) == device


@pytest.mark.parametrize(
    "device",
    [
        "/dev/sda1;reboot",
        "/dev/sda1",  # the root device
        "/dev/xvda",
        "/dev/sdb",  # instance store
        "/dev/sdq",
        "/dev/sdf7",
        "/dev/sdf\n",
        "sdf",
        "/dev/nvme1n1",  # how Nitro shows it, not a name EC2 takes
        "/dev/sdf$(id)",
        "",
    ],
)
def test_other_device_names_refused_naming_the_field(device: str) -> None:
    with pytest.raises(InvalidInputError, match=r"^--device: .*/dev/sd\[f-p\]"):
        validate_device_name(device, field="--device")


@pytest.mark.parametrize(("value", "bucket"), [("jobs", "jobs"), ("s3://jobs", "jobs"), ("s3://jobs/", "jobs")])
def test_a_bucket_may_be_given_as_a_uri(value: str, bucket: str) -> None:
    assert validate_bucket(value) == bucket


@pytest.mark.parametrize("value", ["s3://jobs/prefix", "s3://s3://jobs", "Jobs", "ab", "jobs\n", "1.2.3.4"])
def test_a_bad_bucket_is_shown_as_given(value: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        validate_bucket(value, field="--bucket")
    assert str(caught.value).startswith(f"--bucket: {value!r} is not valid")


def test_not_managed_says_what_adopting_means() -> None:
    message = str(NotManagedError("snap-0123456789abcdef0", action="restore a volume from"))
    assert "snap-0123456789abcdef0" in message and "not managed by" in message
    assert "--adopt" in message and "tag it trainctl:managed=true" in message
    assert "cleanup rules apply to it; --force can then delete it" in message
