"""Real peers for push tests: OpenSSH's sshd on loopback (the discovery tests' fixture) and the
product's configuration server (`dr config-server start`) that the pushed agent registers with."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.discover.conftest import sshd  # noqa: F401 - the real sshd fixture, shared

PASSPHRASE = "push test vault passphrase"
SPEC = """\
estate: pushlab
support_profile: asr-2015
azure:
  subscription: 00000000-0000-0000-0000-000000000000
  region: northeurope
  resource_group: pushlab-dr
  connectivity: internet
  network: {vnet: pushlab-vnet, address_space: 10.61.0.0/16, subnet: recovery, subnet_prefix: 10.61.1.0/24}
  storage_redundancy: GRS
  quota: {vcpus: 20}
sites:
  - name: hq
    process_servers:
      - {name: ps01, address: 127.0.0.1, os: Windows Server 2012 R2}
machines:
  - name: web_01
    site: hq
    kind: physical
    address: 192.0.2.10
    os: CentOS 6.5
    vcpus: 2
    memory_gb: 4
    file_systems: [ext4]
    disks:
      # a device that is not there: the pushed agent starts, names it and exits (and is restarted)
      - {name: data_1, size_gb: 1, device: /nonexistent/web_01-data_1, mount_points: [/srv]}
protection_groups:
  - name: web
    members: [web_01]
"""


@dataclass(frozen=True)
class ConfigServer:
    url: str
    ca_file: Path
    spec: Path
    state: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def push_spec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = tmp_path_factory.mktemp("spec") / "dr.yaml"
    spec.write_text(SPEC)
    return spec


@pytest.fixture(scope="session")
def config_server(tmp_path_factory: pytest.TempPathFactory, push_spec: Path) -> Iterator[ConfigServer]:
    """`dr config-server start` on a loopback port, TLS from its vault CA."""
    root = tmp_path_factory.mktemp("cs")
    (root / "passphrase").write_text(PASSPHRASE + "\n")
    port = _free_port()
    state = root / "state.db"
    log = (root / "cs.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "dr", "config-server", "start", str(push_spec), "--listen",
                             f"127.0.0.1:{port}", "--state", str(state), "--passphrase-file", str(root / "passphrase")],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the configuration server did not start: {(root / 'cs.log').read_text()[-800:]}")
        time.sleep(0.2)
    from dr.server import certs
    from dr.server.settings import open_state

    ca = root / "vault-ca.pem"
    ca.write_text(certs.ca_pem(open_state(str(state))))
    try:
        yield ConfigServer(url=f"https://127.0.0.1:{port}", ca_file=ca, spec=push_spec, state=state)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        log.close()
