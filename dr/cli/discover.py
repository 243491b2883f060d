"""`dr discover vcenter|esxi|physical` and `dr profile vcenter`: parse arguments, call dr.discover, render."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from dr.cli.ssh import ssh_login_options
from dr.duration import parse_duration
from dr.errors import SecretUnavailable, UsageError
from dr.matrix import PROFILES
from dr.model import DEFAULT_SUPPORT_PROFILE
from dr.output import echo_json, format_option

DEFAULT_INVENTORY = "inventory.yaml"


def _password(variable: str | None) -> str | None:
    if variable is None:
        return None
    value = os.environ.get(variable)
    if value is None:
        raise SecretUnavailable(
            f"--password-env {variable}: the environment variable {variable} is not set; export it first "
            f"(read -s {variable} && export {variable})"
        )
    return value


@contextmanager
def _progress(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr when it is a terminal; silent otherwise."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task(description, total=total)

        def advance(steps: int) -> None:
            bar.advance(task, steps)

        yield advance


def _vsphere_options(command: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--host", required=True, help="vCenter or ESXi host name or address"),
        click.option("--port", type=click.IntRange(1, 65535), default=443, show_default=True),
        click.option("--user", required=True, help="a user with the Read-only role on the root"),
        click.option("--password-env", required=True, metavar="VAR",
                     help="environment variable holding the password (never on the command line)"),
        click.option("--insecure", is_flag=True, help="skip TLS certificate checks (lab only)"),
        click.option("--http", "plain_http", is_flag=True, help="plain HTTP (simulators only)"),
        click.option("--timeout", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
                     help="seconds to wait for an answer"),
        click.option("--inventory", "inventory_path", type=click.Path(dir_okay=False, path_type=Path),
                     default=DEFAULT_INVENTORY, show_default=True, help="inventory YAML to write or update"),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _source(host: str, port: int, user: str, password_env: str, insecure: bool, plain_http: bool,
            timeout: float) -> Any:
    from dr.discover.vcenter import Source

    password = _password(password_env)
    assert password is not None
    return Source(host=host, port=port, user=user, password=password, insecure=insecure,
                  protocol="http" if plain_http else "https", timeout=timeout)


def _report(outcome: Any, fmt: str, *, title: str, source: Mapping[str, Any], dry_run: bool) -> None:
    from dr.discover.inventory import render_changes

    if fmt == "json":
        echo_json({
            "inventory": str(outcome.path),
            "written": not dry_run,
            "source": dict(source),
            "changes": [c.as_dict() for c in outcome.changes],
            "machines": [{"name": name, "replicable": v.replicable, "reasons": list(v.reasons)}
                         for name, v in outcome.verdicts],
        })
        return
    click.echo(render_changes(outcome.changes, fmt, title=title))
    blocked = outcome.not_replicable
    total = len(outcome.verdicts)
    if fmt == "markdown":
        click.echo("")
        click.echo(f"{total - len(blocked)} of {total} machines can be replicated.")
        if blocked:
            click.echo("")
            click.echo("| machine | why it cannot be replicated |")
            click.echo("|---|---|")
            for name, verdict in blocked:
                click.echo(f"| `{name}` | {'; '.join(verdict.reasons).replace('|', '/')} |")
        return
    click.echo(f"{total - len(blocked)} of {total} machines can be replicated"
               + (f"; {len(blocked)} cannot:" if blocked else ""))
    for name, verdict in blocked:
        click.echo(f"  {name}:")
        for reason in verdict.reasons:
            click.echo(f"    - {reason}")
    where = "would be written to" if dry_run else "written to"
    click.echo(f"inventory {where} {outcome.path}")


def _vsphere_discover(kind: str, host: str, port: int, user: str, password_env: str, insecure: bool,
                      plain_http: bool, timeout: float, inventory_path: Path, site: str, profile: str,
                      declare_site: bool, dry_run: bool, fmt: str) -> None:
    from dr.discover import inventory
    from dr.discover.vcenter import discover

    source = _source(host, port, user, password_env, insecure, plain_http, timeout)
    with _progress(f"discovering {host}", None) as advance:
        found = discover(source, site=site, profile=profile, progress=advance)
    sites: list[dict[str, Any]] = []
    if declare_site:
        endpoint: dict[str, Any] = {"host": host, "port": port, "version": found.version, "user": user,
                                    "password": {"env": password_env}}
        if insecure:
            endpoint["insecure"] = True
        sites.append({"name": site, "vcenter": endpoint} if kind == "vcenter" else
                     {"name": site, "esxi_hosts": [endpoint]})
    outcome = inventory.write_discovery(
        inventory_path, found.machines, owns=inventory.owned_by_vcenter(found.vcenter, site),
        profile=profile, sites=sites, dry_run=dry_run,
    )
    _report(outcome, fmt, title=f"{found.full_version} at {host}",
            source={"host": host, "port": port, "product": found.product, "version": found.version,
                    "full_version": found.full_version, "user": user}, dry_run=dry_run)


def _formatted(command: Callable[..., Any]) -> Callable[..., Any]:
    decorated: Callable[..., Any] = format_option()(command)
    return decorated


def _common_discover_options(command: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--site", required=True, help="the spec's site these machines belong to"),
        click.option("--profile", "profile", type=click.Choice(PROFILES), default=DEFAULT_SUPPORT_PROFILE,
                     show_default=True, help="support profile whose rules decide replicability"),
        click.option("--dry-run", is_flag=True, help="report the changes without writing the inventory"),
        format_option(),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@click.group("discover")
def discover_group() -> None:
    """Discover machines into an inventory YAML the spec includes (include: [inventory.yaml]).

    Rediscovery updates the file in place: your comments and hand-set fields stay, discovered facts
    are refreshed, and added/removed/changed machines are reported (--format markdown for a PR).
    """


@discover_group.command("vcenter")
@_vsphere_options
@_common_discover_options
@click.option("--declare-site", is_flag=True, help="also write the site (with its vcenter:) into the inventory")
def discover_vcenter(**kwargs: Any) -> None:
    """Discover every VM of a vCenter: one PropertyCollector pass, never one call per VM.

    \b
    Example:
      export VCENTER_PASSWORD=...
      dr discover vcenter --host vcenter.contoso.local --user dr@vsphere.local \\
          --password-env VCENTER_PASSWORD --site hq --inventory inventory.yaml
    """
    _vsphere_discover("vcenter", **kwargs)


@discover_group.command("esxi")
@_vsphere_options
@_common_discover_options
@click.option("--declare-site", is_flag=True, help="also write the site (with its esxi_hosts:) into the inventory")
def discover_esxi(**kwargs: Any) -> None:
    """Discover the VMs of a standalone ESXi host (no vCenter), like `dr discover vcenter`.

    \b
    Example:
      dr discover esxi --host esx01.contoso.local --user root --password-env ESX_PASSWORD --site branch
    """
    _vsphere_discover("esxi", **kwargs)


@discover_group.command("physical")
@click.argument("address")
@click.option("--name", help="the machine's name in the spec (default: its host name)")
@ssh_login_options
@click.option("--accept-new-host-key", is_flag=True, help="trust an unknown host key on first use")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True)
@click.option("--inventory", "inventory_path", type=click.Path(dir_okay=False, path_type=Path),
              default=DEFAULT_INVENTORY, show_default=True)
@_common_discover_options
def discover_physical(address: str, name: str | None, user: str, port: int, key_file: Path | None,
                      password_env: str | None, known_hosts: Path | None, accept_new_host_key: bool,
                      timeout: float, inventory_path: Path, site: str, profile: str, dry_run: bool,
                      fmt: str) -> None:
    """Discover a physical (or any Linux) server by address over SSH, with read-only commands.

    \b
    Runs: cat /etc/os-release; lsblk -J -b; ip -j addr; test -d /sys/firmware/efi; findmnt -J;
    nproc; cat /proc/meminfo; uname -m; hostname.
    Example:
      dr discover physical 10.0.0.31 --user dr --key-file ~/.ssh/dr_ed25519 --site hq
    """
    from pydantic import ValidationError

    from dr.discover import inventory
    from dr.discover.errors import SourceError
    from dr.discover.physical import SshTarget, collect, machine_from_facts

    if key_file is not None and password_env is not None:
        raise UsageError("give either --key-file or --password-env, not both")
    target = SshTarget(address=address, user=user, port=port, key_file=key_file, password=_password(password_env),
                       known_hosts=known_hosts, accept_new_host_key=accept_new_host_key, timeout=timeout)
    facts = collect(target)
    try:
        machine = machine_from_facts(facts, name=name or facts.hostname, site=site, address=address)
    except ValidationError as err:
        first = err.errors()[0]
        raise SourceError(f"{address}: {'.'.join(str(p) for p in first['loc'])}: {first['msg']} "
                          f"(found {first.get('input')!r}); this server cannot be described in the spec") from None
    outcome = inventory.write_discovery(inventory_path, [machine], owns=inventory.never, profile=profile,
                                        dry_run=dry_run)
    _report(outcome, fmt, title=f"{facts.os.pretty_name} at {address}",
            source={"address": address, "port": port, "user": user}, dry_run=dry_run)


@click.group("profile")
def profile_group() -> None:
    """Measure disk write IOPS and churn and write them into the inventory, where the planner reads them."""


@profile_group.command("vcenter")
@_vsphere_options
@click.option("--duration", default="30m", show_default=True, help="how long to sample (30s, 15m, 24h)")
@click.option("--interval", default="20s", show_default=True,
              help="time between samples (vCenter refreshes real-time statistics every 20s)")
@click.option("--percentile", "pct", type=click.FloatRange(0, 100), default=95.0, show_default=True,
              help="percentile of the samples written as iops and churn_gb_per_day")
@click.option("--dry-run", is_flag=True, help="report the figures without writing the inventory")
@_formatted
def profile_vcenter(host: str, port: int, user: str, password_env: str, insecure: bool, plain_http: bool,
                    timeout: float, inventory_path: Path, duration: str, interval: str, pct: float,
                    dry_run: bool, fmt: str) -> None:
    """Sample vCenter's PerformanceManager for the VMs of an inventory and write per-disk p95 figures.

    \b
    Reads virtualDisk.write.average (KiB/s -> churn_gb_per_day) and
    virtualDisk.numberWriteAveraged.average (-> iops) per disk, per VM.
    Example:
      dr profile vcenter --host vcenter.contoso.local --user dr@vsphere.local \\
          --password-env VCENTER_PASSWORD --duration 30m --interval 20s --inventory inventory.yaml
    """
    from dr.discover import inventory
    from dr.discover.profile import profile

    try:
        duration_s = parse_duration(duration).total_seconds()
        interval_s = parse_duration(interval).total_seconds()
    except ValueError as err:
        raise UsageError(f"--duration/--interval: {err}") from None
    if interval_s <= 0 or duration_s < interval_s:
        raise UsageError(f"--interval must be positive and at most --duration, found {interval} and {duration}")
    if not inventory_path.exists():
        raise UsageError(f"--inventory {inventory_path}: no such file; run `dr discover vcenter` first")
    doc = inventory.load(inventory_path)
    devices = inventory.disk_devices(doc)
    if not devices:
        raise UsageError(f"--inventory {inventory_path}: no VMware machine with disk devices to profile; "
                         "run `dr discover vcenter` first")
    source = _source(host, port, user, password_env, insecure, plain_http, timeout)
    rounds = max(1, int(duration_s // interval_s))
    with _progress(f"sampling {host}", rounds) as advance:
        figures, keyed, unsampled = profile(source, devices, duration_s=duration_s, interval_s=interval_s,
                                            pct=pct, on_round=lambda done, total: advance(1))
    changes = inventory.apply_figures(doc, keyed)
    names = inventory.machine_keys(doc)
    unsampled = sorted(names.get(key, key) for key in unsampled)
    if not dry_run:
        inventory.save(inventory_path, doc)
    label = f"p{pct:g}"
    if fmt == "json":
        echo_json({
            "inventory": str(inventory_path), "written": not dry_run, "percentile": pct, "rounds": rounds,
            "disks": [{"machine": f.machine, "device": f.device, "iops": f.iops,
                       "churn_gb_per_day": f.churn_gb_per_day, "samples": f.samples} for f in figures],
            "not_sampled": unsampled,
        })
        return
    if fmt == "markdown":
        click.echo(f"### Profile of {host}: {label} of {rounds} samples")
        click.echo("")
        click.echo("| machine | disk | write IOPS | churn GB/day |")
        click.echo("|---|---|---:|---:|")
        for f in figures:
            click.echo(f"| `{f.machine}` | {f.device} | {f.iops:g} | {f.churn_gb_per_day:g} |")
    else:
        click.echo(f"profile of {host}: {label} of {rounds} sample(s) per disk")
        width = max((len(f.machine) for f in figures), default=7)
        click.echo(f"  {'machine':<{width}}  {'disk':<8} {'iops':>8} {'churn GB/day':>13}")
        for f in figures:
            click.echo(f"  {f.machine:<{width}}  {f.device:<8} {f.iops:>8g} {f.churn_gb_per_day:>13g}")
    if unsampled:
        click.echo(f"not sampled (powered off or gone): {', '.join(_short(unsampled))}")
    where = "would be written to" if dry_run else "written to"
    click.echo(f"{len(changes)} machine(s) updated; inventory {where} {inventory_path}")


def _short(names: Sequence[str], limit: int = 10) -> list[str]:
    return list(names[:limit]) + ([f"... {len(names) - limit} more"] if len(names) > limit else [])


COMMANDS: list[click.Command] = [discover_group, profile_group]
