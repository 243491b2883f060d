"""The `dr` command. This module only wires commands together and turns errors into exit codes.

Each area keeps its commands in its own module here (`dr/cli/<area>.py`) exposing
`COMMANDS: list[click.Command]`; modules are found by name, so adding an area touches no other file.
A command module imports heavy libraries (pulumi, pyvmomi, the agent) inside the command function,
never at module level, so `dr --help` and `dr validate` stay fast and work without the extras.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from typing import Any

import click

from dr import __version__
from dr.errors import EXIT_INTERRUPTED, EXIT_UNREADABLE, DrError
from dr.output import echo_error


class _Root(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DrError as err:
            echo_error(str(err))
            ctx.exit(err.exit_code)
        except KeyboardInterrupt:
            echo_error("interrupted")
            ctx.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:
            ctx.exit(0)


@click.group(cls=_Root, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="dr")
def cli() -> None:
    """Declarative disaster recovery to Azure, as code.

    Describe the estate in dr.yaml, then: `dr validate dr.yaml` checks it against the support
    matrix, `dr plan dr.yaml` sizes it, `dr diff` shows what a change costs.

    Exit codes: 0 ok, 1 the spec or plan has errors, 2 unreadable input or usage error,
    3 (dr diff) the plan needs more vCPU quota than declared.
    """


def _register() -> None:
    package = sys.modules[__name__]
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for command in getattr(module, "COMMANDS", []):
            cli.add_command(command)


_register()


def main() -> None:
    try:
        cli.main(prog_name="dr")
    except DrError as err:  # raised while parsing, before a command runs
        echo_error(str(err))
        sys.exit(err.exit_code)
    except OSError as err:
        echo_error(f"{err.strerror or err}: {getattr(err, 'filename', '') or ''}".rstrip(": "))
        sys.exit(EXIT_UNREADABLE)
