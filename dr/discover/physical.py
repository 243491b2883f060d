"""Physical (and any Linux) server discovery by address: read-only commands over SSH (paramiko).

The commands and their parsers are the agent's (`dr_agent.facts`): a server discovered here and the
same server's agent registering later report identical facts. Nothing is written on the server.
The host key is checked against the user's known_hosts unless `--accept-new-host-key` (trust on first
use) is given; a password is read from an environment variable, never from the command line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dr.discover.errors import (
    BadCredentials,
    CertificateUntrusted,
    SourceError,
    SourceTimeout,
    SourceUnreachable,
)
from dr.errors import MissingExtra
from dr.model import Disk, Machine

GIB = 1024**3  # bytes per GB as the spec counts sizes
MARK = "@@dr-fact@@ "  # separates the outputs of the fact commands in one SSH exec


@dataclass(frozen=True)
class SshTarget:
    address: str
    user: str = "root"
    port: int = 22
    key_file: Path | None = None
    password: str | None = field(default=None, repr=False)
    known_hosts: Path | None = None        # default: ~/.ssh/known_hosts
    accept_new_host_key: bool = False
    timeout: float = 30.0                   # seconds for connect, authentication and each command

    @property
    def where(self) -> str:
        return f"{self.user}@{self.address}:{self.port}"


def _paramiko() -> Any:
    try:
        import paramiko
    except ImportError:
        raise MissingExtra("dr discover physical needs the 'vmware' extra: pip install 'dr-as-code[vmware]'") from None
    return paramiko


def connect(target: SshTarget) -> Any:
    """A paramiko SSHClient logged in to `target`, its host key checked against known_hosts (unless
    `accept_new_host_key`); every failure one SourceError line naming the fix. The caller closes it."""
    paramiko = _paramiko()
    client = paramiko.SSHClient()
    known = target.known_hosts or Path.home() / ".ssh" / "known_hosts"
    if known.exists():
        try:
            client.load_host_keys(str(known))
        except (OSError, UnicodeDecodeError, paramiko.SSHException) as err:
            raise CertificateUntrusted(f"{known}: not a readable known_hosts file ({type(err).__name__}); name "
                                       "the file `ssh` keeps host keys in (--known-hosts)") from None
    client.set_missing_host_key_policy(
        paramiko.AutoAddPolicy() if target.accept_new_host_key else paramiko.RejectPolicy()
    )
    try:
        client.connect(
            target.address, port=target.port, username=target.user, password=target.password,
            key_filename=str(target.key_file) if target.key_file else None,
            timeout=target.timeout, banner_timeout=target.timeout, auth_timeout=target.timeout,
            allow_agent=target.key_file is None and target.password is None,
            look_for_keys=target.key_file is None and target.password is None,
        )
    except paramiko.BadHostKeyException:
        raise CertificateUntrusted(
            f"{target.where}: the host key differs from the one in {known}; if the server was reinstalled, "
            "remove its old line from known_hosts"
        ) from None
    except paramiko.SSHException as err:
        if "not found in known_hosts" in str(err):
            raise CertificateUntrusted(
                f"{target.where}: the host key is not in {known}; connect once with ssh to check and record "
                "it, or pass --accept-new-host-key"
            ) from None
        if isinstance(err, paramiko.AuthenticationException):
            raise BadCredentials(
                f"{target.where}: authentication refused for user {target.user!r}; check --user and "
                "--key-file or the variable named by --password-env"
            ) from None
        raise SourceError(f"{target.where}: SSH failed ({str(err).splitlines()[0][:200]})") from None
    except TimeoutError:
        raise SourceTimeout(f"{target.where}: no answer within {target.timeout:g} s; check the address and "
                            "firewall, or raise --timeout") from None
    except OSError as err:
        raise SourceUnreachable(f"{target.where}: cannot connect ({err.strerror or err}); check the address, "
                                "the port and that sshd is running") from None
    return client


def collect(target: SshTarget) -> Any:
    """Run the read-only fact commands on `target`; return `dr_agent.facts.LinuxFacts`."""
    try:
        from dr_agent.facts import COMMANDS, FactError, facts_from_outputs
    except ImportError:
        raise MissingExtra("dr discover physical needs the agent package's fact parsers: pip install ./agent "
                           "(or pip install dr-agent)") from None

    client = connect(target)
    # One exec channel for every command (one round trip instead of nine), each output between markers.
    script = "; ".join(f"echo '{MARK}{name}'; {command}; echo \"{MARK}status $?\""
                       for name, command in COMMANDS.items())
    try:
        try:
            _, stdout, stderr = client.exec_command(script, timeout=target.timeout)
            text = stdout.read().decode("utf-8", "replace")
            stdout.channel.recv_exit_status()
            errors = stderr.read().decode("utf-8", "replace").strip().splitlines()
        except TimeoutError:
            raise SourceTimeout(
                f"{target.where}: the fact commands did not finish within {target.timeout:g} s") from None
    finally:
        client.close()
    outputs = _split(text)
    for name, command in COMMANDS.items():
        if name not in outputs:
            raise SourceError(f"{target.where}: `{command}` printed nothing; is this a Linux server?")
        status = outputs[name][1]
        if status != 0:
            raise SourceError(f"{target.where}: `{command}` failed (exit {status}: "
                              f"{errors[0][:160] if errors else 'no message'}); the server needs util-linux "
                              "2.27+ (lsblk -J, findmnt -J) and iproute2 4.14+ (ip -j)")
    try:
        return facts_from_outputs({name: body for name, (body, _) in outputs.items()})
    except FactError as err:
        raise SourceError(f"{target.where}: {err}") from None


def _split(text: str) -> dict[str, tuple[str, int]]:
    """The combined output -> {fact name: (stdout, exit status)}."""
    out: dict[str, tuple[str, int]] = {}
    name: str | None = None
    lines: list[str] = []
    for line in text.splitlines(keepends=True):
        if line.startswith(MARK):
            tag = line[len(MARK):].strip()
            if tag.startswith("status ") and name is not None:
                status = int(tag.split()[1]) if tag.split()[1].isdigit() else -1
                out[name] = ("".join(lines), status)
                name, lines = None, []
            else:
                name, lines = tag, []
        elif name is not None:
            lines.append(line)
    return out


def _disk_name(device_name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-") or "disk"


def machine_from_facts(facts: Any, *, name: str, site: str, address: str) -> Machine:
    """Linux facts -> a `Machine` of kind physical (the verdict is added by the inventory)."""
    disks = []
    file_systems: list[str] = []
    for disk in facts.disks:
        mounts = facts.mounts_on(disk)
        fs = sorted({m.fstype for m in mounts})
        for f in fs:
            if f not in file_systems:
                file_systems.append(f)
        disks.append(Disk(
            name=_disk_name(disk.name),
            size_gb=max(round(disk.size_bytes / GIB, 3), 0.001),
            device=disk.path,
            label=disk.model,
            mount_points=sorted({m.target for m in mounts}),
            file_system=fs[0] if len(fs) == 1 else None,
        ))
    if not disks:
        raise SourceError(f"{address}: lsblk lists no disk with data; is this a container rather than a server?")
    arch = {"x86_64": "x86_64", "amd64": "x86_64", "i686": "x86", "i386": "x86"}.get(facts.arch, facts.arch)
    return Machine(
        name=name,
        site=site,
        kind="physical",
        os=facts.os.display,
        arch=arch,
        vcpus=max(facts.cpus, 1),
        memory_gb=max(round(facts.memory_bytes / GIB, 3), 0.001),
        nics=max(len(facts.nics), 1),
        disks=disks,
        address=address,
        firmware=facts.firmware,
        file_systems=file_systems,
        volume_manager=facts.volume_manager,
        multipath=facts.multipath,
    )
