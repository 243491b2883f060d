"""`dr recovery-points` and `dr replica export`: read the master target's catalog of recovery points.

The catalog (sqlite) lives in the master target's state directory; `--catalog` or $DR_CATALOG
names it. The agent package (dr_agent) is imported inside the commands: it is the 'agent' extra.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from dr.errors import MissingExtra, SpecUnreadable, UsageError
from dr.output import echo_json, format_option, use_colour

CATALOG_HELP = "the master target's catalog.sqlite (default: $DR_CATALOG)"


def _catalog(path: Path | None) -> Any:
    try:
        from dr_agent.catalog import Catalog
    except ImportError:
        raise MissingExtra("recovery points need the 'agent' extra: pip install 'dr-as-code[agent]' ./agent") from None
    if path is None:
        raise UsageError("no catalog given: expected --catalog PATH or $DR_CATALOG naming the master target's "
                         "catalog.sqlite")
    if not path.is_file():
        raise SpecUnreadable(f"{path}: no such catalog; expected the master target's STATE_DIR/catalog.sqlite")
    return Catalog(path)


@click.command("recovery-points")
@click.argument("name", metavar="DISK|GROUP")
@click.option("--catalog", "catalog_path", type=click.Path(path_type=Path), envvar="DR_CATALOG", help=CATALOG_HELP)
@format_option()
def recovery_points(name: str, catalog_path: Path | None, fmt: str) -> None:
    """List the recovery points of a replicated disk, or of a multi-VM group.

    \b
    Example:
      dr recovery-points web01-disk0 --catalog /var/lib/dr-agent/mt/catalog.sqlite
      dr recovery-points pg-web --format json     # every member's points of group pg-web
    """
    from dr_agent.errors import AgentError

    cat = _catalog(catalog_path)
    try:
        points = cat.points(name)
        if not points:
            try:
                cat.disk(name)
            except AgentError:
                known = ", ".join(cat.disk_names()) or "none"
                raise UsageError(f"no disk or multi-VM group named {name!r} has recovery points "
                                 f"(disks: {known}); check the name") from None
    finally:
        cat.close()
    rows = [p.as_dict() for p in points]
    if fmt == "json":
        echo_json(rows)
        return
    if fmt == "markdown":
        click.echo("| time (UTC) | disk | kind | id | group |\n|---|---|---|---|---|")
        for r in rows:
            click.echo(f"| {r['time']} | {r['disk']} | {r['kind']} | {r['id']} | {r['group'] or ''} |")
        return
    for r in rows:
        kind = click.style(r["kind"], fg="green") if use_colour() and r["kind"] == "app" else r["kind"]
        click.echo(f"{r['time']}  {r['disk']}  {kind:5}  {r['id']}" + (f"  group={r['group']}" if r["group"] else ""))
    click.echo(f"{len(rows)} recovery point(s)")


@click.group("replica")
def replica() -> None:
    """Replica disks at recovery points."""


@replica.command("export")
@click.argument("disk")
@click.option("--point", default="latest", show_default=True,
              help="latest, latest-app, a point id, or an ISO time (the latest point at or before it)")
@click.option("--to", "dest", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="FILE.img (raw) or FILE.vhd (fixed VHD, uploadable as a managed disk)")
@click.option("--catalog", "catalog_path", type=click.Path(path_type=Path), envvar="DR_CATALOG", help=CATALOG_HELP)
@click.option("--connection-string-env", default="AZURE_STORAGE_CONNECTION_STRING", show_default=True,
              help="environment variable holding the storage account's connection string (page blob replicas)")
def export_cmd(disk: str, point: str, dest: Path, catalog_path: Path | None, connection_string_env: str) -> None:
    """Write DISK as it was at a recovery point to FILE.img or FILE.vhd.

    \b
    Example:
      dr replica export web01-disk0 --point latest-app --to web01.vhd
      dr replica export web01-disk0 --point 2026-01-31T12:00:00Z --to web01.img
    """
    from dr_agent.errors import AgentError
    from dr_agent.export import export
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    if dest.suffix.lower() not in (".img", ".vhd"):
        raise UsageError(f"--to {dest}: expected a name ending in .img (raw) or .vhd (fixed VHD)")
    cat = _catalog(catalog_path)
    try:
        with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                      TransferSpeedColumn(), disable=not use_colour()) as bar:
            task = bar.add_task(f"export {disk}", total=None)
            export(cat, disk, point, dest, connection_string=os.environ.get(connection_string_env),
                   progress=lambda done, total: bar.update(task, completed=done, total=total))
        chosen = cat.resolve(disk, point)
    except AgentError as err:
        raise UsageError(str(err)) from None
    finally:
        cat.close()
    click.echo(f"wrote {dest} ({disk} at {chosen.kind} point {chosen.id}, {chosen.as_dict()['time']})")


COMMANDS: list[click.Command] = [recovery_points, replica]
