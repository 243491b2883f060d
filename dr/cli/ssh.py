"""The SSH login options, declared once for every command that logs in to a machine over SSH
(`dr discover physical`, `dr agent push`): the same names, defaults and help everywhere."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def ssh_login_options(command: F) -> F:
    """--user, --port, --key-file, --password-env, --known-hosts (the host key is always checked)."""
    options = [
        click.option("--user", default="root", show_default=True, help="the account to log in as"),
        click.option("--port", type=click.IntRange(1, 65535), default=22, show_default=True),
        click.option("--key-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="private key to log in with (default: ssh-agent and ~/.ssh keys)"),
        click.option("--password-env", metavar="VAR", help="environment variable holding the SSH password"),
        click.option("--known-hosts", type=click.Path(dir_okay=False, path_type=Path),
                     help="known_hosts file to check host keys against (default ~/.ssh/known_hosts)"),
    ]
    for option in reversed(options):
        command = option(command)
    return command
