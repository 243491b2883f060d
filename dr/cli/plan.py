"""`dr plan` and `dr diff`: sizing a spec and what a change costs. Parsing arguments and rendering only."""

from __future__ import annotations

from pathlib import Path

import click

from dr.errors import EXIT_INVALID, EXIT_QUOTA, SpecInvalid, UsageError
from dr.model import Estate
from dr.output import echo_json, format_option, use_colour


def _load(path: Path) -> Estate:
    """A valid estate; the validator's findings on stderr (warnings, or every error before refusing)."""
    from dr.validate import load_valid

    try:
        estate, warnings = load_valid(path)
    except SpecInvalid as err:
        for finding in err.findings:
            click.echo(finding.header(), err=True)
        raise
    for finding in warnings:
        click.echo(finding.header(), err=True)
    return estate


@click.command("plan")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@format_option("text", "markdown", "json", "html")
@click.pass_context
def plan_cmd(ctx: click.Context, file: Path, fmt: str) -> None:
    """Size a spec: configuration, process and master target servers, storage accounts, failover
    VM sizes and vCPU quota, bandwidth for the RPO and initial replication.

    Only machines in a protection group are sized. Every server and account lists what it carries
    and the rule and numbers that put it there. An invalid spec is refused with the validator's
    findings. Exit 0: the plan holds (warnings allowed); 1: the spec or the plan has errors;
    2: unreadable input.

    \b
    Example:
        dr plan examples/sharepoint/dr.yaml
        dr plan dr.yaml --format json | jq '.quota'
        dr plan dr.yaml --format html > plan.html
    """
    from dr.plan import make_plan
    from dr.plan.report import render_html, render_markdown, render_text

    plan = make_plan(_load(file))
    if fmt == "json":
        echo_json(plan.model_dump(mode="json"))
    elif fmt == "markdown":
        click.echo(render_markdown(plan), nl=False)
    elif fmt == "html":
        click.echo(render_html(plan), nl=False)
    else:
        click.echo(render_text(plan, colour=use_colour()), nl=False)
    if plan.errors:
        ctx.exit(EXIT_INVALID)


@click.command("diff")
@click.argument("old", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("new", type=click.Path(dir_okay=False, path_type=Path), required=False)
@click.option("--base", "base", metavar="GIT_REF", default=None,
              help="compare FILE with the same file at this git ref (e.g. origin/main)")
@click.option("--no-resources", is_flag=True, help="leave out the Pulumi resource delta")
@format_option("text", "markdown", "json")
@click.pass_context
def diff_cmd(ctx: click.Context, old: Path, new: Path | None, base: str | None, no_resources: bool,
             fmt: str) -> None:
    """Show what a change to the spec costs: protected machines, disks, IOPS, servers, storage
    accounts, vCPU quota and bandwidth, before and after.

    Give two files (OLD NEW), or one file and --base GIT_REF to compare it with the same file (and
    its includes) at that ref. Markdown is for a pull-request comment, JSON for bots.
    Exit 0: fine; 1: the new spec or plan has errors; 2: unreadable input;
    3: the new plan needs more vCPU quota than azure.quota.vcpus declares (a CI gate).

    \b
    Example:
        dr diff old/dr.yaml dr.yaml
        dr diff dr.yaml --base origin/main --format markdown > comment.md
    """
    from dr.diff import checkout_at, diff_estates, render_diff_markdown, render_diff_text

    if (new is None) == (base is None):
        raise UsageError(
            "dr diff takes two files (dr diff OLD NEW) or one file and a git ref "
            "(dr diff FILE --base origin/main); found "
            + ("neither a second file nor --base" if new is None else "both a second file and --base")
        )
    if new is not None:
        old_estate: Estate | None = _load(old)
        new_estate = _load(new)
        label = str(old)
    else:
        assert base is not None
        new_estate = _load(old)
        with checkout_at(old, base) as previous:
            old_estate = _load(previous) if previous is not None else None
        label = f"{base}:{old}" if old_estate is not None else f"nothing ({old} does not exist at {base})"
    diff = diff_estates(old_estate, new_estate, base=label, resources=not no_resources)
    if fmt == "json":
        data = diff.model_dump(mode="json")
        data["quota_exceeded"] = diff.quota_exceeded
        echo_json(data)
    elif fmt == "markdown":
        click.echo(render_diff_markdown(diff), nl=False)
    else:
        click.echo(render_diff_text(diff), nl=False)
    if diff.errors:
        ctx.exit(EXIT_INVALID)
    if diff.quota_exceeded:
        ctx.exit(EXIT_QUOTA)


COMMANDS: list[click.Command] = [plan_cmd, diff_cmd]
