"""`dr recovery-points` and `dr replica export`: read the master target's catalog of recovery points.

The catalog (sqlite) lives in the master target's state directory; `--catalog` or $DR_CATALOG
names it. The agent package (dr_agent) is imported inside the commands: it is the 'agent' extra.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from dr.errors import MissingExtra, NotFound, SpecUnreadable, UsageError
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
    from dr_agent.errors import ConfigError

    try:
        return Catalog.open_readonly(path)
    except ConfigError as err:
        raise SpecUnreadable(str(err)) from None


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
                raise NotFound(f"no disk or multi-VM group named {name!r} has recovery points "
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
    from dr_agent.export import export_point
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    if dest.suffix.lower() not in (".img", ".vhd"):
        raise UsageError(f"--to {dest}: expected a name ending in .img (raw) or .vhd (fixed VHD)")
    cat = _catalog(catalog_path)
    try:
        # Resolved once: `latest` or `latest-app` may move while the export runs; the id is pinned.
        chosen = cat.resolve(disk, point)
        when = chosen.as_dict()["time"]
        click.echo(f"exporting {disk} at {chosen.kind} point {chosen.id} ({when})", err=True)
        with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                      TransferSpeedColumn(), disable=not use_colour()) as bar:
            task = bar.add_task(f"export {disk}", total=None)
            export_point(cat, chosen, dest, connection_string=os.environ.get(connection_string_env),
                         progress=lambda done, total: bar.update(task, completed=done, total=total))
    except AgentError as err:
        raise UsageError(str(err)) from None
    finally:
        cat.close()
    click.echo(f"wrote {dest} ({disk} at {chosen.kind} point {chosen.id}, {when})")


def render_configs(estate: Any, plan: Any, addresses: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every service's configuration and systemd unit, keyed by relative path (`<server>/<file>`).
    `addresses` ({server name: address}) replaces the spec's addresses (`--address`, the lab's)."""
    from dr_agent.contract import CS_PORT, MT_PORT, PS_PORT, stream_name

    from dr.azure.naming import storage_env
    from dr.blueprints import render

    out: dict[str, str] = {}
    given = dict(addresses or {})
    site_ps = {(s.name, ps.name): given.get(ps.name, ps.address) for s in estate.sites for ps in s.process_servers}
    mt_of = {m: mt for mt in plan.master_targets for m in mt.machines}
    groups = {m: g for g in estate.protection_groups for m in g.members}
    ps_of = {m: ps for ps in plan.process_servers for m in ps.machines}
    coordinators = _coordinators(estate, plan, mt_of)
    cs_of = {m: cs for cs in plan.config_servers for m in cs.machines}

    def control(machines: list[str]) -> str | None:
        """The configuration server a component reports to ([control]): its machines' one."""
        cs = next((cs_of[m] for m in machines if m in cs_of), None)
        return None if cs is None else f"https://{given.get(cs.name, cs.name)}:{CS_PORT}"

    for ps in plan.process_servers:
        mts = [mt_of[m] for m in ps.machines if m in mt_of]
        if not mts:
            continue
        coordinated = [_group_view(g, ps.site) for g in estate.protection_groups
                       if g.name in coordinators and coordinators[g.name].name == ps.name]
        address = site_ps.get((ps.site, ps.name), "0.0.0.0")
        site = next((s for s in estate.sites if s.name == ps.site), None)
        throttle = site.bandwidth_mbps if site is not None else None
        view = {**ps.model_dump(), "address": address}
        out[f"{ps.name}/process-server.toml"] = render(
            "agent/process-server.toml.j2", ps=view, mt=mts[0], ps_port=PS_PORT, mt_port=MT_PORT,
            throttle_mbps=throttle, groups=coordinated, control_server=control(ps.machines))
        out[f"{ps.name}/dr-process-server.service"] = render("agent/dr-process-server.service.j2", name=ps.name)
    for mt in plan.master_targets:
        disk_envs = [(stream_name(*d.disk.split("/", 1)), storage_env(d.storage_account)) for d in mt.disks]
        hours = max((groups[m].policy.retention.total_seconds() / 3600 for m in mt.machines if m in groups),
                    default=24.0)
        out[f"{mt.name}/master-target.toml"] = render(
            "agent/master-target.toml.j2", mt=mt, mt_port=MT_PORT, retention_hours=round(hours, 3),
            default_env=disk_envs[0][1] if disk_envs else "AZURE_STORAGE_CONNECTION_STRING", disk_envs=disk_envs,
            control_server=control(mt.machines))
        out[f"{mt.name}/dr-master-target.service"] = render("agent/dr-master-target.service.j2", name=mt.name)
    for name, ps in ps_of.items():
        machine = estate.machine(name)
        group = groups[name]
        same_site = [p for p in plan.process_servers if p.site == ps.site]
        ps_addresses = [f"{site_ps.get((p.site, p.name), p.name)}:{PS_PORT}"
                        for p in sorted(same_site, key=lambda p: p.name != ps.name)]
        # a disk with file systems on it is in use: tracking mode (out of the I/O path, no change to
        # the workload's mounts); one without is presented by the agent itself (splitter)
        disks = [{"stream": stream_name(name, d.name), "device": d.device or f"/dev/disk/by-label/{d.name}",
                  "mount_points": d.mount_points, "mode": "tracking" if d.mount_points else "splitter"}
                 for d in machine.disks]
        app = group.policy.app_consistent_every
        coordinator: Any = coordinators.get(group.name)
        out[f"{name}/agent.toml"] = render(
            "agent/agent.toml.j2", machine=machine, group=group, ps_addresses=ps_addresses, disks=disks,
            crash_every_s=int(group.policy.crash_consistent_every.total_seconds()),
            app_every_s=int(app.total_seconds()) if app else None,
            group_id=group.name if group.policy.multi_vm_consistency else None,
            coordinator=(f"{site_ps.get((coordinator.site, coordinator.name), coordinator.name)}:{PS_PORT}"
                         if coordinator is not None else None), control_server=control([name]))
        out[f"{name}/dr-agent.service"] = render("agent/dr-agent.service.j2", name=name,
                                                 splitter=any(d["mode"] == "splitter" for d in disks))
    return out


def _group_view(group: Any, site: str) -> dict[str, Any]:
    """What process-server.toml says of a multi-VM group it coordinates."""
    app = group.policy.app_consistent_every
    return {"name": group.name, "members": list(group.members), "site": site,
            "crash_every_s": int(group.policy.crash_consistent_every.total_seconds()),
            "app_every_s": int(app.total_seconds()) if app else None}


def _coordinators(estate: Any, plan: Any, mt_of: Mapping[str, Any]) -> dict[str, Any]:
    """{multi-VM group: the plan's process server that coordinates it}: the first process server (in
    plan order) of the site of the group's first member, among those that get a configuration."""
    serving = [ps for ps in plan.process_servers if any(m in mt_of for m in ps.machines)]
    out: dict[str, Any] = {}
    for g in estate.protection_groups:
        if not g.policy.multi_vm_consistency:
            continue
        site = estate.machine(g.members[0]).site
        first = next((ps for ps in serving if ps.site == site), None)
        if first is not None:
            out[g.name] = first
    return out


@replica.command("configs")
@click.argument("spec", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="directory to write <server>/<file> into")
@click.option("--address", "addresses", multiple=True, metavar="NAME=ADDRESS",
              help="a server's address instead of the spec's (repeatable; `dr lab` gives its own)")
def configs_cmd(spec: Path, out_dir: Path, addresses: tuple[str, ...]) -> None:
    """Render every agent, process server and master target configuration (and systemd unit).

    Derived from the spec and the plan: which disks each agent presents, which process servers it
    dials (its own first, then the site's others), which master target each process server feeds,
    which storage account holds each replica, and which process server coordinates each multi-VM
    group (the first of its site: its agents dial it). Connection strings stay in the environment.

    \b
    Example:
      dr replica configs dr.yaml --out build/configs
      scp build/configs/ps-dublin/* ps-dublin:/etc/dr-agent/
      dr replica configs dr.yaml --out build/configs --address ps-dublin=10.213.1.10
    """
    from dr.plan import make_plan
    from dr.validate import load_valid

    estate, _warnings = load_valid(spec)
    plan = make_plan(estate)
    given: dict[str, str] = {}
    for item in addresses:
        name, sep, address = item.partition("=")
        if not sep or not name or not address:
            raise UsageError(f"--address {item!r}: expected NAME=ADDRESS, e.g. ps01=10.0.0.20")
        given[name] = address
    known = {m.name for m in estate.machines} | {s.name for s in plan.process_servers} | {
        s.name for s in plan.master_targets} | {s.name for s in plan.config_servers}
    unknown = sorted(set(given) - known)
    if unknown:
        raise UsageError(f"--address names {', '.join(unknown)}, not a machine or server of the plan "
                         f"(known: {', '.join(sorted(known))})")
    files = render_configs(estate, plan, given)
    for rel, text in sorted(files.items()):
        dest = out_dir / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
    servers = sorted({rel.split("/")[0] for rel in files})
    click.echo(f"wrote {len(files)} file(s) for {len(servers)} machine(s) under {out_dir}")


COMMANDS: list[click.Command] = [recovery_points, replica]
