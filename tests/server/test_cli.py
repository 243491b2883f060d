"""`dr config-server` and `dr status` as a user runs them: real processes on loopback."""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dr.server import certs
from dr.server.store import Store
from tests.server.conftest import PASSPHRASE, SHAREPOINT, dr, dr_env, free_port

REPO = Path(__file__).resolve().parents[2]
# The server process starts in about 2 s here (imports); allow for a loaded 2-core machine.
START_TIMEOUT_S = 60


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`dr config-server start` with TLS from the vault CA, on a loopback port."""
    state = tmp_path / "state.db"
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "dr", "config-server", "start", str(SHAREPOINT), "--listen", f"127.0.0.1:{port}",
         "--state", str(state), "--check-every", "1s"],
        cwd=REPO, env=dr_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    base = f"https://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "dr config-server did not start"
        try:
            httpx.get(base + "/openapi.json", verify=False, timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.2)
    try:
        yield base, state
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_the_server_serves_tls_from_the_vault_ca_and_dr_status_reads_its_state(running: tuple[str, Path]) -> None:
    base, state = running
    context = ssl.create_default_context(cadata=certs.ca_pem(Store.open(state)))
    with httpx.Client(base_url=base, verify=context) as client:
        assert client.get("/api/v1/status").status_code == 401
        agent = client.post("/api/v1/register", json={"passphrase": PASSPHRASE, "name": "agent-web01",
                                                      "role": "agent", "machine": "web01"}).json()
        beat = client.post("/api/v1/heartbeat/agent", headers={"Authorization": f"Bearer {agent['token']}"},
                           json={"power_state": "off", "disks": [{"stream": "web01.c", "rpo_seconds": 7}]})
        assert beat.status_code == 204

    # The alert loop (every 1 s here) opens machine_off for web01.
    deadline = time.monotonic() + 30
    while True:
        result = dr("status", str(SHAREPOINT), "--state", str(state), "--format", "json")
        assert result.returncode == 0, result.stderr
        view = json.loads(result.stdout)
        if any(a["condition"] == "machine_off" for a in view["alerts"]):
            break
        assert time.monotonic() < deadline, "the alert loop never raised machine_off"
        time.sleep(0.5)
    web01 = next(m for m in view["machines"] if m["name"] == "web01")
    # The reported 7 s, aged by the time since the heartbeat (the RPO grows between reports).
    assert web01["health"]["state"] == "Warning" and 7 <= web01["rpo_seconds"] < 7 + START_TIMEOUT_S
    text = dr("status", str(SHAREPOINT), "--state", str(state)).stdout
    assert text.startswith("estate contoso-sharepoint: Critical")
    assert "web01: web01 is powered off: nothing new replicates" in text
    assert "open alerts: 1" in text and "machine_off" in text


def test_tokens_and_login_links_need_the_vault_passphrase(running: tuple[str, Path]) -> None:
    base, state = running
    token = dr("config-server", "token", "--name", "oncall", "--state", str(state)).stdout.strip()
    context = ssl.create_default_context(cadata=certs.ca_pem(Store.open(state)))
    status = httpx.get(base + "/api/v1/status", headers={"Authorization": f"Bearer {token}"}, verify=context)
    assert status.status_code == 200 and status.json()["estate"] == "contoso-sharepoint"
    link = dr("config-server", "login-link", "--state", str(state), "--url", base).stdout.strip()
    assert link.startswith(base + "/login/")
    with httpx.Client(verify=context, follow_redirects=True) as browser:
        page = browser.get(link)
        assert page.status_code == 200 and '<table id="health">' in page.text
    wrong = dr("config-server", "token", "--state", str(state), DR_VAULT_PASSPHRASE="not it")
    assert wrong.returncode == 2 and wrong.stderr == (
        "dr: error: the vault passphrase is wrong: use the one the configuration server was started with\n")


def test_plain_http_is_for_loopback_only(tmp_path: Path) -> None:
    result = dr("config-server", "start", str(SHAREPOINT), "--listen", "0.0.0.0:8443", "--plain-http",
                "--state", str(tmp_path / "s.db"))
    assert result.returncode == 2
    assert result.stderr == ("dr: error: --plain-http serves tokens in clear text: allowed on loopback only, "
                             "not on 0.0.0.0\n")
    env = {k: v for k, v in dr_env().items() if k != "DR_VAULT_PASSPHRASE"}
    no_pass = subprocess.run([sys.executable, "-m", "dr", "config-server", "token", "--state",
                              str(tmp_path / "t.db")], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert no_pass.returncode == 2 and "DR_VAULT_PASSPHRASE" in no_pass.stderr
