"""`dr validate`, `dr schema`, `dr show`: reading the spec. Parsing arguments and rendering only."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from dr.errors import EXIT_INVALID, EXIT_OK, DrError
from dr.findings import Finding, excerpt
from dr.output import echo_json, format_option, use_colour


def _render_finding(finding: Finding, lines: dict[str, list[str]], colour: bool) -> str:
    header = finding.header()
    if colour:
        header = click.style(header, fg="red" if finding.severity == "error" else "yellow", bold=True)
    loc = finding.location
    body = excerpt(loc, lines.get(loc.file, [])) if loc else ""
    return f"{header}\n{body}" if body else header


@click.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=True, path_type=Path))
@format_option()
def validate_cmd(files: tuple[Path, ...], fmt: str) -> None:
    """Check specs against the model and the support matrix; report every problem at once.

    Each problem is printed as FILE:LINE:COL: dotted.path: message, with the source line and a caret
    under the mistake. Warnings (a powered-off machine, inventory that cannot be replicated) do not
    fail the check.

    \b
    Example:
        dr validate examples/sharepoint/dr.yaml
        dr validate dr.yaml --format json | jq '.files[0].findings'

    Exit codes: 0 valid (warnings allowed), 1 invalid, 2 unreadable file.
    """
    from dr.validate import validate_path

    colour = use_colour()
    results: list[dict[str, Any]] = []
    code = EXIT_OK
    for file in files:
        try:
            report = validate_path(file)
        except DrError as err:
            code = max(code, err.exit_code)
            results.append({"file": str(file), "valid": False, "unreadable": str(err), "findings": []})
            if fmt == "text":
                click.echo(f"{click.style('dr: error:', fg='red', bold=True) if colour else 'dr: error:'} {err}",
                           err=True)
            continue
        if report.errors:
            code = max(code, EXIT_INVALID)
        results.append({
            "file": str(file),
            "valid": report.ok,
            "errors": len(report.errors),
            "warnings": len(report.warnings),
            "findings": [f.to_json() for f in report.findings],
        })
        if fmt == "text":
            for finding in report.findings:
                click.echo(_render_finding(finding, report.source.lines, colour))
            verdict = "valid" if report.ok else "invalid"
            summary = f"{file}: {verdict} ({len(report.errors)} error(s), {len(report.warnings)} warning(s))"
            click.echo(click.style(summary, fg="green" if report.ok else "red") if colour else summary)
    if fmt == "json":
        echo_json({"files": results})
    elif fmt == "markdown":
        for result in results:
            mark = "valid" if result["valid"] else "invalid"
            click.echo(f"### `{result['file']}`: {mark}\n")
            if "unreadable" in result:
                click.echo(f"- unreadable: {result['unreadable']}\n")
                continue
            for f in result["findings"]:
                where = f"`{f['file']}:{f['line']}:{f['col']}`" if f["file"] else ""
                click.echo(f"- **{f['severity']}** {where} `{f['path']}`: {f['message']}")
            click.echo("")
    sys.exit(code)


@click.command("schema")
@format_option("json", "markdown", default="json")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="write to this file instead of standard output")
def schema_cmd(fmt: str, output: Path | None) -> None:
    """Print the JSON Schema of dr.yaml (for editor autocompletion), or the Markdown key reference.

    \b
    Example (VS Code with the YAML extension):
        dr schema -o dr.schema.json
        # then, first line of dr.yaml:  # yaml-language-server: $schema=dr.schema.json
    """
    from dr.model import Estate

    if fmt == "markdown":
        from dr.reference import markdown_reference

        text = markdown_reference()
    else:
        schema = Estate.model_json_schema(by_alias=True)
        schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "dr.yaml", **schema}
        text = json.dumps(schema, indent=2) + "\n"
    if output:
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as err:
            raise DrError(f"{output}: cannot write: {err.strerror}") from None
    else:
        click.echo(text, nl=False)


@click.command("show")
@click.argument("file", type=click.Path(path_type=Path))
@format_option()
def show_cmd(file: Path, fmt: str) -> None:
    """A readable summary of an estate: sites, machines, disks, protection groups, recovery plans.

    The spec must be valid (run `dr validate` to see why it is not).

    \b
    Example:
        dr show examples/sharepoint/dr.yaml --format markdown
    """
    from dr.show import summary, to_markdown, to_text
    from dr.validate import load_valid

    estate, _warnings = load_valid(file)
    data = summary(estate)
    if fmt == "json":
        echo_json(data)
    elif fmt == "markdown":
        click.echo(to_markdown(data))
    else:
        to_text(data, colour=use_colour())


COMMANDS = [validate_cmd, schema_cmd, show_cmd]
