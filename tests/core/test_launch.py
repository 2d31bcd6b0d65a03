"""JobSpec validation, the agent spec (the command stays a literal argument list), scripts, and .gitignore rules."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from core import jobs
from core.errors import InvalidInputError
from core.jobs import JobRecord, JobSpec, TemplateSpec
from core.launch import (
    agent_command_script,
    agent_spec,
    data_mount_script,
    gitignore_matcher,
    launch_key,
    next_attempt,
    parse_gitignore,
    ship_script,
    start_agent_script,
)
from core.paths import PathEscapeError
from core.transfer import INSTANCE_HELPER
from tasks.code import package_code, scan_code_dir
from tests.conftest import ship_agent

TEMPLATE = TemplateSpec(instance_type="t3.micro")
VOL = "vol-0123456789abcdef0"


def spec(**fields: Any) -> JobSpec:
    base: dict[str, Any] = {"name": "llm", "bucket": "ml-jobs", "template": TEMPLATE, "command": ["python", "t.py"]}
    return JobSpec(**{**base, **fields})


def test_an_unknown_or_moved_field_is_refused_not_ignored() -> None:
    # on_demand_fallback moved into `resume`; wait into LaunchOptions: an old spec file must not silently lose them.
    moved = ({"on_demand_fallback": True}, {"wait": True})
    for fields in (*moved, {"resume": {"strategy": "sometimes"}}, {"data_strategy": "fast"}):
        with pytest.raises(ValidationError):
            spec(**fields)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"name": "Bad_Name"}, "name"),
        ({"name": ""}, "name"),
        ({"bucket": "Not A Bucket"}, "bucket"),
        ({"command": []}, "command"),
        ({"command": [""]}, "command"),
        ({"checkpoint_uri": "/local/ckpt"}, "checkpoint_uri"),
        ({"checkpoint_uri": "gs://bucket/ckpt/"}, "checkpoint_uri"),
        ({"checkpoint_uri": "s3://bucket"}, "checkpoint_uri"),
        ({"checkpoint_dir": "relative/dir"}, "checkpoint_dir"),
        ({"checkpoint_dir": "/x/../etc"}, "checkpoint_dir"),
        ({"env": {"BAD-NAME": "1"}}, "env"),
        ({"env": {"TRAINCTL_RESUME_FROM": "x"}}, "env"),
        ({"data_volume_id": "vol-nope"}, "data_volume_id"),
        ({"mount_point": "/data"}, "mount_point"),
        ({"data": "/local/data"}, "data"),
        ({"data": "s3://bucket"}, "data"),
        ({"data_strategy": "direct-s3"}, "data"),
        ({"data_strategy": "local-cache"}, "data"),
        ({"data_strategy": "prewarmed-ebs"}, "data"),
        ({"data_strategy": "existing-ebs"}, "data_volume_id"),
        ({"data_strategy": "existing-ebs", "data": "s3://ml-data/d/"}, "data_volume_id"),
        ({"data_strategy": "direct-s3", "data": "s3://ml-data/d/", "data_volume_id": VOL}, "data_volume_id"),
        ({"data_strategy": "local-cache", "data": "s3://ml-data/d/", "data_volume_id": VOL}, "data_volume_id"),
        ({"data_strategy": "direct-s3", "data": "s3://ml-data/d/", "mount_point": "/data"}, "mount_point"),
        ({"max_price": "cheap"}, "max_price"),
        ({"spot": False, "max_price": "0.5"}, "spot"),
        ({"spot": False, "resume": {"on_demand_fallback": True}}, "resume.on_demand_fallback"),
        ({"template": {"instance_type": "t3.micro", "image_id": "ami-x"}}, "template.image_id"),
        ({"template": {"instance_type": "not a type"}}, "template.instance_type"),
        ({"template": {"instance_type": "t3.micro", "extra_tags": {"trainctl:managed": "no"}}}, "template.extra_tags"),
    ],
)
def test_bad_input_names_the_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInputError) as err:
        spec(**fields)
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}:")


def test_defaults_follow_the_job_layout() -> None:
    s = spec(data_volume_id="vol-0123456789abcdef0")
    assert s.resolved_checkpoint_uri == "s3://ml-jobs/trainctl/jobs/llm/checkpoints/"
    assert s.resolved_checkpoint_dir == "/var/lib/trainctl/jobs/llm/checkpoints"
    assert s.resolved_mount_point == "/mnt/trainctl/vol-0123456789abcdef0"
    assert spec(checkpoint_uri="s3://other/ckpt").resolved_checkpoint_uri == "s3://other/ckpt/"
    assert s.template == TEMPLATE and spec(template="gpu-block").template == "gpu-block"
    # Round trip as a Prefect flow parameter would do it.
    assert JobSpec.model_validate_json(s.model_dump_json()) == s


def test_data_strategies_that_fit_together_are_accepted_and_reach_the_trainers_env() -> None:
    data = "s3://ml-data/datasets/d/"
    for fields in (
        {},  # no data at all: today's job
        {"data_volume_id": VOL},  # the user's volume (auto means existing-ebs)
        {"data_strategy": "existing-ebs", "data_volume_id": VOL},
        {"data": data},
        {"data": data, "data_volume_id": VOL},
        {"data": data, "data_strategy": "prewarmed-ebs", "mount_point": "/data"},
        {"data": data, "data_strategy": "prewarmed-ebs", "data_volume_id": VOL},  # resolved: the prewarmed volume
    ):
        s = spec(**fields)
        assert JobSpec.model_validate_json(s.model_dump_json()) == s
    env = agent_spec(spec(data=data, data_strategy="direct-s3"), attempt=1, instance_id="i-0123456789abcdef0")["env"]
    assert env["TRAINCTL_DATA_URI"] == data and int(env["TRAINCTL_DATA_PARALLELISM"]) >= 1
    assert "TRAINCTL_DATA_DIR" not in env
    from agent.spec import AgentSpec

    doc = agent_spec(spec(data=data, data_strategy="local-cache"), attempt=1, instance_id="i-0123456789abcdef0")
    cache = AgentSpec.from_dict(json.loads(json.dumps(doc))).data_cache
    assert cache is not None and (cache.uri, cache.mount) == (data, "/mnt/trainctl/instance-store")
    assert not {"TRAINCTL_DATA_DIR", "TRAINCTL_DATA_URI"} & set(doc["env"])  # the agent sets the dir once copied
    resolved = spec(data=data, data_strategy="prewarmed-ebs", data_volume_id=VOL, mount_point="/data")
    env = agent_spec(resolved, attempt=1, instance_id="i-0123456789abcdef0")["env"]
    assert env["TRAINCTL_DATA_DIR"] == "/data" and "TRAINCTL_DATA_URI" not in env


def test_keep_instance_reaches_the_agent_spec_the_agent_accepts() -> None:
    from agent.spec import AgentSpec

    for keep in (False, True):
        s = spec(keep_instance=True) if keep else spec()
        assert s.keep_instance is keep
        doc = json.loads(json.dumps(agent_spec(s, attempt=1, instance_id="i-0123456789abcdef0")))
        assert doc["keep_instance"] is keep and AgentSpec.from_dict(doc).keep_instance is keep


def test_attempts_and_launch_keys() -> None:
    assert next_attempt(None) == 1
    record = JobRecord.model_validate(
        {"name": "llm", "bucket": "b", "attempt": 3, "created_at": "2024-01-01T00:00:00Z"}
    )
    assert next_attempt(record) == 4
    assert launch_key("llm", 1) != launch_key("llm", 2) and launch_key("llm", 1) == launch_key("llm", 1)


NASTY = ["python", "train.py", "; rm -rf /", "$(touch /tmp/pwned)", "`id`", 'it\'s "quoted"', "line1\nline2", "*"]


def test_command_with_metacharacters_is_a_literal_argument_list(tmp_path: Path) -> None:
    s = spec(command=NASTY, env={"NOTE": "$(reboot); echo 'x'"})
    doc = agent_spec(s, attempt=2, instance_id="i-0123456789abcdef0")
    # It travels as JSON (S3 → the instance): the agent gets exactly these arguments back.
    assert json.loads(json.dumps(doc))["command"] == NASTY
    assert doc["env"]["NOTE"] == "$(reboot); echo 'x'"
    assert doc["job"] == "llm" and doc["attempt"] == 2 and doc["checkpoint_uri"].startswith("s3://ml-jobs/")
    assert doc["workdir"] == f"{jobs.instance_job_dir('llm')}/code"
    # No script sent over SSM contains the command; every interpolated value in them is quoted.
    for script in (
        ship_script("llm", "s3://ml-jobs/x/"),
        start_agent_script("llm"),
        agent_command_script("llm", "poll"),
    ):
        text = "\n".join(script)
        assert "rm -rf /" not in text and "pwned" not in text and "reboot" not in text
    # The agent execs the list without a shell: simulate with subprocess (argv in, argv out).
    out = subprocess.run(
        ["python3", "-c", "import json,sys; print(json.dumps(sys.argv[1:]))", *doc["command"][2:]],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    assert json.loads(out.stdout) == NASTY[2:]
    assert not Path("/tmp/pwned").exists()


def test_scripts_quote_paths_and_run_under_the_instance_root(tmp_path: Path) -> None:
    text = "\n".join(ship_script("llm", "s3://b/it's here/"))
    assert shlex.quote("s3://b/it's here/") in text
    assert '"${TRAINCTL_ROOT:-}"' in text
    mount = data_mount_script("vol-0123456789abcdef0", "/dev/sdf", "xfs", "/data/my set")
    assert any(line.startswith("link=") and shlex.quote("/data/my set") in line for line in mount)
    assert not any(
        line.startswith("link=") for line in data_mount_script("vol-0123456789abcdef0", "/dev/sdf", "xfs", None)
    )


def _run_on_instance(script: list[str], root: Path) -> Any:
    run = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        capture_output=True,
        text=True,
        check=True,
        env={"TRAINCTL_ROOT": str(root), "PATH": "/usr/bin:/bin"},
    )
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_the_poll_runs_the_agent_and_says_when_it_is_not_installed(tmp_path: Path) -> None:
    job_dir = tmp_path / "var/lib/trainctl/jobs/llm"
    job_dir.mkdir(parents=True)
    (job_dir / "job.log").write_text("step 1\nstep 2\n")
    (job_dir / "exit_code").write_text("3\n")
    # A launch killed before its ship step: no agent on the instance, and the answer says so instead of failing.
    assert _run_on_instance(agent_command_script("llm", "poll"), tmp_path) == {"job": "llm", "installed": False}
    ship_agent(job_dir)
    got = _run_on_instance(agent_command_script("llm", "poll", "--offset", 7, "--limit", 100), tmp_path)
    assert got["installed"] is True and got["exit_code"] == 3 and got["status"] == "failed"
    assert (got["chunk"], got["offset"], got["size"]) == ("step 2\n", 14, 14)
    assert not got["trainer_alive"] and not got["agent_alive"]
    assert _run_on_instance(agent_command_script("llm", "poll", "--offset", 14), tmp_path)["chunk"] == ""


# -- .gitignore -------------------------------------------------------------------------------------------------


def test_gitignore_rules() -> None:
    m = gitignore_matcher(
        {
            "": "# comment\n*.pyc\n/build/\ndata/\n!keep.pyc\nlogs/**/*.log\nsecret?.txt\n\\#literal\n",
            "sub": "local.txt\n/only-here.txt\n",
        }
    )
    assert m.ignored("a.pyc", is_dir=False) and m.ignored("x/y/a.pyc", is_dir=False)
    assert not m.ignored("keep.pyc", is_dir=False)
    assert m.ignored("build", is_dir=True) and not m.ignored("src/build", is_dir=True)  # anchored
    assert m.ignored("src/data", is_dir=True) and not m.ignored("data", is_dir=False)  # dir-only
    assert m.ignored("data/x.txt", is_dir=False)  # inside an ignored folder
    assert m.ignored("logs/a/b/c.log", is_dir=False) and m.ignored("logs/c.log", is_dir=False)
    assert m.ignored("secret1.txt", is_dir=False) and not m.ignored("secret12.txt", is_dir=False)
    assert m.ignored("#literal", is_dir=False)
    assert m.ignored("sub/local.txt", is_dir=False) and m.ignored("sub/deeper/local.txt", is_dir=False)
    assert m.ignored("sub/only-here.txt", is_dir=False) and not m.ignored("sub/deeper/only-here.txt", is_dir=False)
    assert not m.ignored("local.txt", is_dir=False)  # sub's rules stay in sub
    assert m.ignored(".git/config", is_dir=False) and m.ignored("pkg/__pycache__/m.cpython-311.pyc", is_dir=False)
    assert parse_gitignore("\n# only comments\n") == []


def _tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def test_packager_honours_gitignore_and_counts_the_limit_after_it(tmp_path: Path) -> None:
    import tarfile

    code = tmp_path / "code"
    _tree(
        code,
        {
            ".gitignore": b"data/\n*.ckpt\n",
            "train.py": b"print('hi')\n",
            "pkg/model.py": b"x = 1\n",
            "data/huge.bin": b"\0" * (3 * 1024 * 1024),
            "last.ckpt": b"\0" * (2 * 1024 * 1024),
            ".git/objects/ab": b"git",
        },
    )
    listing = scan_code_dir(str(code), limit_bytes=1024 * 1024)  # 1 MB: fine once data and checkpoints are out
    assert listing.files == [".gitignore", "pkg/model.py", "train.py"]
    package = package_code(str(code), str(tmp_path / "code.tar.gz"), limit_bytes=1024 * 1024)
    with tarfile.open(package.path) as tar:
        assert sorted(tar.getnames()) == listing.files
    assert package.files == 3 and package.bytes == listing.bytes


def _unpack_on_instance(archive: Path, dest: Path) -> subprocess.CompletedProcess[str]:
    """What ship_script runs on the instance: the transfer helper's `unpack` (python3, standard library)."""
    cmd = [sys.executable, "-", "unpack", str(archive), str(dest)]
    return subprocess.run(cmd, input=INSTANCE_HELPER, capture_output=True, text=True)


def test_the_code_package_unpacks_on_the_instance_and_an_escaping_archive_writes_nothing(tmp_path: Path) -> None:
    import io
    import tarfile

    code = tmp_path / "code"
    _tree(code, {"train.py": b"print(1)\n", "pkg/m.py": b"x = 1\n", "ünï code/a b.txt": b"u", "-rf": b"d"})
    (tmp_path / "outside.py").write_bytes(b"shared = 1\n")
    (code / "shared.py").symlink_to(tmp_path / "outside.py")  # shipped as its content: members are plain files
    package = package_code(str(code), str(tmp_path / "code.tar.gz"), limit_bytes=1024 * 1024)
    run = _unpack_on_instance(Path(package.path), tmp_path / "job" / "code")
    assert run.returncode == 0, run.stderr
    unpacked = {p.relative_to(tmp_path / "job" / "code").as_posix(): p for p in (tmp_path / "job").rglob("*")}
    assert {rel: p.read_bytes() for rel, p in unpacked.items() if p.is_file() or p.is_symlink()} == {
        "train.py": b"print(1)\n",
        "pkg/m.py": b"x = 1\n",
        "ünï code/a b.txt": b"u",
        "-rf": b"d",
        "shared.py": b"shared = 1\n",
    }
    assert not any(p.is_symlink() for p in unpacked.values())

    # A tarball replaced in S3 by one with an escaping member: refused before any member is extracted.
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        for name in ("ok.py", "../../escape.py"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"bad"))
    run = _unpack_on_instance(evil, tmp_path / "job2" / "code")
    assert run.returncode != 0 and "'../../escape.py'" in run.stderr
    assert not (tmp_path / "escape.py").exists() and not (tmp_path / "job2").exists()


def test_code_file_names_that_cannot_be_paths_are_refused_before_packing(tmp_path: Path) -> None:
    for name in ("back\\slash.py", "new\nline.py", "esc\x1b.py"):
        code = tmp_path / f"code{len(name)}"
        _tree(code, {"train.py": b"x", name: b"y"})
        with pytest.raises(PathEscapeError) as err:
            package_code(str(code), str(tmp_path / "code.tar.gz"), limit_bytes=1024 * 1024)
        assert repr(str(code.resolve()) + "/" + name) in str(err.value)


def test_packager_refuses_missing_dir_and_oversize(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError) as err:
        scan_code_dir(str(tmp_path / "nope"), limit_bytes=10)
    assert err.value.field == "code_dir"
    _tree(tmp_path / "c", {"big.bin": b"\0" * 5000, "small.py": b"x"})
    with pytest.raises(InvalidInputError) as err:
        scan_code_dir(str(tmp_path / "c"), limit_bytes=4096)
    assert err.value.field == "code_dir" and "big.bin" in str(err.value)
