"""`dr lab drill SPEC [--plan P] [--chaos]`: a DR drill in one command (dr/lab/drill.py). Added to
the `dr lab` group of dr/cli/lab.py (modules register in name order: `lab` comes first)."""

from __future__ import annotations

from pathlib import Path

import click

from dr.cli.lab import ROOT_OPTION, _progress, lab
from dr.errors import EXIT_INVALID
from dr.output import echo_json, format_option


@lab.command("drill")
@click.argument("spec", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--plan", help="the recovery plan to drill (default: the spec's first)")
@click.option("--chaos", is_flag=True,
              help="SIGKILL a process server, a master target and an agent at random moments while the workloads "
                   "write; the drill must still verify")
@click.option("--seed", type=int, help="seed of --chaos's random choices (to repeat a run)")
@ROOT_OPTION
@format_option("text", "json")
def drill_cmd(spec: Path, plan: str | None, chaos: bool, seed: int | None, root: Path | None, fmt: str) -> None:
    """Fail a recovery plan over (test) in the lab and verify every disk; exit 0 only when all verified.

    Brings the lab up if needed, waits for a multi-VM point, pauses the workloads and records each
    disk's files (sha256), waits for a point after the pause, runs `dr failover PLAN --type test
    --point latest-multi-vm` (confirming its manual steps), checks every recovered disk (e2fsck -fn,
    mount read-only, every file equal), cleans the test failover up and resumes the workloads.

    \b
    Example:
      sudo dr lab drill examples/sharepoint/dr.yaml
      sudo dr lab drill examples/linux-estate/dr.yaml --plan orders --chaos
    """
    from dr.lab.drill import drill

    report = drill(spec, plan=plan, chaos=chaos, progress=_progress, seed=seed, root=root)
    if fmt == "json":
        echo_json(report.to_json())
    else:
        for d in report.disks:
            click.echo(f"{d.machine}/{d.disk}: {'verified' if d.ok else 'FAILED'}: {d.detail}")
        for note in report.notes:
            click.echo(f"note: {note}")
        click.echo(report.line)
    if not report.ok:
        raise click.exceptions.Exit(EXIT_INVALID)


COMMANDS: list[click.Command] = []
