"""`trainctl transfer SRC DST`: copy a folder between local disk, S3 and instances (a Prefect flow run).

Locations: a local path, s3://bucket/prefix, i-0123…:/path or job:NAME:/path. A rich progress bar (files,
bytes, rate, ETA) goes to stderr; the result to stdout (one JSON document with --json).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli.output import aws_scope, emit_json, flow_console, info, state_of, stderr_console, stdout_console
from core.errors import InvalidInputError
from core.transfer import TransferReport, TransferRequest, human_bytes
from core.transfer_checks import summary as checks_summary

if TYPE_CHECKING:
    from core.progress import ProgressEvent


class Engine(StrEnum):
    auto = "auto"
    s5cmd = "s5cmd"
    python = "python"


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[None]:
    """A rich bar fed by the flow's progress events (under `flow_console(quiet=True)`): subscribed for the flow run
    this command starts."""
    if not enabled:
        yield
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from core.progress import BytesMoved, Finished, subscribed

    progress = Progress(
        TextColumn("[bold]{task.description}[/bold]"),
        BarColumn(),
        TextColumn("{task.fields[files]} files"),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=stderr_console(),
    )
    task_id = progress.add_task("starting Prefect…", total=None, files="0/?")

    def show(event: ProgressEvent) -> None:
        if isinstance(event, BytesMoved):
            progress.update(
                task_id,
                description=event.phase,
                total=event.bytes_total or None,
                completed=event.bytes_done,
                files=f"{event.files_done}/{event.files_total}",
            )
        elif isinstance(event, Finished):
            progress.update(task_id, description="done")

    with progress, subscribed(show):
        yield


def transfer_command(
    ctx: typer.Context,
    src: Annotated[str, typer.Argument(help="Source: local path, s3://bucket/prefix, i-…:/path or job:NAME:/path.")],
    dst: Annotated[str, typer.Argument(help="Destination folder, same forms (a different kind than SRC).")],
    include: Annotated[
        list[str] | None, typer.Option("--include", help="Only files matching this glob (repeatable).")
    ] = None,
    exclude: Annotated[list[str] | None, typer.Option("--exclude", help="Skip files matching this glob.")] = None,
    delete: Annotated[
        bool, typer.Option("--delete", help="Delete files at DST that SRC does not have (true sync).")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would move; move nothing.")] = False,
    compress: Annotated[
        bool, typer.Option("--compress", help="Instance legs: one tar.gz over the wire (many small files).")
    ] = False,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip the checksum check after the copy.")] = False,
    staging: Annotated[
        str | None,
        typer.Option("--staging", help="S3 prefix for instance legs (a bare s3://bucket uses the job's layout)."),
    ] = None,
    engine: Annotated[
        Engine,
        typer.Option("--engine", help="s5cmd when installed (auto), or in Python (s3fs; boto3 for big files)."),
    ] = Engine.auto,
    concurrency: Annotated[int, typer.Option("--concurrency", help="Files in flight at once (s5cmd workers).")] = 256,
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output (JSON on stdout).")] = False,
) -> None:
    """Copy SRC's tree under DST: only what is missing or changed moves, checksums verified afterwards."""
    state = state_of(ctx, json_output=json_output)
    # The whole request is checked (locations, staging URI) before Prefect starts or AWS is asked anything.
    request = TransferRequest(
        src=src,
        dst=dst,
        include=include or [],
        exclude=exclude or [],
        delete=delete,
        dry_run=dry_run,
        compress=compress,
        verify=not no_verify,
        staging=staging,
        engine=engine.value,
        concurrency=concurrency,
        account=state.account,
    )
    # Refused here, before Prefect's server start (~10 s) only to fail the flow with the same message.
    source, destination = request.source(), request.destination()
    if source.kind == "local" and not Path(source.path).expanduser().exists():
        raise InvalidInputError("source", src, "an existing local file or folder")
    if {source.kind, destination.kind} == {"local", "instance"} and not request.staging:
        request.staging_prefix(None, None)  # raises: local ↔ instance has no S3 end to stage in
    with aws_scope(ctx) as account:
        request = request.model_copy(update={"account": account})
        from flows.transfer import transfer

        if not json_output:
            info(f"transfer {src} → {dst} (starts a Prefect flow run)")
        with flow_console(state, quiet=not json_output), _progress_bar(enabled=not json_output):
            report = transfer(request)
    if json_output:
        emit_json(report.model_dump(mode="json"))
        return
    _print_report(report)


def _print_report(report: TransferReport) -> None:
    """What moved (or, on a dry run, what would), one line per file only on a dry run."""
    console = stdout_console()
    if report.dry_run:
        for rel in report.would_copy:
            console.print(f"would copy   {rel}", highlight=False, markup=False)
        for rel in report.would_delete:
            console.print(f"would delete {rel}", highlight=False, markup=False)
        console.print(
            f"dry run: {len(report.would_copy)} to copy, {report.files_skipped} already there, "
            f"{len(report.would_delete)} to delete",
            highlight=False,
        )
        return
    checked = "verified" if report.verified else "not verified (--no-verify)"
    if report.verified and report.checks:
        checked += f" ({checks_summary(report.checks)})"
    console.print(
        f"{report.direction}: copied {report.files_copied} files ({human_bytes(report.bytes_copied)}) in "
        f"{report.seconds:.1f} s ({report.mb_per_s:.1f} MB/s), skipped {report.files_skipped} unchanged, "
        f"deleted {report.files_deleted}; {checked}",
        highlight=False,
    )
