"""`dr preview`: the Azure resources the Pulumi stack declares, offline (Pulumi's mock runtime)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from dr.errors import SpecUnreadable
from dr.output import echo_json, format_option

FAILOVERS = ("none", "test", "planned", "unplanned")


@click.command("preview")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--failover",
    type=click.Choice(FAILOVERS),
    default="none",
    show_default=True,
    help="declare the recovery VMs of a failover (test: in the isolated network)",
)
@click.option(
    "--plan", "plan_name", metavar="NAME", default=None, help="the recovery plan to fail over (default: the only one)"
)
@click.option(
    "--plan-json",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="use this `dr plan --format json` output instead of planning again",
)
@format_option("text", "markdown", "json")
def preview_command(file: Path, failover: str, plan_name: str | None, plan_json: Path | None, fmt: str) -> None:
    """Show every Azure resource the Pulumi stack would declare for FILE, without Pulumi or Azure.

    The same program `pulumi up` runs (stacks/azure) runs here under Pulumi's own mock runtime: no
    Pulumi CLI, no credentials, no network. It prints each resource's type, logical name, parent and
    key properties (size, SKU, region, address prefixes, opened ports).

    \b
    Examples:
      dr preview examples/sharepoint/dr.yaml
      dr preview examples/sharepoint/dr.yaml --failover test --plan sharepoint
      dr preview dr.yaml --format markdown > azure-resources.md
    """
    from dr import preview as offline
    from dr.azure.contract import from_contract, plan_of
    from dr.validate import load_valid

    estate, _warnings = load_valid(file)  # warnings are `dr validate`'s to print
    if plan_json is not None:
        try:
            data = json.loads(plan_json.read_text())
        except (OSError, ValueError) as err:
            raise SpecUnreadable(
                f"{plan_json}: not a `dr plan --format json` output ({err}); "
                "write it with dr plan FILE --format json > plan.json"
            ) from None
        plan = from_contract(data)
    else:
        plan = plan_of(estate)
    result = offline.preview(estate, plan, failover, plan_name)  # type: ignore[arg-type]
    if fmt == "json":
        echo_json(result.to_json())
    elif fmt == "markdown":
        click.echo(offline.render_markdown(result))
    else:
        click.echo(offline.render_text(result))


COMMANDS: list[click.Command] = [preview_command]
