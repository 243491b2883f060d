"""`dr agent push`: install, register and start the agent on source machines over SSH (dr/push.py)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from dr.cli.ssh import ssh_login_options
from dr.errors import EXIT_INVALID, SecretUnavailable, UsageError
from dr.output import echo_json, format_option

# The vault passphrase's variable, as the configuration server reads it (dr/server/settings.py).
PASSPHRASE_ENV = "DR_VAULT_PASSPHRASE"


def _pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    out = {}
    for value in values:
        name, sep, host = value.partition("=")
        if not sep or not name or not host:
            raise UsageError(f"{option} {value!r}: expected NAME=VALUE, e.g. {option} web01=10.0.0.21")
        out[name] = host
    return out


@click.group("agent")
def agent() -> None:
    """The agent on source machines."""


@agent.command("push")
@click.argument("machines", nargs=-1, required=True)
@click.option("--spec", required=True, type=click.Path(path_type=Path, dir_okay=False), help="the estate's dr.yaml")
@click.option("--configs", type=click.Path(path_type=Path, file_okay=False),
              help="the output of `dr replica configs` (default: rendered from the spec now)")
@click.option("--wheel", type=click.Path(exists=True, path_type=Path),
              help="the agent's wheel, or a directory of wheels (default: built from ./agent)")
@click.option("--root", default="/", show_default=True,
              help="the machines' Layout root (a lab or test machine's own directory)")
@click.option("--address", "addresses", multiple=True, metavar="NAME=HOST",
              help="where to reach a machine (default: its address in the spec)")
@ssh_login_options
@click.option("--sudo", is_flag=True, help="run the installation through `sudo -n` (a non-root --user)")
@click.option("--server", help="the configuration server (default: https://<the plan's first one>:8443)")
@click.option("--ca-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="the vault CA (PEM) the machine verifies the configuration server with when it registers")
@click.option("--passphrase-env", default=PASSPHRASE_ENV, show_default=True, metavar="VAR",
              help="environment variable holding the vault registration passphrase")
@click.option("--env", "env_names", multiple=True, metavar="VAR",
              help="copy this variable's value into the machine's env file (repeatable)")
@click.option("--python", default="python3", show_default=True, help="the machine's Python (3.11+)")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="seconds for the SSH connection and login")
@format_option("text", "json")
def push_cmd(machines: tuple[str, ...], spec: Path, configs: Path | None, wheel: Path | None, root: str,
             addresses: tuple[str, ...], user: str, port: int, key_file: Path | None, password_env: str | None,
             known_hosts: Path | None, sudo: bool, server: str | None, ca_file: Path | None, passphrase_env: str,
             env_names: tuple[str, ...], python: str, timeout: float, fmt: str) -> None:
    """Install the agent on MACHINE... over SSH, register it and start it; one line per machine.

    Copies the agent's wheel and its dependencies' (the machine needs no package index), the
    machine's rendered agent.toml and unit; installs into /opt/dr-agent; registers with the
    configuration server; starts it with systemd, or `dr-agent supervise` where there is none.
    Pushing again changes only what differs: "unchanged" when nothing does. Exit 1 when a machine failed.

    \b
    Example:
      dr replica configs dr.yaml --out build/configs
      DR_VAULT_PASSPHRASE=... dr agent push web01 db01 --spec dr.yaml --configs build/configs \\
          --key-file ~/.ssh/dr_ed25519 --known-hosts ~/.ssh/known_hosts
    """
    from dataclasses import replace

    from dr.discover.physical import SshTarget
    from dr.push import PushOptions, bundles, push, wheelhouse

    password = None
    if password_env is not None:
        password = os.environ.get(password_env)
        if not password:
            raise SecretUnavailable(f"--password-env {password_env}: the variable is not set; export it first")
    env = {}
    for name in env_names:
        if name not in os.environ:
            raise SecretUnavailable(f"--env {name}: the variable is not set here; export it first")
        env[name] = os.environ[name]
    found, url = bundles(spec, machines, configs=configs, root=root, server=server,
                         addresses=_pairs(addresses, "--address"), env=env)
    house = wheelhouse(wheel)
    base = PushOptions(ssh=SshTarget(address="", user=user, port=port, key_file=key_file, password=password,
                                     known_hosts=known_hosts, timeout=timeout),
                       root=root, server=url, passphrase=os.environ.get(passphrase_env, ""), ca_file=ca_file,
                       python=python, sudo=sudo)
    results = push(found, house, lambda b: replace(base, ssh=replace(base.ssh, address=b.address)))
    if fmt == "json":
        echo_json([r.as_dict() for r in results])
    else:
        for r in results:
            click.echo(r.line)
    if any(r.status == "failed" for r in results):
        raise click.exceptions.Exit(EXIT_INVALID)


COMMANDS: list[click.Command] = [agent]
