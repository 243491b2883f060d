"""`dr lab up|status|down SPEC`: the whole estate on this Linux machine. Parsing and rendering only;
the lab lives in `dr.lab`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from dr.output import echo_json, format_option, use_colour

SIZE_HELP = ("size of every source disk in the lab (sparse image; the lab chooses it, not the spec, "
             "whose disks are far larger): 64M by default, at least 16M")


def _lab(spec: Path, root: Path | None) -> Any:
    from dr.lab import Lab

    return Lab.load(spec, root=root)


ROOT_OPTION = click.option("--root", type=click.Path(path_type=Path, file_okay=False), envvar="DR_LAB_ROOT",
                           help="where labs live, one directory per estate (env DR_LAB_ROOT; default /var/lib/dr-lab)")


def _progress(message: str) -> None:
    click.echo(click.style("lab: ", fg="cyan") + message if use_colour() else f"lab: {message}", err=True)


def _render(status: Any, spec: Path, fmt: str) -> None:
    if fmt == "json":
        echo_json(status.to_json())
        return
    mark = {True: "running", False: "stopped"}
    click.echo(f"estate {status.estate}: {'up' if status.up else 'down'}, subnet {status.subnet}, {status.directory}")
    for c in status.components:
        state = mark[c.running]
        if use_colour():
            state = click.style(state, fg="green" if c.running else "red")
        pids = ",".join(map(str, c.pids))
        extra = f"  pid {pids}" if pids else (f"  ({c.detail})" if c.detail else "")
        click.echo(f"  {c.name:32} {c.kind:15} {c.address:15} {state}{extra}")
    for d in status.disks:
        click.echo(f"  disk {d['machine']}/{d['disk']}: {d['device']} on {d['mount']}"
                   + ("" if d["mounted"] else " (not mounted)"))
    running = sum(c.running for c in status.components)
    click.echo(f"{running}/{len(status.components)} component(s) running")
    if status.up:
        click.echo(f"replication health, as the configuration server sees it: dr status {spec} --state {status.state}")


@click.group("lab")
def lab() -> None:
    """The whole estate on one Linux machine, from the product's own artifacts (needs root).

    Each source machine is a network namespace with its own address, sshd, disks (loop devices with
    ext4 holding data before any agent arrives) and a small workload; Azurite is the estate's Azure
    storage; the configuration server, process servers and master targets run from the built wheels
    with the configs `dr replica configs` renders; the agents are push-installed over SSH.

    \b
    Example:
      dr lab up examples/sharepoint/dr.yaml
      dr lab status examples/sharepoint/dr.yaml --format json
      dr lab down examples/sharepoint/dr.yaml
    """


@lab.command("up")
@click.argument("spec", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--disk-size", default="64M", show_default=True, help=SIZE_HELP)
@ROOT_OPTION
@click.option("--no-push", is_flag=True, help="leave the agents uninstalled (push them later with dr agent push)")
@format_option("text", "json")
def up_cmd(spec: Path, root: Path | None, disk_size: str, no_push: bool, fmt: str) -> None:
    """Bring the estate up (idempotent: what runs already is kept).

    \b
    Example:
      sudo dr lab up examples/linux-estate/dr.yaml --disk-size 32M
    """
    from dr.lab.disks import parse_size

    size = parse_size(disk_size)
    status = _lab(spec, root).up(disk_size=size, progress=_progress, push=not no_push)
    _render(status, spec, fmt)


@lab.command("status")
@click.argument("spec", type=click.Path(path_type=Path, dir_okay=False))
@ROOT_OPTION
@format_option("text", "json")
def status_cmd(spec: Path, root: Path | None, fmt: str) -> None:
    """What runs in the lab, where (exit 0 even when parts are stopped: read `all_running`)."""
    status = _lab(spec, root).status()
    _render(status, spec, fmt)


@lab.command("down")
@click.argument("spec", type=click.Path(path_type=Path, dir_okay=False))
@ROOT_OPTION
def down_cmd(spec: Path, root: Path | None) -> None:
    """Stop everything and remove it: processes, namespaces, mounts, loop devices, bridge, files.
    Works after an `up` that failed half-way, and when nothing is up."""
    removed = _lab(spec, root).down(progress=_progress)
    click.echo(f"lab down: removed {len(removed)} item(s)" if removed else "lab down: nothing was up")


COMMANDS: list[click.Command] = [lab]
