"""Fixtures of the agent's tests: certificates from a real CA, and Azurite (the Azure Storage emulator).

Azurite comes from npm (`.ci/setup.d/50-azurite.sh` installs it into .ci/cache/node_modules); the
fixture finds it there, through $AZURITE_BLOB, or on PATH, and runs it on loopback only, telemetry off.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "agent") not in sys.path:  # the agent installs on its own; tests also run from a checkout
    sys.path.insert(0, str(REPO / "agent"))

from dr_agent.contract import parse_stream  # noqa: E402
from dr_agent.pki import Identity, create_ca, register  # noqa: E402

# The emulator's well-known account (public, documented by Microsoft for Azurite).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
PASSPHRASE = "correct horse battery staple"


@dataclass(frozen=True)
class Pki:
    ca_dir: Path
    agent: Identity         # web01's agent
    process_server: Identity
    master_target: Identity
    rogue_agent: Identity  # a well-formed certificate from another CA
    _agents: dict[str, Identity] = field(default_factory=dict, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def agent_for(self, machine: str) -> Identity:
        """The agent identity of `machine`, registered under its name as a deployment registers it
        (an agent's certificate opens only its own machine's streams); issued once per name."""
        if machine == "web01":
            return self.agent
        with self._lock:
            if machine not in self._agents:
                self._agents[machine] = register(self.ca_dir, PASSPHRASE, name=machine, role="agent",
                                                 out=self.ca_dir.parent / f"agent-{machine}")
            return self._agents[machine]

    def agent_for_stream(self, stream: str) -> Identity:
        """The agent identity of the machine whose disk `stream` (`<machine>.<disk>`) is."""
        return self.agent_for(parse_stream(stream)[0])


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = create_ca(root / "ca", PASSPHRASE)
    rogue_ca = create_ca(root / "rogue-ca", "another passphrase")
    return Pki(
        ca,
        register(ca, PASSPHRASE, name="web01", role="agent", out=root / "agent"),
        register(ca, PASSPHRASE, name="ps01", role="process-server", out=root / "ps"),
        register(ca, PASSPHRASE, name="mt01", role="master-target", out=root / "mt"),
        register(rogue_ca, "another passphrase", name="web01", role="agent", out=root / "rogue"),
    )


def azurite_binary() -> str | None:
    candidates = [os.environ.get("AZURITE_BLOB", ""),
                  str(REPO / ".ci/cache/node_modules/.bin/azurite-blob"),
                  shutil.which("azurite-blob") or ""]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running Azurite blob service; yields its connection string."""
    binary = azurite_binary()
    if binary is None:
        pytest.skip("Azurite is not installed: run `bash .ci/setup.d/50-azurite.sh` (npm install azurite)")
    data = tmp_path_factory.mktemp("azurite")
    log = (data / "azurite.log").open("w+")
    proc = subprocess.Popen(
        [binary, "--blobHost", "127.0.0.1", "--blobPort", "0", "--location", str(data), "--loose",
         "--skipApiVersionCheck", "--disableTelemetry"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    port = None
    deadline = time.monotonic() + 60
    while port is None and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
        log.seek(0)
        m = re.search(r"listens on http://127\.0\.0\.1:(\d+)", log.read())
        port = int(m.group(1)) if m else None
    if port is None:
        proc.kill()
        log.seek(0)
        pytest.fail(f"Azurite did not start: {log.read()[-2000:]}")
    try:
        yield (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
               f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
