"""Launching a training job: the launch's own options, .gitignore rules for the code package, and the scripts
the flow sends to the instance (built with core.shell: every value quoted).

The command never passes through a shell: it travels as a JSON argument list inside the agent spec (S3 → the
instance) and the agent execs it as is, so `; rm -rf /` or `$(...)` in an argument stays a literal argument.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field

from core import jobs
from core.data import DIRECT_S3_CONNECTIONS
from core.ebs import mount_point as volume_mount_point
from core.jobs import DataStrategy, JobRecord, JobSpec
from core.prewarm import mount_script
from core.shell import argv, on_instance, quote
from core.transfer import instance_script

AGENT_SCRIPT = "agent/trainctl_agent.py"
CODE_TARBALL = "code.tar.gz"
AGENT_TARBALL = "agent.tar.gz"
AGENT_SPEC = "agent-spec.json"
# local-cache: where the agent mounts the instance store holding the dataset (JobSpec.mount_point overrides it).
LOCAL_CACHE_MOUNT = "/mnt/trainctl/instance-store"


class LaunchOptions(BaseModel):
    """How this launch is run, as opposed to what the job is (JobSpec): whether the flow waits for the end."""

    wait: bool = Field(default=False, description="follow the job to its end, streaming its log into the flow's")
    wait_timeout_minutes: int = Field(
        default=24 * 60, ge=1, description="with wait: stop waiting (the job keeps running) after this long"
    )
    terminate_when_done: bool = Field(
        default=True, description="with wait: terminate the instance at the end (unless the spec keeps it)"
    )


def launch_key(job: str, attempt: int) -> str:
    """The idempotency key of one attempt: a retried launch of it finds its instance instead of making another."""
    return f"train:{job}:attempt-{attempt}"


def next_attempt(previous: JobRecord | None) -> int:
    return 1 if previous is None else previous.attempt + 1


def agent_spec(spec: JobSpec, *, attempt: int, instance_id: str) -> dict[str, Any]:
    """The document the agent runs from (its contract). Instance paths are as on AWS; the agent puts them
    under $TRAINCTL_ROOT itself. `command` stays an argument list end to end."""
    env = dict(spec.env)
    if spec.resolved_mount_point:
        env.setdefault("TRAINCTL_DATA_DIR", spec.resolved_mount_point)
    if spec.data and spec.data_strategy == DataStrategy.DIRECT_S3:
        # The trainer reads S3 itself, with the parallelism the advice's estimate assumes.
        env.setdefault("TRAINCTL_DATA_URI", spec.data)
        env.setdefault("TRAINCTL_DATA_PARALLELISM", str(DIRECT_S3_CONNECTIONS))
    doc: dict[str, Any] = {
        "job": spec.name,
        "attempt": attempt,
        "instance_id": instance_id,
        "bucket": spec.bucket,
        "command": list(spec.command),
        "env": env,
        "secret_env": dict(spec.secret_env),  # references: the agent resolves them into the trainer's environment
        "workdir": f"{jobs.instance_job_dir(spec.name)}/{jobs.CODE_DIR}",
        "checkpoint_dir": spec.resolved_checkpoint_dir,
        "checkpoint_uri": spec.resolved_checkpoint_uri,
        "sync_interval_s": spec.sync_interval_s,
        "imds_poll_s": 2,  # SIGTERM within 6 s of a notice needs margin beyond the poll period
        "margin_s": 10,
        "max_runtime_s": spec.max_runtime_minutes * 60 if spec.max_runtime_minutes else None,
        "keep_instance": spec.keep_instance,
    }
    if spec.data and spec.data_strategy == DataStrategy.LOCAL_CACHE:
        # The agent copies the dataset onto the instance store before the trainer starts (agent/data_cache.py).
        doc["data_cache"] = {
            "uri": spec.data,
            "mount": spec.mount_point or LOCAL_CACHE_MOUNT,
            "filesystem": spec.filesystem,
            "workers": DIRECT_S3_CONNECTIONS,
        }
    return doc


# -- scripts sent over SSM --------------------------------------------------------------------------------------


def _job_dir(job: str) -> str:
    return on_instance(jobs.instance_job_dir(job))


def data_mount_script(volume_id: str, device: str, filesystem: str, at: str | None) -> list[str]:
    """core.prewarm's mount (device by volume ID, mkfs only when blank, idempotent), plus a link at the job's
    chosen mount point when it differs from /mnt/trainctl/<vol>."""
    script = mount_script(volume_id, device, filesystem)
    if at and at != volume_mount_point(volume_id):
        script += [
            f"link={on_instance(at)}",
            'mkdir -p "$(dirname "$link")"',
            # An empty folder there (an AMI's, the sandbox's) gives way; one with files is never touched.
            'if [ -d "$link" ] && [ ! -L "$link" ]; then rmdir "$link" 2>/dev/null || true; fi',
            'if [ -e "$link" ] && [ ! -L "$link" ]; then echo "$link exists and is not empty" >&2; exit 21; fi',
            'ln -sfn "$mnt" "$link"',
            'echo "linked $link -> $mnt"',
        ]
    return script


def ship_script(job: str, staging: str) -> list[str]:
    """Download code, agent and agent spec from the staging prefix and unpack them into the job's folder: only
    those three objects, and archives whose members are all plain files or folders with names that stay inside
    (core.paths' rule, the instance helper's `unpack`), checked before anything is extracted."""
    names = " ".join(f"--include {quote(name)}" for name in (CODE_TARBALL, AGENT_TARBALL, AGENT_SPEC))
    return instance_script(
        f"job={_job_dir(job)}",
        f"src={quote(staging)}",
        'mkdir -p "$job"',
        'rm -rf "$job/code" "$job/agent"',
        'mkdir -p "$job/code"',
        # One CLI call for the three objects (each `aws` start costs about a second); other keys stay in S3.
        f'aws s3 cp --only-show-errors --recursive "$src" "$job/" --exclude "*" {names}',
        f'h unpack "$job/{CODE_TARBALL}" "$job/code"',
        f'h unpack "$job/{AGENT_TARBALL}" "$job"',
        f'test -f "$job/{AGENT_SCRIPT}"',
        'echo "shipped $(find "$job/code" -type f | wc -l) files to $job/code"',
    )


def start_agent_script(job: str) -> list[str]:
    """`agent run` detaches itself; the command returns as soon as the job is started."""
    return _agent_spec_command(job, "run")


def prefetch_script(job: str) -> list[str]:
    """`agent prefetch`: the latest checkpoint downloaded before the trainer starts (the restore then skips it)."""
    return _agent_spec_command(job, "prefetch")


def _agent_spec_command(job: str, verb: Literal["run", "prefetch"]) -> list[str]:
    return ["set -eu", f"job={_job_dir(job)}", f'python3 "$job/{AGENT_SCRIPT}" {verb} --spec "$job/{AGENT_SPEC}"']


def _agent_line(job_dir: str, job: str, verb: str, options: tuple[object, ...]) -> str:
    """The agent's command line; `job_dir` and `job` are shell words (a quoted value or a quoted expansion)."""
    return f"python3 {job_dir}/{AGENT_SCRIPT} {verb} --job {job} {argv(options)}".rstrip()


def agent_command_script(job: str, verb: Literal["poll", "stop"], *options: object) -> list[str]:
    """Run the job's agent on the instance: `trainctl_agent.py <verb> --job <job> <options>`, every value quoted.
    Its answer is one JSON line (the agent's `poll` document). When the agent was never shipped (a launch killed
    before its ship step), the line is {"job": <job>, "installed": false} instead of an error."""
    missing = json.dumps({"job": job, "installed": False})
    return [
        "set -eu",
        f"job={_job_dir(job)}",
        f'if [ ! -f "$job/{AGENT_SCRIPT}" ]; then echo {quote(missing)}; exit 0; fi',
        "exec " + _agent_line('"$job"', quote(job), verb, options),
    ]


def every_agent_poll_script() -> list[str]:
    """Each job's agent on the instance asked for its state (no log): a line `agent <job> <poll JSON>` per job
    folder holding an agent (one without never ran a trainer of ours); nothing after the name if the agent failed."""
    poll = _agent_line('"$d"', '"$j"', "poll", ("--limit", 0))
    return [
        f"jobs_dir={on_instance(jobs.INSTANCE_JOBS_DIR)}",
        'for d in "$jobs_dir"/*; do',
        f'  [ -f "$d/{AGENT_SCRIPT}" ] || continue',
        '  j=$(basename "$d")',
        f'  echo "agent $j $({poll} 2>/dev/null || true)"',
        "done",
    ]


# -- .gitignore -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IgnoreRule:
    base: str  # folder of the .gitignore, relative to the code dir ("" = the root)
    regex: re.Pattern[str]
    negate: bool
    dir_only: bool


def _glob_to_regex(pattern: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("/**", i) and i + 3 == len(pattern):
            out.append("/.*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape("["))
                i += 1
            else:
                body = pattern[i + 1 : end].replace("\\", "\\\\")
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
                i = end + 1
        elif pattern[i] == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


def parse_gitignore(text: str, base: str = "") -> list[IgnoreRule]:
    """The rules of one .gitignore (git's syntax: comments, `!` negation, trailing `/`, anchoring, `**`)."""
    rules: list[IgnoreRule] = []
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        if negate or line.startswith("\\"):
            line = line[1:]
        dir_only = line.endswith("/")
        line = line.rstrip("/")
        if not line:
            continue
        anchored = "/" in line
        line = line.lstrip("/")
        body = _glob_to_regex(line)
        regex = re.compile(("^" if anchored else "^(?:.*/)?") + body + "$")
        rules.append(IgnoreRule(base=base.strip("/"), regex=regex, negate=negate, dir_only=dir_only))
    return rules


@dataclass
class IgnoreMatcher:
    """Rules in the order git reads them (root first, deeper .gitignore files later); the last match wins."""

    rules: list[IgnoreRule] = field(default_factory=list)
    always: tuple[str, ...] = (".git", "__pycache__", ".trainctl-cache")

    def add(self, rules: Iterable[IgnoreRule]) -> None:
        self.rules.extend(rules)

    def _match(self, rel: str, is_dir: bool) -> bool:
        ignored = False
        for rule in self.rules:
            if rule.dir_only and not is_dir:
                continue
            if rule.base:
                if not rel.startswith(rule.base + "/"):
                    continue
                sub = rel[len(rule.base) + 1 :]
            else:
                sub = rel
            if rule.regex.match(sub):
                ignored = not rule.negate
        return ignored

    def ignored(self, rel: str, *, is_dir: bool) -> bool:
        """Is `rel` (a path relative to the code dir, with '/') left out? A file in an ignored folder is."""
        parts = rel.strip("/").split("/")
        if any(fnmatch.fnmatchcase(p, pat) for p in parts for pat in self.always):
            return True
        for depth in range(1, len(parts)):
            if self._match("/".join(parts[:depth]), True):
                return True
        return self._match("/".join(parts), is_dir)


def gitignore_matcher(files: Mapping[str, str]) -> IgnoreMatcher:
    """A matcher from {folder relative to the code dir: .gitignore text}, applied root first."""
    matcher = IgnoreMatcher()
    for base in sorted(files, key=lambda b: (b.count("/") if b else -1, b)):
        matcher.add(parse_gitignore(files[base], base))
    return matcher
