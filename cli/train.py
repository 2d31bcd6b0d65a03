"""`trainctl train launch|status|logs|stop`: training jobs on spot instances.

`launch` is a real flow run (train-launch). `status`, `logs` and `stop` are job control (flows/jobs.py): they read
the job record in S3 and talk to the instance over SSM while it runs (S3 holds what the agent uploaded once it is
gone), with no Prefect API run. Imports of Prefect-backed modules stay inside the commands (a fast `--help`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from cli.output import CliState, as_input_error, aws_scope, emit_json, flow_console, info, state_of, stdout_console
from core import jobs
from core.errors import InvalidInputError, UsageError
from core.s3uri import validate_bucket

app = typer.Typer(help="Training jobs: launch on spot, follow the log, stop with a checkpoint.", no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output (JSON on stdout).")]
JobArg = Annotated[str, typer.Argument(help="Job name.")]
BucketOption = Annotated[str, typer.Option("--bucket", help="The job's bucket (holds trainctl/jobs/<job>/).")]


def _job_spec(fields: dict[str, Any]) -> Any:
    """A JobSpec with pydantic's own errors as one-line usage errors naming the field."""
    from core.jobs import JobSpec

    try:
        return JobSpec(**fields)
    except ValidationError as exc:
        raise as_input_error(exc) from None


def _env_pairs(pairs: list[str], option: str = "--env") -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            # --secret-env without '=' may be the secret itself: not echoed.
            shown = pair if option == "--env" else "<not shown>"
            raise InvalidInputError(option, shown, "KEY=VALUE" if option == "--env" else "NAME=ssm:/path/to/param")
        env[key] = value
    return env


def _warn_secret_like(env: dict[str, str]) -> None:
    """One line on stderr naming (never showing) plain variables that look like secrets."""
    from core.secrets import secret_like

    names = secret_like(env)
    if names:
        info(
            f"warning: --env {', '.join(names)} {'looks like a secret' if len(names) == 1 else 'look like secrets'}: "
            "plain values are stored as given in job.json and agent-spec.json; pass secrets by reference with "
            "--secret-env NAME=ssm:/path (or secretsmanager:<id>[#key])"
        )


@app.command(
    "launch",
    context_settings={"allow_interspersed_args": False},
)
def launch(
    ctx: typer.Context,
    command: Annotated[
        list[str] | None, typer.Argument(help="The trainer's command, after `--` (e.g. -- python train.py).")
    ] = None,
    spec_file: Annotated[Path | None, typer.Option("--spec", help="JobSpec as JSON; options override it.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Job name (a re-launch resumes it).")] = None,
    bucket: Annotated[str | None, typer.Option("--bucket", help="Bucket for the job record, logs, staging.")] = None,
    template: Annotated[str | None, typer.Option("--template", help="Saved InstanceTemplate block name.")] = None,
    instance_type: Annotated[str | None, typer.Option("--instance-type", help="Inline template: type.")] = None,
    image_id: Annotated[str | None, typer.Option("--image-id", help="Inline template: AMI.")] = None,
    az: Annotated[str | None, typer.Option("--az", help="Inline template: availability zone.")] = None,
    subnet: Annotated[str | None, typer.Option("--subnet", help="Inline template: subnet.")] = None,
    instance_profile: Annotated[
        str | None, typer.Option("--instance-profile", help="Inline template: IAM instance profile.")
    ] = None,
    code_dir: Annotated[str | None, typer.Option("--code-dir", help="Local code folder (.gitignore honoured).")] = None,
    on_demand: Annotated[bool, typer.Option("--on-demand", help="On-demand instead of spot.")] = False,
    max_price: Annotated[str | None, typer.Option("--max-price", help="Spot max price, USD/hour.")] = None,
    fallback: Annotated[
        bool, typer.Option("--fallback", help="Launch on-demand when spot has no capacity or price.")
    ] = False,
    volume: Annotated[str | None, typer.Option("--volume", help="Data volume (vol-…) to attach.")] = None,
    mount_point: Annotated[str | None, typer.Option("--mount-point", help="Where the volume appears.")] = None,
    data: Annotated[
        str | None, typer.Option("--data", help="The dataset's s3://bucket/prefix, delivered as --data-strategy says.")
    ] = None,
    data_strategy: Annotated[
        str | None,
        typer.Option(
            "--data-strategy",
            help="auto (default: the advice's choice, see trainctl data advise), direct-s3, local-cache, "
            "prewarmed-ebs (reuses a prewarmed volume of the dataset, else prewarms one) or existing-ebs (--volume).",
        ),
    ] = None,
    data_runs: Annotated[
        int | None,
        typer.Option("--data-runs", help="Runs you plan on this dataset (auto weighs a prewarm against them)."),
    ] = None,
    data_epochs: Annotated[
        int | None, typer.Option("--data-epochs", help="Passes over the dataset per run (used by auto).")
    ] = None,
    move_volume: Annotated[
        bool, typer.Option("--move-volume", help="Move the volume into the template's AZ if needed.")
    ] = False,
    checkpoint_uri: Annotated[str | None, typer.Option("--checkpoint-uri", help="s3://… for checkpoints.")] = None,
    env: Annotated[list[str] | None, typer.Option("--env", help="KEY=VALUE for the trainer (repeatable).")] = None,
    secret_env: Annotated[
        list[str] | None,
        typer.Option(
            "--secret-env",
            help="NAME=ssm:/path/to/param or NAME=secretsmanager:<id or ARN>[#json-key] (repeatable): resolved "
            "on the instance into the trainer's environment only; job.json and logs keep the reference. The "
            "instance profile needs ssm:GetParameter (+ kms:Decrypt) / secretsmanager:GetSecretValue on it.",
        ),
    ] = None,
    max_runtime: Annotated[int | None, typer.Option("--max-runtime-minutes", help="Stop the job after.")] = None,
    sync_interval: Annotated[int | None, typer.Option("--sync-interval", help="Checkpoint upload period (s).")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Stream the log; exit with the job's exit code.")] = False,
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume",
            help="After a spot interruption, spot-watch resumes the job: same-az (default), same-az-then-move, "
            "same-az-then-on-demand, or none.",
        ),
    ] = None,
    max_attempts: Annotated[
        int | None, typer.Option("--max-attempts", help="Attempts in all (resumes included) before giving up.")
    ] = None,
    keep_instance: Annotated[
        bool,
        typer.Option(
            "--keep-instance",
            help="Keep the instance running after the job ends (to inspect it); end it yourself or with teardown. "
            "By default it shuts down (terminates) once its checkpoint, log and status are in S3.",
        ),
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Launch a training job: `trainctl train launch --name llm --bucket b --instance-type g5.xlarge -- python t.py`."""
    state = state_of(ctx, json_output=json_output)
    fields = _spec_file(spec_file)
    inline = _given(
        {
            "instance_type": instance_type,
            "image_id": image_id,
            "availability_zone": az,
            "subnet_id": subnet,
            "instance_profile": instance_profile,
        }
    )
    if template and inline:
        raise UsageError("give --template or inline template options (--instance-type …), not both")
    overrides: dict[str, Any] = {
        "name": name,
        "bucket": bucket,
        "template": template or (inline or None),
        "code_dir": code_dir,
        "max_price": max_price,
        "data_volume_id": volume,
        "mount_point": mount_point,
        "data": data,
        "data_strategy": data_strategy,
        "data_runs": data_runs,
        "data_epochs": data_epochs,
        "checkpoint_uri": checkpoint_uri,
        "max_runtime_minutes": max_runtime,
        "sync_interval_s": sync_interval,
        "command": list(command) if command else None,
        "env": {**fields.get("env", {}), **_env_pairs(env or [])} if env else None,
        "secret_env": (
            {**fields.get("secret_env", {}), **_env_pairs(secret_env, "--secret-env")} if secret_env else None
        ),
    }
    fields.update(_given(overrides))
    if on_demand:
        fields["spot"] = False
    policy = _given(
        {"strategy": resume, "max_attempts": max_attempts, "on_demand_fallback": True if fallback else None}
    )
    if policy:
        fields["resume"] = {**fields.get("resume", {}), **policy}
    if move_volume:
        fields["move_volume_if_needed"] = True
    if keep_instance:
        fields["keep_instance"] = True
    _require_job_fields(fields)
    fields["account"] = state.account
    spec = _job_spec(fields)
    _warn_secret_like(spec.env)
    # The code folder is checked (and measured) here too, so a typo never waits for Prefect to start.
    from flows.jobs import check_code_dir

    check_code_dir(spec.code_dir, limit_bytes=spec.code_limit_bytes)
    _run_launch(ctx, state, spec, wait=wait, json_output=json_output)


def _given(values: dict[str, Any]) -> dict[str, Any]:
    """The options given (None: not given, the spec file's value or the default applies)."""
    return {k: v for k, v in values.items() if v is not None}


def _spec_file(spec_file: Path | None) -> dict[str, Any]:
    if spec_file is None:
        return {}
    try:
        fields: dict[str, Any] = json.loads(spec_file.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInputError("--spec", str(spec_file), f"a readable JobSpec JSON file ({exc})") from None
    return fields


def _require_job_fields(fields: dict[str, Any]) -> None:
    """What no default can fill, named by the option that gives it."""
    for required in ("name", "bucket", "template", "command"):
        if not fields.get(required):
            hint = "--template or --instance-type" if required == "template" else f"--{required}"
            if required == "command":
                hint = "the command after `--`"
            raise UsageError(f"a job needs {required}: give {hint} (or put it in --spec)")


def _run_launch(ctx: typer.Context, state: CliState, spec: Any, *, wait: bool, json_output: bool) -> None:
    """Run the train-launch flow and render its report; a waited-for job's failure exits with its exit code."""
    with aws_scope(ctx) as account:
        spec = spec.model_copy(update={"account": account})
        from core.launch import LaunchOptions
        from flows.train_launch import JobFailedError, train_launch

        if not json_output:
            info(f"launching job {spec.name} (starts a Prefect flow run)")
        try:
            with flow_console(state, quiet=False):
                report = train_launch(spec, LaunchOptions(wait=wait))
        except JobFailedError as err:
            # The job's own exit code is the command's (a CI step fails the way the script did).
            code = err.job_exit_code if err.job_exit_code and 0 < err.job_exit_code < 256 else 1
            line = " ".join(str(err).split())
            if json_output:
                sys.stderr.write(json.dumps({"error": line, "code": "JobFailed", "exit_code": code}) + "\n")
            else:
                sys.stderr.write(f"error: {line}\n")
            raise typer.Exit(code) from None
    if json_output:
        emit_json(report.model_dump(mode="json"))
        return
    out = stdout_console()
    out.print(
        f"job {report.job} attempt {report.attempt}: {report.status} on {report.capacity_type} "
        f"{report.instance_type} {report.instance_id} in {report.availability_zone}",
        highlight=False,
    )
    out.print(f"log: {report.log_uri}\ncheckpoints: {report.checkpoint_uri}", highlight=False)
    if report.status == "running":
        out.print(f"follow it: trainctl train logs {report.job} --bucket {spec.bucket} -f", highlight=False)


# -- status / logs / stop -------------------------------------------------------------------------------------


@app.command("status")
def status(ctx: typer.Context, job: JobArg, bucket: BucketOption, json_output: JsonOption = False) -> None:
    """The job record, the agent's last status in S3, and the instance's state."""
    state_of(ctx, json_output=json_output)
    jobs.validate_job_name(job, field="job")
    bucket = validate_bucket(bucket, field="--bucket")
    with aws_scope(ctx) as account:
        from flows.jobs import job_status

        view = job_status(bucket, job, account=account)
    record, agent, instance_state = view.record, view.agent, view.instance_state
    result = {
        "job": record.model_dump(mode="json", exclude={"spec"}),
        "agent": agent,
        "instance_state": instance_state,
    }
    if json_output:
        emit_json(result)
        return
    out = stdout_console()
    agent_status = (agent or {}).get("status", "no status yet")
    out.print(
        f"{job} attempt {record.attempt}: {record.status.value} (agent: {agent_status}) on "
        f"{record.capacity_type or '?'} {record.instance_type or ''} {record.instance_id or '-'} ({instance_state})",
        highlight=False,
    )
    exit_code = record.exit_code if record.exit_code is not None else (agent or {}).get("exit_code")
    if exit_code is not None:
        out.print(f"exit code: {exit_code}")
    if agent and agent.get("checkpoint_seq") is not None:
        out.print(f"checkpoint {agent['checkpoint_seq']} at {record.checkpoint_uri}", highlight=False)
    if record.message:
        out.print(record.message, highlight=False)
    if agent and agent.get("status") == "failed" and agent.get("reason"):
        out.print(f"agent: {agent['reason']}", highlight=False)  # e.g. a secret reference it could not read
    from rich.table import Table

    from core.history import HISTORY_COLUMNS, history_rows

    table = Table(title=f"attempts of {job}")
    for column in HISTORY_COLUMNS:
        table.add_column(column.replace("_", " ").upper(), overflow="fold")
    for row in history_rows(record):
        table.add_row(*(row[column] for column in HISTORY_COLUMNS))
    out.print(table)


@app.command("logs")
def logs(
    ctx: typer.Context,
    job: JobArg,
    bucket: BucketOption,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")] = False,
    attempt: Annotated[int | None, typer.Option("--attempt", help="Default: the latest.")] = None,
    json_output: JsonOption = False,
) -> None:
    """The job's log: live from the instance over SSM while it runs, else the copy the agent put in S3."""
    state_of(ctx, json_output=json_output)
    jobs.validate_job_name(job, field="job")
    bucket = validate_bucket(bucket, field="--bucket")
    collected: list[str] = []

    def emit(text: str) -> None:
        if json_output:
            collected.append(text)
        else:
            sys.stdout.write(text)
            sys.stdout.flush()

    with aws_scope(ctx) as account:
        from flows.jobs import stream_log

        n, live = stream_log(bucket, job, emit=emit, attempt=attempt, follow=follow, account=account)
    if json_output:
        emit_json({"job": job, "attempt": n, "live": live, "log": "".join(collected)})


@app.command("stop")
def stop(
    ctx: typer.Context,
    job: JobArg,
    bucket: BucketOption,
    grace: Annotated[float, typer.Option("--grace", help="Seconds between SIGTERM and SIGKILL.")] = 30.0,
    keep_instance: Annotated[
        bool, typer.Option("--keep-instance", help="Keep the instance running after the stop (end it yourself).")
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Stop the job through its agent: SIGTERM (the trainer saves), SIGKILL after the grace, checkpoint, log and
    status flushed to S3, the attempt recorded `stopped`; then the instance ends (terminates) unless
    --keep-instance. Works in any state: a launch not yet started ends its instance; an ended job is left as is."""
    state_of(ctx, json_output=json_output)
    jobs.validate_job_name(job, field="job")
    bucket = validate_bucket(bucket, field="--bucket")
    if grace < 0:
        raise InvalidInputError("--grace", grace, "seconds >= 0")
    with aws_scope(ctx) as account:
        from cli.local_server import choose_prefect_api
        from flows.jobs import stop_job

        choose_prefect_api()  # the stop is told as an event (trainctl.job.stopped): to the server the flows use
        report = stop_job(bucket, job, grace_s=grace, keep_instance=keep_instance, account=account)
    if json_output:
        emit_json(report.model_dump(mode="json"))
        return
    if report.outcome == "already-ended":
        stdout_console().print(f"{job}: {report.detail}", highlight=False)
        return
    stdout_console().print(
        f"stopped {job} attempt {report.attempt} (exit code {report.exit_code}; checkpoint seq "
        f"{report.checkpoint_seq}); {report.instance}",
        highlight=False,
    )
