"""Helpers of the control-loop tests: the configuration server as a user starts it
(`dr config-server start`), registration as a machine does it (`dr-agent register --server`), and
a small spec whose machine and disk names carry underscores. Nothing here stands in for a product
component."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import wait_for as shared_wait_for

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "agent"), str(REPO)]), "NO_COLOR": "1"}
PASSPHRASE = "control loop tests passphrase"
# The server process starts in about 2 s here (imports); allow for a loaded 2-core machine (seconds).
START_TIMEOUT_S = 60

SPEC = """\
estate: control-lab
support_profile: azure-2026
azure:
  subscription: 00000000-0000-0000-0000-000000000000
  region: northeurope
  resource_group: control-dr
  connectivity: vpn
  quota: {{vcpus: 20}}
  network:
    vnet: control-vnet
    address_space: 10.70.0.0/16
    subnet: recovery
    subnet_prefix: 10.70.1.0/24
sites:
  - name: lab
    process_servers:
      - {{name: ps01, address: 127.0.0.1, os: Windows Server 2019}}
    bandwidth_mbps: 100
machines:
{machines}
protection_groups:
  - name: db
    members: [{members}]
    policy: {{rpo_threshold: 15m, retention: 1d, multi_vm_consistency: true}}
recovery_plans:
  - name: all
    groups:
      - {{name: everything, machines: [{members}]}}
"""

MACHINE = """\
  - name: {name}
    site: lab
    kind: physical
    address: 127.0.0.1
    os: Ubuntu 22.04
    vcpus: 2
    memory_gb: 4
    file_systems: [ext4]
    disks:
{disks}
"""


def write_spec(root: Path, machines: dict[str, list[str]]) -> Path:
    """A spec with these machines (name -> disk names), one protection group and one plan."""
    text = SPEC.format(
        machines="".join(MACHINE.format(name=m, disks="".join(
            f"      - {{name: {d}, size_gb: 1, device: /dev/sd{chr(98 + i)}, mount_points: [/m{i}]}}\n"
            for i, d in enumerate(disks))) for m, disks in machines.items()),
        members=", ".join(machines))
    path = root / "dr.yaml"
    path.write_text(text)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dr(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dr", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**ENV, "DR_VAULT_PASSPHRASE": PASSPHRASE, **(env or {})})


class ConfigServerProcess:
    """`dr config-server start SPEC --listen 127.0.0.1:PORT --state STATE` (TLS from the vault CA)."""

    def __init__(self, spec: Path, state: Path, port: int, log: Path) -> None:
        self.spec, self.state, self.port, self.log = spec, state, port, log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dr", "config-server", "start", str(self.spec), "--listen",
                 f"127.0.0.1:{self.port}", "--state", str(self.state), "--check-every", "1s"],
                cwd=REPO, env={**ENV, "DR_VAULT_PASSPHRASE": PASSPHRASE}, stdout=log, stderr=log)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, "dr config-server did not start"
            try:
                httpx.get(self.url + "/openapi.json", verify=False, timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def operator(self) -> httpx.Client:
        """An API client with an operator token (`dr config-server token`), verifying the vault CA."""
        token = dr("config-server", "token", "--name", "tests", "--state", str(self.state))
        assert token.returncode == 0, token.stderr
        from dr.server import certs
        from dr.server.store import Store

        store = Store.open(self.state)
        try:
            ctx = ssl.create_default_context(cadata=certs.ca_pem(store))
        finally:
            store.close()
        return httpx.Client(base_url=self.url, verify=ctx, timeout=30,
                            headers={"Authorization": f"Bearer {token.stdout.strip()}"})


def register(server: str, name: str, role: str, out: Path, *extra: str,
             background: bool = False) -> Any:
    """`dr-agent register --server ...` as a machine runs it (the passphrase in DR_VAULT_KEY)."""
    argv = ["dr-agent", "register", "--server", server, "--name", name, "--role", role, "--out", str(out),
            "--passphrase-env", "DR_VAULT_KEY", "--address", "127.0.0.1", *extra]
    env = {**ENV, "DR_VAULT_KEY": PASSPHRASE}
    if background:
        return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done


def wait_for(what: str, check: Any, timeout_s: float) -> Any:
    """`check()` until it returns something true; its value. Fails naming `what` at the deadline."""
    return shared_wait_for(check, timeout_s, what)
