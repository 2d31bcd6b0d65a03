"""`trainctl ebs ...`: EBS data volumes and snapshots, and the prewarm flow that fills a volume from S3.

Every command but `prewarm` calls one operation of flows/ebs.py (plain functions: no Prefect API run for one AWS
call); `prewarm` is a real flow run. Imports of Prefect-backed modules stay inside the commands (a fast `--help`).

The operations take an AwsAccount block *name*; the global `--region/--profile/--endpoint-url` options reach them
through the environment they read when no block is named (`cli.output.aws_scope`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError
from rich.table import Table

from cli.output import (
    as_input_error,
    aws_scope,
    emit_json,
    flow_console,
    format_age,
    info,
    not_a_run_failure,
    sigterm_as_error,
    state_of,
    stderr_console,
    stdout_console,
)
from cli.resources import marks, resource_json
from core.ebs import VolumeSpec
from core.errors import ADOPT_MEANS, UsageError
from core.ids import validate_availability_zone, validate_id
from core.models import Snapshot, Volume
from core.names import NameKind, validate_device_name, validate_name

if TYPE_CHECKING:
    from core.prewarm import PrewarmSpec
    from flows.ebs import VolumeDeletePlan

app = typer.Typer(help="EBS data volumes and snapshots: create, attach, move, prewarm from S3.", no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output (JSON on stdout).")]
# Adopting is what lets trainctl act on (or read from) what it did not create; the help says what that means.
ADOPT_HELP = f"A resource trainctl did not create is refused unless adopted: --adopt will {ADOPT_MEANS}."
AdoptOption = Annotated[bool, typer.Option("--adopt", help=ADOPT_HELP)]
VolumeArg = Annotated[str, typer.Argument(help="Volume ID (vol-…).")]


class VolumeTypeChoice(StrEnum):
    """Typer checks the choice itself (exit 2) before pydantic would see an unknown type (= core.ebs.LIMITS)."""

    gp3 = "gp3"
    gp2 = "gp2"
    io1 = "io1"
    io2 = "io2"
    st1 = "st1"
    sc1 = "sc1"
    standard = "standard"


class Filesystem(StrEnum):
    xfs = "xfs"
    ext4 = "ext4"


# -- shared ---------------------------------------------------------------------------------------------------


def _spec(**fields: Any) -> VolumeSpec:
    """A VolumeSpec, with pydantic's own validation errors (e.g. an empty name) as one-line usage errors."""
    try:
        return VolumeSpec(**fields)
    except ValidationError as exc:
        raise as_input_error(exc) from None


def _fancy() -> bool:
    """Emoji and arrows only where stdout can encode them (same rule as `trainctl resources list`)."""
    return stdout_console().encoding.lower().replace("-", "").startswith("utf")


def _print(message: str) -> None:
    stdout_console().print(message, highlight=False)


def _volume_line(volume: Volume) -> str:
    shown = marks(volume, fancy=False)
    where = f" → {volume.attached_instance_id}" if volume.attached_instance_id else ""
    return (
        f"{volume.id} {volume.name or ''} {volume.size_gib} GiB {volume.volume_type} in "
        f"{volume.availability_zone} ({volume.state}{where}){' ' + shown if shown else ''}"
    )


def _now() -> datetime:
    return datetime.now(UTC)


# -- create / list --------------------------------------------------------------------------------------------


@app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Volume name (unique among trainctl volumes).")],
    size: Annotated[int, typer.Option("--size", help="Size in GiB.")],
    volume_type: Annotated[VolumeTypeChoice, typer.Option("--type", help="EBS volume type.")] = VolumeTypeChoice.gp3,
    iops: Annotated[int | None, typer.Option("--iops", help="Provisioned IOPS (gp3, io1, io2).")] = None,
    throughput: Annotated[int | None, typer.Option("--throughput", help="Throughput in MiB/s (gp3).")] = None,
    az: Annotated[str | None, typer.Option("--az", help="Availability zone.")] = None,
    instance: Annotated[str | None, typer.Option("--instance", help="Put it in this instance's AZ.")] = None,
    for_type: Annotated[
        str | None, typer.Option("--for-type", help="Put it in the first AZ offering this instance type.")
    ] = None,
    ephemeral: Annotated[
        bool, typer.Option("--ephemeral", help="Not persistent: may be deleted with its instance.")
    ] = False,
    protected: Annotated[
        bool, typer.Option("--protected", help="Never deleted by cleanup; delete needs force.")
    ] = False,
    job: Annotated[str | None, typer.Option("--job", help="The training job it belongs to.")] = None,
    no_encrypt: Annotated[bool, typer.Option("--no-encrypt", help="Create it unencrypted.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Create an encrypted, persistent data volume and wait until it is available."""
    state_of(ctx, json_output=json_output)
    # Everything is checked before AWS is asked anything: the zone choice, the limits of the type, the IDs.
    if sum(x is not None for x in (az, instance, for_type)) > 1:
        raise UsageError("give at most one of --az, --instance and --for-type")
    if instance is not None:
        validate_id("instance", instance, field="--instance")
    if az is not None:
        validate_availability_zone(az, field="--az")
    if job is not None:
        validate_name(NameKind.JOB, job, field="--job")
    spec = _spec(
        name=name,
        size_gib=size,
        volume_type=volume_type.value,
        iops=iops,
        throughput=throughput,
        encrypted=not no_encrypt,
        persistent=not ephemeral,
        protected=protected,
    )
    with aws_scope(ctx) as account:
        from flows.ebs import create_volume

        volume = create_volume(
            spec, availability_zone=az, instance_id=instance, instance_type=for_type, job=job, account=account
        )
    if json_output:
        emit_json(resource_json(volume, _now()))
        return
    _print(f"created {_volume_line(volume)}")


@app.command("list")
def list_volumes(ctx: typer.Context, json_output: JsonOption = False) -> None:
    """List trainctl volumes: marks, age, AZ, attachment and snapshot count (one inventory)."""
    state = state_of(ctx, json_output=json_output)
    aws = state.aws()
    from flows.inventory import take_inventory

    inventory = take_inventory(aws)
    now = inventory.taken_at
    if json_output:
        volumes = [{**resource_json(v, now), "snapshot_count": len(v.snapshot_ids)} for v in inventory.volumes]
        emit_json({"region": inventory.region, "taken_at": now.isoformat(), "volumes": volumes})
        return
    if not inventory.volumes:
        _print(f"No trainctl volumes in {inventory.region}.")
        return
    fancy = _fancy()
    table = Table(title=f"trainctl volumes in {inventory.region} ({len(inventory.volumes)})")
    table.add_column("ID", no_wrap=True, style="bold")
    for header in ("NAME", "JOB"):
        table.add_column(header, overflow="fold")
    table.add_column("SIZE", justify="right", no_wrap=True)
    for header in ("TYPE", "STATE", "AZ"):
        table.add_column(header, no_wrap=True)
    table.add_column("AGE", justify="right", no_wrap=True)
    table.add_column("MARKS", no_wrap=True)
    table.add_column("ATTACHED", no_wrap=True)
    table.add_column("SNAPSHOTS", justify="right", no_wrap=True)
    arrow = "→" if fancy else "->"
    for v in inventory.volumes:
        table.add_row(
            v.id,
            v.name or "",
            v.job or "",
            f"{v.size_gib} GiB",
            v.volume_type,
            v.state,
            v.availability_zone or "",
            format_age(v.age(now)),
            marks(v, fancy),
            f"{arrow} {v.attached_instance_id}" if v.attached_instance_id else "",
            str(len(v.snapshot_ids)),
        )
    stdout_console().print(table)


# -- attach / detach / delete ---------------------------------------------------------------------------------


@app.command("attach")
def attach(
    ctx: typer.Context,
    volume_id: VolumeArg,
    instance_id: Annotated[str, typer.Argument(help="Instance ID (i-…), in the volume's AZ.")],
    device: Annotated[
        str | None, typer.Option("--device", help="Device name; default: first free /dev/sd[f-p].")
    ] = None,
    adopt: AdoptOption = False,
    json_output: JsonOption = False,
) -> None:
    """Attach a volume to an instance in its AZ and wait until attached (another AZ is refused: see `move`)."""
    state_of(ctx, json_output=json_output)
    validate_id("volume", volume_id)
    validate_id("instance", instance_id)
    if device is not None:
        validate_device_name(device, field="--device")
    with aws_scope(ctx) as account:
        from flows.ebs import attach_volume

        volume = attach_volume(volume_id, instance_id, device=device, adopt=adopt, account=account)
    if json_output:
        emit_json(resource_json(volume, _now()))
        return
    attachment = next(a for a in volume.attachments if a.instance_id == instance_id)
    _print(f"attached {volume.id} to {instance_id} at {attachment.device}")


@app.command("detach")
def detach(
    ctx: typer.Context,
    volume_id: VolumeArg,
    force: Annotated[
        bool, typer.Option("--force", help="Force the detach (AWS Force: may lose unflushed writes).")
    ] = False,
    adopt: AdoptOption = False,
    json_output: JsonOption = False,
) -> None:
    """Detach a volume and wait until it is available (already detached: nothing to do)."""
    state_of(ctx, json_output=json_output)
    validate_id("volume", volume_id)
    with aws_scope(ctx) as account:
        from flows.ebs import detach_volume

        volume = detach_volume(volume_id, force=force, adopt=adopt, account=account)
    if json_output:
        emit_json(resource_json(volume, _now()))
        return
    _print(f"detached: {_volume_line(volume)}")


def _render_verdict(plan: VolumeDeletePlan) -> None:
    """What `delete` is about to do, for a human to confirm: the volume, every blocker, every snapshot."""
    volume, verdict, snapshots, now = plan.volume, plan.verdict, plan.snapshots, plan.now
    console = stdout_console()
    console.print(f"delete {_volume_line(volume)}, age {format_age(volume.age(now))}", highlight=False)
    for blocker in verdict.blockers:
        lift = f" (override: --{blocker.override.replace('_', '-')})" if blocker.override else ""
        console.print(f"  [red]blocked[/red]: {blocker.detail}{lift}", highlight=False)
    for note in verdict.notes:
        console.print(f"  note: {note.replace('delete_snapshots', '--delete-snapshots')}", highlight=False)
    for snapshot in snapshots:
        console.print(
            f"  snapshot {snapshot.id} {snapshot.size_gib} GiB {snapshot.state}, age {format_age(snapshot.age(now))}",
            highlight=False,
        )


@app.command("delete")
def delete(
    ctx: typer.Context,
    volume_id: VolumeArg,
    force: Annotated[
        bool, typer.Option("--force", help="Delete even if persistent, protected or young (never if attached).")
    ] = False,
    delete_snapshots: Annotated[
        bool, typer.Option("--delete-snapshots", help="Delete the volume's snapshots too (default: keep them).")
    ] = False,
    adopt: AdoptOption = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (required with --json).")
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Delete a volume under the safety rules: shows what will happen, then asks (unless --yes)."""
    state_of(ctx, json_output=json_output)
    validate_id("volume", volume_id)
    if json_output and not yes:
        # A prompt would corrupt the one JSON document on stdout, and a script cannot answer it anyway.
        raise UsageError("delete --json never prompts", fix="Add --yes to confirm the deletion up front")
    with aws_scope(ctx) as account:
        from flows.ebs import default_min_age, delete_volume, plan_volume_delete

        min_age = default_min_age()
        if not json_output:
            plan = plan_volume_delete(
                volume_id, force=force, delete_snapshots=delete_snapshots, adopt=adopt, min_age=min_age, account=account
            )
            if plan is None:
                _print(f"{volume_id} does not exist (already deleted): nothing to do")
                return
            _render_verdict(plan)
            plan.verdict.raise_if_refused()
            if not yes:
                typer.confirm(f"Delete {volume_id}{' and its snapshots' if delete_snapshots else ''}?", abort=True)
        # Every rule is checked again: the state may have changed while the user read the plan.
        result = delete_volume(
            volume_id,
            force=force,
            delete_snapshots=delete_snapshots,
            adopt=adopt,
            min_age=min_age,
            account=account,
        )
    if json_output:
        emit_json(result.model_dump(mode="json"))
        return
    if result.already_gone:
        _print(f"{volume_id} was already deleted")
        return
    _print(f"deleted {volume_id}")
    if result.snapshots_deleted:
        _print(f"deleted snapshots: {', '.join(result.snapshots_deleted)}")
    if result.snapshots_kept:
        _print(f"kept snapshots: {', '.join(result.snapshots_kept)}")


# -- snapshots, restore, move ---------------------------------------------------------------------------------


def _snapshot_line(snapshot: Snapshot) -> str:
    return f"{snapshot.id} of {snapshot.volume_id} ({snapshot.size_gib} GiB, {snapshot.state})"


@app.command("snapshot")
def snapshot(
    ctx: typer.Context,
    volume_id: VolumeArg,
    description: Annotated[str, typer.Option("--description", help="Snapshot description.")] = "",
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Return once started, not when completed.")] = False,
    adopt: AdoptOption = False,
    json_output: JsonOption = False,
) -> None:
    """Snapshot a volume and wait until the snapshot is completed (unless --no-wait)."""
    state_of(ctx, json_output=json_output)
    validate_id("volume", volume_id)
    with aws_scope(ctx) as account:
        from flows.ebs import snapshot_volume

        made = snapshot_volume(volume_id, description=description, wait=not no_wait, adopt=adopt, account=account)
    if json_output:
        emit_json(resource_json(made, _now()))
        return
    _print(f"snapshot {_snapshot_line(made)}")


@app.command("snapshots")
def snapshots(
    ctx: typer.Context,
    volume_id: Annotated[str | None, typer.Option("--volume", help="Only this volume's snapshots.")] = None,
    json_output: JsonOption = False,
) -> None:
    """List trainctl snapshots, oldest first."""
    state = state_of(ctx, json_output=json_output)
    if volume_id is not None:
        validate_id("volume", volume_id, field="--volume")
    with aws_scope(ctx) as account:
        from flows.ebs import list_snapshots

        found = list_snapshots(volume_id, account=account)
    now = _now()
    if json_output:
        emit_json(
            {
                "region": state.aws().resolved_region(),
                "snapshots": [resource_json(s, now) for s in found],
                "filters": {"volume": volume_id} if volume_id else {},
            }
        )
        return
    if not found:
        _print("No trainctl snapshots" + (f" of {volume_id}." if volume_id else "."))
        return
    fancy = _fancy()
    table = Table(title=f"trainctl snapshots ({len(found)})")
    table.add_column("ID", no_wrap=True, style="bold")
    table.add_column("NAME", overflow="fold")
    table.add_column("VOLUME", no_wrap=True)
    table.add_column("SIZE", justify="right", no_wrap=True)
    table.add_column("STATE", no_wrap=True)
    table.add_column("PROGRESS", justify="right", no_wrap=True)
    table.add_column("AGE", justify="right", no_wrap=True)
    table.add_column("MARKS", no_wrap=True)
    for s in found:
        table.add_row(
            s.id,
            s.name or "",
            s.volume_id or "",
            f"{s.size_gib} GiB",
            s.state,
            s.progress or "",
            format_age(s.age(now)),
            marks(s, fancy),
        )
    stdout_console().print(table)


@app.command("restore")
def restore(
    ctx: typer.Context,
    snapshot_id: Annotated[str, typer.Argument(help="Snapshot ID (snap-…).")],
    az: Annotated[str, typer.Option("--az", help="Availability zone of the new volume.")],
    name: Annotated[str, typer.Option("--name", help="Name of the new volume.")],
    volume_type: Annotated[VolumeTypeChoice, typer.Option("--type", help="EBS volume type.")] = VolumeTypeChoice.gp3,
    size: Annotated[int | None, typer.Option("--size", help="Size in GiB (default: the snapshot's).")] = None,
    adopt: AdoptOption = False,
    json_output: JsonOption = False,
) -> None:
    """Create a new volume from a snapshot, in any AZ (a snapshot trainctl does not own needs --adopt)."""
    state_of(ctx, json_output=json_output)
    validate_id("snapshot", snapshot_id)
    validate_availability_zone(az, field="--az")
    validate_name(NameKind.RESOURCE, name, field="--name")
    if size is not None:
        _spec(name=name, size_gib=size, volume_type=volume_type.value)  # the type's limits, before any call
    with aws_scope(ctx) as account:
        from flows.ebs import restore_snapshot

        volume = restore_snapshot(
            snapshot_id, az, name=name, volume_type=volume_type.value, size_gib=size, adopt=adopt, account=account
        )
    if json_output:
        emit_json(resource_json(volume, _now()))
        return
    _print(f"restored {snapshot_id} as {_volume_line(volume)}")


@app.command("move")
def move(
    ctx: typer.Context,
    volume_id: VolumeArg,
    az: Annotated[str, typer.Argument(help="The availability zone to move it to.")],
    adopt: AdoptOption = False,
    json_output: JsonOption = False,
) -> None:
    """Move a detached volume to another AZ (snapshot + restore); the original is renamed <name>@<old-az> and kept."""
    state_of(ctx, json_output=json_output)
    validate_id("volume", volume_id)
    validate_availability_zone(az, field="az")
    with aws_scope(ctx) as account:
        from flows.ebs import move_volume

        moved = move_volume(volume_id, az, adopt=adopt, account=account)
    unchanged = moved.id == volume_id
    if json_output:
        emit_json(
            {
                "volume": resource_json(moved, _now()),
                "original_volume_id": volume_id,
                "snapshot_id": None if unchanged else moved.source_snapshot_id,
                "moved": not unchanged,
            }
        )
        return
    if unchanged:
        _print(f"{volume_id} is already in {az}: nothing to do")
        return
    _print(f"moved to {_volume_line(moved)}")
    _print(
        f"kept: the original {volume_id} (renamed with @<old-az>) and snapshot {moved.source_snapshot_id}; "
        f"delete the original once {moved.id} is verified: trainctl ebs delete {volume_id}"
    )


# -- prewarm --------------------------------------------------------------------------------------------------


class _FlowLines(logging.Handler):
    """Shows the flow's other info lines above the progress bar; its step lines (marked `STEP_RECORD`) are the
    bar's own, fed by progress events."""

    def __init__(self, progress: Any) -> None:
        super().__init__(level=logging.INFO)
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        from core.progress import STEP_RECORD

        if hasattr(record, STEP_RECORD) or record.levelno != logging.INFO:
            return
        if record.name.startswith("prefect.flow_runs") and not_a_run_failure(record):
            try:
                message = record.getMessage()
            except Exception:  # a malformed log call must never break the command
                return
            self.progress.console.print(f"  {message}", style="dim", highlight=False)


@contextmanager
def _step_progress(enabled: bool) -> Iterator[None]:
    """Rich progress over the prewarm steps on stderr (under `flow_console(quiet=True)`), fed by the flow's
    progress events."""
    if not enabled:
        yield
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from core.progress import Finished, ProgressEvent, StepStarted, subscribed
    from flows.prewarm import STEPS

    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]prewarm[/bold] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr_console(),
        transient=False,
    )
    task_id = progress.add_task("starting Prefect…", total=len(STEPS))

    def show(event: ProgressEvent) -> None:
        if isinstance(event, StepStarted):
            progress.update(task_id, description=event.step, completed=event.done)
        elif isinstance(event, Finished):
            progress.update(task_id, description="done", completed=len(STEPS))

    handler = _FlowLines(progress)
    flow_logger = logging.getLogger("prefect.flow_runs")
    flow_logger.addHandler(handler)
    try:
        with progress, subscribed(show):
            yield
            progress.update(task_id, completed=len(STEPS), description="done")
    finally:
        flow_logger.removeHandler(handler)


def _prewarm_spec(**fields: Any) -> PrewarmSpec:
    from core.prewarm import PrewarmSpec

    try:
        return PrewarmSpec(**fields)
    except ValidationError as exc:
        raise as_input_error(exc) from None


def _new_volume(
    name: str | None, size: int | None, volume_type: VolumeTypeChoice, *, iops: int | None, throughput: int | None
) -> VolumeSpec | None:
    """The spec of `--new NAME --size GIB` (None for an existing volume, which takes no size or performance)."""
    if name is None:
        if size is not None or iops is not None or throughput is not None:
            raise UsageError("--size, --iops and --throughput apply to --new volumes only")
        return None
    if size is None:
        raise UsageError("--new needs --size GIB")
    return _spec(name=name, size_gib=size, volume_type=volume_type.value, iops=iops, throughput=throughput)


@app.command("prewarm")
def prewarm(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="s3://bucket/prefix to copy onto the volume.")],
    volume_id: Annotated[str | None, typer.Option("--volume", help="An existing volume (vol-…).")] = None,
    new_name: Annotated[str | None, typer.Option("--new", help="Create a new volume with this name.")] = None,
    size: Annotated[int | None, typer.Option("--size", help="Size in GiB of the new volume.")] = None,
    volume_type: Annotated[
        VolumeTypeChoice, typer.Option("--type", help="Type of the new volume.")
    ] = VolumeTypeChoice.gp3,
    iops: Annotated[int | None, typer.Option("--iops", help="Provisioned IOPS of the new volume.")] = None,
    throughput: Annotated[
        int | None, typer.Option("--throughput", help="Throughput (MiB/s) of the new volume.")
    ] = None,
    az: Annotated[str | None, typer.Option("--az", help="AZ of the new volume.")] = None,
    instance: Annotated[str | None, typer.Option("--instance", help="Use this running instance (same AZ).")] = None,
    instance_type: Annotated[str, typer.Option("--instance-type", help="Type of the temporary instance.")] = "m5.large",
    instance_profile: Annotated[
        str | None, typer.Option("--instance-profile", help="IAM instance profile (SSM + S3 read).")
    ] = None,
    target_dir: Annotated[str, typer.Option("--target-dir", help="Folder inside the volume.")] = "",
    filesystem: Annotated[Filesystem, typer.Option("--filesystem", help="Filesystem if blank.")] = Filesystem.xfs,
    take_snapshot: Annotated[bool, typer.Option("--snapshot", help="Snapshot the volume afterwards.")] = False,
    reuse: Annotated[
        bool,
        typer.Option(
            "--reuse/--no-reuse",
            help="With --new: reuse a volume already holding this dataset (in the AZ, or copied from its snapshot).",
        ),
    ] = True,
    job: Annotated[str | None, typer.Option("--job", help="The training job it belongs to.")] = None,
    adopt: AdoptOption = False,
    json_output: JsonOption = False,
) -> None:
    """Copy s3://bucket/prefix onto a new or existing volume (verified), via a temporary instance in its AZ."""
    state = state_of(ctx, json_output=json_output)
    # The whole spec is built and checked before Prefect starts or AWS is asked anything.
    if (volume_id is None) == (new_name is None):
        raise UsageError("give exactly one of --volume VOL_ID (existing) and --new NAME --size GIB (new volume)")
    volume = _new_volume(new_name, size, volume_type, iops=iops, throughput=throughput)
    spec = _prewarm_spec(
        source=source,
        volume=volume,
        volume_id=volume_id,
        availability_zone=az,
        instance_id=instance,
        instance_type=instance_type,
        instance_profile=instance_profile,
        target_dir=target_dir,
        filesystem=filesystem.value,
        snapshot=take_snapshot,
        reuse=reuse,
        job=job,
        adopt=adopt,
        account=state.account,
    )
    with aws_scope(ctx) as account:
        spec = spec.model_copy(update={"account": account})
        from flows.ebs import check_prewarm_targets

        check_prewarm_targets(spec)
        from flows.prewarm import prewarm as prewarm_flow

        if not json_output:
            info(f"prewarm {source} → {volume_id or new_name} (starts a Prefect flow run)")
        with sigterm_as_error(), flow_console(state, quiet=not json_output), _step_progress(enabled=not json_output):
            report = prewarm_flow(spec)
    if json_output:
        emit_json(report.model_dump(mode="json"))
        return
    _print(
        f"prewarmed {report.volume_id} in {report.availability_zone}: {report.files} files, {report.bytes} bytes "
        f"from {report.source} in {report.seconds:.0f} s (verified)"
    )
    _print(f"{report.path}: {report.why}")
    if report.temporary_instance_terminated:
        _print(f"temporary instance {report.instance_id} terminated")
    if report.snapshot_id:
        _print(f"snapshot {report.snapshot_id}")
