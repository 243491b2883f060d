"""`dr status`: the estate's replication health at a glance (machines, RPO, last recovery points,
servers, open alerts, recent jobs), from the configuration server's store. Rendering only."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from dr.output import echo_json, format_option, span, use_colour

_COLOURS = {"Healthy": "green", "Warning": "yellow", "Critical": "red"}


def _when(value: float | None, now: float) -> str:
    if value is None:
        return "never"
    age = now - value
    stamp = datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M")
    return f"{stamp} ({span(age)} ago)"


def _table(rows: list[list[str]], header: list[str]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return lines


def _state(text: str, colour: bool) -> str:
    return click.style(text, fg=_COLOURS.get(text), bold=True) if colour else text


def _text(view: dict[str, Any], colour: bool) -> list[str]:
    now = view["time"]
    out = [f"estate {view['estate']}: {_state(view['health']['state'], colour)}", ""]
    rows = [[m["name"], m["group"], m["health"]["state"], span(m["rpo_seconds"]),
             span(m["rpo_threshold_seconds"]), _when(m["latest_point"], now), _when(m["latest_app_point"], now)]
            for m in view["machines"]]
    table = _table(rows, ["MACHINE", "GROUP", "HEALTH", "RPO", "THRESHOLD", "LATEST POINT", "LATEST APP POINT"])
    if colour:
        table = [table[0]] + [line.replace(r[2], _state(r[2], True), 1) for line, r in zip(table[1:], rows,
                                                                                             strict=True)]
    out += table
    reasons = [(m["name"], r) for m in view["machines"] for r in m["health"]["reasons"]]
    if reasons:
        out += ["", "why:"] + [f"  {name}: {reason}" for name, reason in reasons]
    if view["components"]:
        servers = [[c["name"], c["role"].replace("_", " "), c["health"]["state"],
                    "-" if c["cache_free_fraction"] is None else f"{c['cache_free_fraction'] * 100:.0f} % free",
                    _when(c["last_heartbeat"], now)] for c in view["components"]]
        out += ["", *_table(servers, ["SERVER", "ROLE", "HEALTH", "CACHE", "LAST HEARTBEAT"])]
    out += ["", f"open alerts: {len(view['alerts'])}"]
    out += [f"  {a['severity']:<8} {a['condition']:<15} {a['subject']}: {a['message']}" for a in view["alerts"]]
    if view["jobs"]:
        out += ["", "recent jobs:"]
        out += [f"  {j['id']}  {j['kind']:<18} {j['plan']:<12} {j['state']}" for j in view["jobs"][:5]]
    return out


def _markdown(view: dict[str, Any]) -> list[str]:
    now = view["time"]
    out = [f"## Estate `{view['estate']}`: {view['health']['state']}", "",
           "| Machine | Group | Health | RPO | Threshold | Latest point |", "|---|---|---|---|---|---|"]
    out += [f"| {m['name']} | {m['group']} | {m['health']['state']} | {span(m['rpo_seconds'])} | "
            f"{span(m['rpo_threshold_seconds'])} | {_when(m['latest_point'], now)} |" for m in view["machines"]]
    out += ["", f"Open alerts: {len(view['alerts'])}", ""]
    out += [f"- **{a['severity']}** `{a['condition']}` {a['subject']}: {a['message']}" for a in view["alerts"]]
    return out


@click.command("status")
@click.argument("spec", type=click.Path(path_type=Path), default="dr.yaml", required=False)
@click.option("--state", help="state store of the configuration server (env DR_STATE; default ./dr-state.db)")
@format_option()
def status_cmd(spec: Path, state: str | None, fmt: str) -> None:
    """Replication health at a glance: machines, RPO, last recovery points, servers, alerts, jobs.

    Health is ASR's: Healthy, Warning (RPO over its threshold, a machine powered off, cache below
    30 % free), Critical (RPO over twice the threshold, no heartbeat, cache below 25 % free).
    Exit status 0 whatever the health; scripts read `--format json`.

    \b
    Example:
        dr status dr.yaml --state /var/lib/dr/state.db
        dr status --format json | jq '.machines[] | select(.health.state != "Healthy") | .name'
    """
    from dr.server.service import ConfigServer
    from dr.server.settings import open_state
    from dr.validate import load_valid

    estate, _ = load_valid(spec)
    view = ConfigServer(store=open_state(state), estate=estate).overview().as_dict()
    if fmt == "json":
        echo_json(view)
    elif fmt == "markdown":
        click.echo("\n".join(_markdown(view)))
    else:
        click.echo("\n".join(_text(view, use_colour(sys.stdout))))


COMMANDS: list[click.Command] = [status_cmd]
