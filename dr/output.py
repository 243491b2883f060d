"""Rendering helpers shared by every command: colour only on a terminal, errors on stderr, one line."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

FORMATS = ("text", "json", "markdown")

F = TypeVar("F", bound=Callable[..., Any])


def format_option(*choices: str, default: str = "text") -> Callable[[F], F]:
    """`--format` for a command whose output is data (default: text)."""
    names = choices or FORMATS
    option: Callable[[F], F] = click.option(
        "--format", "fmt", type=click.Choice(names), default=default, show_default=True,
        help="output format: " + ", ".join(names) + " (json is for scripts)",
    )
    return option


def use_colour(stream: Any = None) -> bool:
    stream = stream or sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)())


def echo_error(message: str) -> None:
    """One line on stderr: `dr: error: ...` (red on a terminal)."""
    prefix = click.style("dr: error:", fg="red", bold=True) if use_colour(sys.stderr) else "dr: error:"
    click.echo(f"{prefix} {message}", err=True)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def span(seconds: float | None) -> str:
    """A duration for people: "-" when unknown, seconds under 2 min, minutes under 2 h, then hours."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
