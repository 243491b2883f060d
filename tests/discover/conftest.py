"""Real peers for discovery tests: govmomi's vCenter simulator and OpenSSH's sshd on loopback ports."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.discover.support import BROKEN, PASSWORD, PASSWORD_ENV, REPLICABLE_OS, TOPOLOGY, USER, Sshd
from tests.vcsim.simulator import Vcsim, unavailable


@pytest.fixture(scope="session")
def vcsim() -> Iterator[Vcsim]:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    with Vcsim.start(*TOPOLOGY, "-username", USER, "-password", PASSWORD) as sim:
        yield sim


@pytest.fixture(scope="session")
def vsphere(vcsim: Vcsim) -> Iterator[Any]:
    """A pyvmomi ServiceInstance on the session's simulator, for tests to reconfigure VMs."""
    from pyVim.connect import Disconnect, SmartConnect

    si = SmartConnect(protocol="http", host=vcsim.host, port=vcsim.port, user=USER, pwd=PASSWORD)
    yield si
    Disconnect(si)


@pytest.fixture()
def password_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    return PASSWORD_ENV


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """Debian's sshd on 127.0.0.1 with its own host key; the client logs in with a generated key."""
    binary = shutil.which("sshd") or "/usr/sbin/sshd"
    if not Path(binary).exists() or shutil.which("ssh-keygen") is None:
        pytest.skip("openssh-server is not installed: run bash .ci/setup.d/30-vcsim.sh")
    root = tmp_path_factory.mktemp("sshd")
    root.chmod(0o700)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "host_key")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "client_key")], check=True)
    (root / "authorized_keys").write_text((root / "client_key.pub").read_text())
    (root / "authorized_keys").chmod(0o600)
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    port = _free_port()
    user = getpass.getuser()
    config = root / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root / 'host_key'}\nPidFile {root / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\nStrictModes no\nUsePAM no\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        f"PermitRootLogin prohibit-password\nAllowUsers {user}\nLogLevel ERROR\n"
    )
    host_public = (root / "host_key.pub").read_text().split()
    known_hosts = root / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_public[0]} {host_public[1]}\n")
    process = subprocess.Popen([binary, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 15
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                if sock.recv(4).startswith(b"SSH-"):
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            _, err = process.communicate()
            pytest.fail(f"sshd did not start: {err.strip()[:500]}")
        time.sleep(0.1)
    yield Sshd(port=port, user=user, key_file=root / "client_key", known_hosts=known_hosts)
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stderr is not None:
        process.stderr.close()


@pytest.fixture(scope="session")
def estate(vsphere: Any) -> dict[str, str]:
    """Reconfigure the simulator's VMs through the vSphere API; returns BROKEN (VM -> expected reason)."""
    from tests.vcsim import ops

    for index, name in enumerate(ops.vm_names(vsphere)):
        ops.set_guest(ops.find_vm(vsphere, name), guest_id=REPLICABLE_OS[0], full_name=REPLICABLE_OS[1],
                      ip=f"10.0.0.{10 + index}")
    ops.add_disks(ops.find_vm(vsphere, "DC0_H0_VM0"), 32)
    ops.set_firmware(ops.find_vm(vsphere, "DC0_H0_VM1"), "efi")
    ops.power_off(ops.find_vm(vsphere, "DC0_H0_VM2"))
    ops.add_disks(ops.find_vm(vsphere, "DC0_H0_VM3"), 1, size_gb=2048)
    ops.set_guest(ops.find_vm(vsphere, "DC0_H0_VM4"), guest_id=REPLICABLE_OS[0], full_name=REPLICABLE_OS[1],
                  tools="guestToolsNotRunning")
    ops.set_guest(ops.find_vm(vsphere, "DC0_H0_VM5"), guest_id="windows9Server64Guest",
                  full_name="Microsoft Windows Server 2016 (64-bit)")
    return BROKEN
