"""`trainctl resources ...`: what trainctl owns in a region, as a table or as JSON.

Built on `flows.inventory.take_inventory` (no Prefect API run: an answer in about a second).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.table import Table

from cli.output import emit_json, format_age, state_of, stdout_console
from core import tags as t
from core.errors import InvalidInputError, UsageError
from core.ids import kind_of
from core.jobs import validate_job_name
from core.models import Instance, Inventory, ManagedResource, Snapshot, Volume

app = typer.Typer(help="What trainctl owns: instances, volumes and snapshots it created.", no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output (JSON on stdout).")]


class Kind(StrEnum):
    instance = "instance"
    volume = "volume"
    snapshot = "snapshot"


def _take_inventory(ctx: typer.Context) -> Inventory:
    aws = state_of(ctx).aws()  # first: a bad --region is reported even if the rest cannot load
    from flows.inventory import take_inventory  # imports Prefect (~2 s): only when a command needs AWS

    return take_inventory(aws)


def _filtered(inventory: Inventory, *, job: str | None, kind: Kind | None) -> Inventory:
    def keep(resources: list[Any], of_kind: Kind) -> list[Any]:
        if kind is not None and kind != of_kind:
            return []
        return [r for r in resources if job is None or r.job == job]

    return inventory.model_copy(
        update={
            "instances": keep(inventory.instances, Kind.instance),
            "volumes": keep(inventory.volumes, Kind.volume),
            "snapshots": keep(inventory.snapshots, Kind.snapshot),
        }
    )


def _legacy(resource: ManagedResource) -> bool:
    """Owned only through the legacy `CreatedBy=runctl` tag (made by runctl, trainctl's predecessor)."""
    return resource.managed and not t.is_managed({t.MANAGED: resource.tags.get(t.MANAGED, "")})


def resource_json(resource: ManagedResource, now: datetime) -> dict[str, Any]:
    """The model as JSON plus what a script would otherwise recompute from the tags (same rules as core.tags)."""
    data: dict[str, Any] = resource.model_dump(mode="json")
    data.update(
        name=resource.name,
        job=resource.job,
        role=resource.role,
        age_seconds=int(resource.age(now).total_seconds()),
        managed=resource.managed,
        persistent=resource.persistent,
        protected=resource.protected,
        legacy=_legacy(resource),
    )
    if isinstance(resource, Volume):
        data["attached_instance_id"] = resource.attached_instance_id
    return data


def inventory_json(inventory: Inventory, **filters: str | None) -> dict[str, Any]:
    """`Inventory.model_dump(mode="json")` with each resource enriched by `resource_json`."""
    data: dict[str, Any] = inventory.model_dump(mode="json")
    now = inventory.taken_at
    for key in ("instances", "volumes", "snapshots"):
        data[key] = [resource_json(r, now) for r in getattr(inventory, key)]
    data["filters"] = {key: value for key, value in filters.items() if value is not None}
    return data


def marks(resource: ManagedResource, fancy: bool) -> str:
    marks = []
    if resource.persistent:
        marks.append("🔒" if fancy else "persistent")
    if resource.protected:
        marks.append("🛡" if fancy else "protected")
    if _legacy(resource):
        marks.append("runctl")
    return " ".join(marks)


def _links(resource: ManagedResource, fancy: bool) -> str:
    to, since = ("→", "←") if fancy else ("->", "<-")
    if isinstance(resource, Instance):
        return f"vols: {' '.join(resource.volume_ids)}" if resource.volume_ids else ""
    if isinstance(resource, Volume):
        parts = [f"{to} {resource.attached_instance_id}"] if resource.attached_instance_id else []
        if resource.snapshot_ids:
            count = len(resource.snapshot_ids)
            parts.append(f"{count} snapshot{'s' if count > 1 else ''}")
        return ", ".join(parts)
    if isinstance(resource, Snapshot) and resource.volume_id:
        return f"{since} {resource.volume_id}"
    return ""


def render_table(inventory: Inventory) -> None:
    console = stdout_console()
    # Emoji marks only where the output can encode them; plain words otherwise (e.g. LANG=C, a latin-1 pipe).
    fancy = console.encoding.lower().replace("-", "").startswith("utf")
    resources = inventory.resources()
    table = Table(
        title=f"trainctl resources in {inventory.region} ({len(resources)})",
        caption="🔒 persistent: survives its instance · 🛡 protected: never deleted by cleanup" if fancy else None,
    )
    # IDs are what users copy into the next command: never folded or truncated.
    table.add_column("ID", no_wrap=True, style="bold")
    for header in ("KIND", "NAME", "JOB", "ROLE", "STATE", "AZ"):
        table.add_column(header, overflow="fold")
    table.add_column("AGE", justify="right", no_wrap=True)
    table.add_column("MARKS", no_wrap=True)
    table.add_column("LINKS")
    for r in resources:
        table.add_row(
            r.id,
            r.kind.value,
            r.name or "",
            r.job or "",
            r.role or "",
            r.state,
            r.availability_zone or "",
            format_age(r.age(inventory.taken_at)),
            marks(r, fancy),
            _links(r, fancy),
        )
    console.print(table)


@app.command("list")
def list_resources(
    ctx: typer.Context,
    job: Annotated[str | None, typer.Option("--job", help="Only this job's resources.")] = None,
    kind: Annotated[Kind | None, typer.Option("--kind", help="Only this kind of resource.")] = None,
    json_output: JsonOption = False,
) -> None:
    """List every instance, volume and snapshot trainctl manages in the region (untagged ones never show)."""
    state_of(ctx, json_output=json_output)
    if job is not None:
        validate_job_name(job, field="--job")
    inventory = _filtered(_take_inventory(ctx), job=job, kind=kind)
    if json_output:
        emit_json(inventory_json(inventory, job=job, kind=kind.value if kind else None))
        return
    if not inventory.resources():
        matching = ", ".join(f"{k}={v}" for k, v in (("job", job), ("kind", kind and kind.value)) if v)
        suffix = f" matching {matching}" if matching else ""
        stdout_console().print(f"No trainctl-managed resources in {inventory.region}{suffix}.", highlight=False)
        return
    render_table(inventory)


@app.command("show")
def show_resource(
    ctx: typer.Context,
    resource_id: Annotated[str, typer.Argument(help="An instance, volume or snapshot ID (i-…, vol-…, snap-…).")],
    json_output: JsonOption = False,
) -> None:
    """Show one managed resource with its tags and relations."""
    state_of(ctx, json_output=json_output)
    # Checked before any call, so a typo never reaches AWS.
    if kind_of(resource_id.strip()) not in {"instance", "volume", "snapshot"}:
        raise InvalidInputError(
            "resource_id",
            resource_id,
            "an instance, volume or snapshot ID such as i-0123456789abcdef0 or vol-0123456789abcdef0",
            fix="Copy the ID from `trainctl resources list`.",
        )
    inventory = _take_inventory(ctx)
    resource = inventory.get(resource_id.strip())
    if resource is None:
        raise UsageError(
            f"{resource_id} is not a trainctl-managed resource in {inventory.region}",
            fix="Check the region (--region) and `trainctl resources list`; unmanaged resources are never shown.",
        )
    if json_output:
        emit_json(resource_json(resource, inventory.taken_at))
        return
    table = Table(title=f"{resource.kind.value} {resource.id} in {inventory.region}", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for key, value in resource_json(resource, inventory.taken_at).items():
        if key == "tags":
            value = ", ".join(f"{k}={v}" for k, v in sorted(resource.tags.items()))
        table.add_row(key, "" if value is None else str(value))
    stdout_console().print(table)
