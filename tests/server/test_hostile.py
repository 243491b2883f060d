"""Hostile requests against a configuration server started as a user starts it (`dr config-server start`,
TLS from its vault CA): non-finite and huge numbers in every numeric field, oversized and malformed
bodies, cross-origin forms, wrong-scope, expired and revoked tokens, 1,000 wrong passphrases. Every one
is refused, never with a 5xx; the dashboard and the alert loop keep working throughout; nothing the
server writes is readable by other users."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import signal
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from dr.server import certs
from dr.server.jobs import Jobs, NewStep
from dr.server.store import Store
from tests.server.conftest import PASSPHRASE, SHAREPOINT, dr, dr_env, free_port

REPO = Path(__file__).resolve().parents[2]
# The server process starts in about 2 s here (imports, the vault's scrypt); allow for a loaded machine.
START_TIMEOUT_S = 60
# An alert reaches the webhook within this long of its cause (the alert loop runs every second here).
ALERT_TIMEOUT_S = 30
# Client addresses on loopback: the attacker's, and everyone else's (Linux routes all of 127/8 to lo).
ATTACKER = "127.0.0.3"
BYSTANDER = "127.0.0.2"
# Non-finite and out-of-range JSON numbers, as raw JSON text (NaN and Infinity are what Python's own
# json module writes; the rest overflow a float, SQLite's integer, or Python's digit limit).
HOSTILE_NUMBERS = ["NaN", "Infinity", "-Infinity", "1e999", "-1", "1e308", "18446744073709551616", "9" * 5000]
# Growth of the server's resident memory allowed while it refuses oversized bodies (bytes; the bodies
# declared add up to 400 MB, none of which may be read).
RSS_GROWTH_MAX = 64 * 1024 * 1024


@dataclass
class Hooks:
    calls: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def kinds(self) -> list[tuple[str, str, str]]:
        with self.lock:
            return [(c["state"], c["kind"], c["subject"]) for c in self.calls]


@dataclass(frozen=True)
class Live:
    base: str
    state: Path
    tmpdir: Path
    pid: int
    context: ssl.SSLContext
    hooks: Hooks
    statuses: list[tuple[str, str, int]]

    def client(self, address: str = "127.0.0.1", **kwargs: Any) -> httpx.Client:
        def record(response: httpx.Response) -> None:
            self.statuses.append((response.request.method, response.request.url.path, response.status_code))

        return httpx.Client(base_url=self.base, verify=self.context, timeout=30,
                            transport=httpx.HTTPTransport(verify=self.context, local_address=address),
                            event_hooks={"response": [record]}, **kwargs)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    hooks = Hooks()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with hooks.lock:
                hooks.calls.append(json.loads(body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    spec = tmp_path / "dr.yaml"
    spec.write_text(SHAREPOINT.read_text().replace(
        "notifications:\n  email: [dr-team@contoso.com]",
        f"notifications:\n  webhook: http://127.0.0.1:{receiver.server_address[1]}/hook"))
    (tmp_path / "state").mkdir(mode=0o700)
    (tmp_path / "tmp").mkdir(mode=0o700)
    state = tmp_path / "state" / "state.db"
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "dr", "config-server", "start", str(spec), "--listen", f"127.0.0.1:{port}",
         "--state", str(state), "--check-every", "1s"],
        cwd=REPO, env=dr_env(TMPDIR=str(tmp_path / "tmp")), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
    context = ssl.create_default_context(cadata=certs.ca_pem(Store.open(state)))
    try:
        yield Live(base=base, state=state, tmpdir=tmp_path / "tmp", pid=process.pid, context=context, hooks=hooks,
                   statuses=[])
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        receiver.shutdown()
        receiver.server_close()


def _register(client: httpx.Client, name: str, role: str, machine: str | None = None) -> str:
    body: dict[str, Any] = {"passphrase": PASSPHRASE, "name": name, "role": role}
    if machine:
        body["machine"] = machine
    answer = client.post("/api/v1/register", json=body)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["token"])


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _numeric_paths(body: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every number in a body (bools are not numbers here), by its path."""
    if isinstance(body, dict):
        for key, value in body.items():
            yield from _numeric_paths(value, (*path, key))
    elif isinstance(body, list):
        for index, value in enumerate(body):
            yield from _numeric_paths(value, (*path, index))
    elif isinstance(body, (int, float)) and not isinstance(body, bool):
        yield path


MARK = "__HOSTILE__"


def _with(body: Any, path: tuple[Any, ...]) -> Any:
    changed = copy.deepcopy(body)
    node = changed
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = MARK
    return changed


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _raw(live: Live, request: bytes) -> bytes:
    """One request on a raw TLS socket (to lie about the body's length); the server's answer."""
    host, port = live.base.removeprefix("https://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock, \
            live.context.wrap_socket(sock, server_hostname=host) as tls:
        tls.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = tls.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


def _alert_arrives(live: Live, wanted: tuple[str, str, str]) -> None:
    deadline = time.monotonic() + ALERT_TIMEOUT_S
    while wanted not in live.hooks.kinds():
        assert time.monotonic() < deadline, f"the alert loop never sent {wanted}: {live.hooks.kinds()}"
        time.sleep(0.2)


@pytest.mark.slow
def test_hostile_requests_are_refused_and_the_server_keeps_working(live: Live) -> None:
    with live.client() as client:
        operator = _register(client, "ops", "operator")
        agent = _register(client, "agent-web01", "agent", "web01")
        other_agent = _register(client, "agent-web02", "agent", "web02")
        ps = _register(client, "ps01", "process_server")
        mt = _register(client, "mt01", "master_target")

        # ---- every numeric field of every body: valid as given, refused with any hostile number
        now = time.time()
        bodies: list[tuple[str, str, dict[str, Any]]] = [
            ("/api/v1/heartbeat/agent", agent, {"power_state": "on", "disks": [
                {"stream": "web01.c", "sync_done_bytes": 10, "sync_total_bytes": 20, "sync_rate_bytes_s": 1.5,
                 "rpo_seconds": 5, "backlog_bytes": 3}]}),
            ("/api/v1/heartbeat/process-server", ps, {"cache_free_fraction": 0.5, "cache_bytes": 1,
                                                      "cache_capacity_bytes": 2, "backlog_bytes": {"web01.c": 7}}),
            ("/api/v1/heartbeat/process-server", ps, {"cache_free_fraction": 0.5, "backlog_bytes": 7}),
            ("/api/v1/heartbeat/master-target", mt, {"replicas": 1, "receiving": 1, "points": 1}),
            ("/api/v1/catalog", mt, {"streams": [{"stream": "web01.c", "size": 1 << 20, "rpo_seconds": 5,
                                                  "location": {"kind": "file", "path": "/r/web01.c"},
                                                  "points": [{"point_id": "p1", "time": now - 30, "kind": "crash"}]}]}),
        ]
        cases = 0
        for path, token, body in bodies:
            good = client.post(path, headers=_auth(token), json=body)
            assert good.status_code == 204, (path, good.text)
            for where in _numeric_paths(body):
                for number in HOSTILE_NUMBERS:
                    text = json.dumps(_with(body, where)).replace(f'"{MARK}"', number)
                    answer = client.post(path, headers={**_auth(token), "Content-Type": "application/json"},
                                         content=text)
                    assert answer.status_code in (400, 422), (path, where, number[:20], answer.status_code)
                    cases += 1
        assert cases > 100
        # Bounded lists and strings, malformed and deeply nested JSON.
        many = {"disks": [{"stream": f"web01.d{i}"} for i in range(65)]}
        assert client.post("/api/v1/heartbeat/agent", headers=_auth(agent), json=many).status_code == 422
        long = {"disks": [{"stream": "web01.c", "problem": "x" * 1001}]}
        assert client.post("/api/v1/heartbeat/agent", headers=_auth(agent), json=long).status_code == 422
        groups = {"cache_free_fraction": 0.5, "groups": {f"g{i}": True for i in range(257)}}
        assert client.post("/api/v1/heartbeat/process-server", headers=_auth(ps), json=groups).status_code == 422
        for text in ("{", "[" * 30_000 + "]" * 30_000, '{"power_state": "on", "disks": ' + "[" * 20_000):
            answer = client.post("/api/v1/heartbeat/agent", content=text,
                                 headers={**_auth(agent), "Content-Type": "application/json"})
            assert answer.status_code in (400, 413, 422), answer.status_code
        for query in ("after=-1", "limit=0", "limit=100000", f"after={2**70}", "after=NaN"):
            assert client.get(f"/api/v1/events?{query}", headers=_auth(operator)).status_code == 422, query
        assert client.post(f"/api/v1/jobs/x/steps/{2**70}/confirm", headers=_auth(operator)).status_code == 422

        # ---- oversized bodies: refused with 413 by their declared length, before any byte is read
        before = _rss(live.pid)
        declared = 50 * 1024 * 1024
        request = (f"POST /api/v1/heartbeat/agent HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {agent}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n").encode()
        answers: list[bytes] = []
        threads = [threading.Thread(target=lambda: answers.append(_raw(live, request + b"{" * 65536)))
                   for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert len(answers) == 8 and all(a.startswith(b"HTTP/1.1 413") for a in answers), answers[:1]
        anonymous = _raw(live, (f"POST /api/v1/catalog HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                                f"application/json\r\nContent-Length: {declared}\r\n\r\n").encode())
        assert anonymous.startswith(b"HTTP/1.1 401"), anonymous[:80]
        # Streamed without a length: counted as it arrives, cut off at the limit.
        streamed = client.post("/api/v1/register", content=iter([b"{" + b" " * 65536] * 32),
                               headers={"Content-Type": "application/json"})
        assert streamed.status_code == 413
        big = client.post("/api/v1/heartbeat/agent", headers=_auth(agent),
                          content=b'{"disks": [' + b'{"stream": "web01.c"},' * 150_000 + b"{}]}")
        assert big.status_code == 413
        assert _rss(live.pid) - before < RSS_GROWTH_MAX

        # ---- wrong scope
        assert client.get("/api/v1/status", headers=_auth(agent)).status_code == 403
        assert client.get("/api/v1/events", headers=_auth(ps)).status_code == 403
        assert client.get("/api/v1/jobs", headers=_auth(mt)).status_code == 403
        assert client.get("/", headers=_auth(agent)).status_code == 403
        assert client.get("/api/v1/machines/web02/recovery-points", headers=_auth(agent)).status_code == 403
        assert client.get("/api/v1/machines/web01/recovery-points", headers=_auth(agent)).status_code == 200
        assert client.get("/api/v1/machines/web01/recovery-points", headers=_auth(ps)).status_code == 403
        assert client.post("/api/v1/catalog", headers=_auth(agent), json={"streams": []}).status_code == 403
        assert client.post("/api/v1/heartbeat/process-server", headers=_auth(agent),
                           json={"cache_free_fraction": 0.5}).status_code == 403
        assert client.post("/api/v1/login-links", headers=_auth(agent)).status_code == 403
        # An agent writes only its own machine: another machine's disk in its heartbeat changes nothing.
        assert client.post("/api/v1/heartbeat/agent", headers=_auth(agent),
                           json={"disks": [{"stream": "web02.c", "rpo_seconds": 1}]}).status_code == 204
        web02 = next(m for m in client.get("/api/v1/status", headers=_auth(operator)).json()["machines"]
                     if m["name"] == "web02")
        assert web02["disks"][0]["rpo_seconds"] is None
        # Made-up stream names (1,280 of them) are remembered at most 64 times per component.
        for batch in range(20):
            made_up = {"disks": [{"stream": f"ghost{batch}x{i}.c"} for i in range(64)]}
            assert client.post("/api/v1/heartbeat/agent", headers=_auth(agent), json=made_up).status_code == 204
        ghosts = Store.open(live.state).query("SELECT key FROM meta WHERE key LIKE 'unknown_stream:agent-web01:%'")
        assert 0 < len(ghosts) <= 64
        # A name keeps its role.
        hijack = client.post("/api/v1/register", json={"passphrase": PASSPHRASE, "name": "agent-web01",
                                                        "role": "process_server"})
        assert hijack.status_code == 409 and "keeps its role" in hijack.json()["detail"]

        # ---- expired, rotated, revoked and logged-out tokens
        store = Store.open(live.state)
        store.execute("UPDATE tokens SET expires = ? WHERE token_hash = ?",
                      (time.time() - 1, hashlib.sha256(other_agent.encode()).hexdigest()))
        expired = client.post("/api/v1/heartbeat/agent", headers=_auth(other_agent), json={})
        assert expired.status_code == 401 and "expired" in expired.json()["detail"]
        again = _register(client, "agent-web02", "agent", "web02")
        assert client.post("/api/v1/heartbeat/agent", headers=_auth(again), json={}).status_code == 204
        rotated = _register(client, "agent-web02", "agent", "web02")
        assert client.post("/api/v1/heartbeat/agent", headers=_auth(again), json={}).status_code == 401
        assert client.post("/api/v1/heartbeat/agent", headers=_auth(rotated), json={}).status_code == 204
        revoked = dr("config-server", "revoke", "agent-web02", "--state", str(live.state))
        assert revoked.returncode == 0 and "1 token(s) revoked" in revoked.stdout, revoked.stderr
        assert client.post("/api/v1/heartbeat/agent", headers=_auth(rotated), json={}).status_code == 401
        throwaway = _register(client, "oncall", "operator")
        assert client.post("/logout", headers=_auth(throwaway)).status_code == 204
        assert client.get("/api/v1/status", headers=_auth(throwaway)).status_code == 401

    # ---- a browser session: cross-origin forms and forms without their CSRF token are refused
    jobs = Jobs(store=Store.open(live.state))
    job = jobs.create(kind="test-failover", plan="sharepoint", spec=str(SHAREPOINT), options={"type": "test"},
                      steps=[NewStep(kind="manual", title="check the home page"),
                             NewStep(kind="manual", title="check search")])
    with live.client() as api:
        link = api.post("/api/v1/login-links", headers=_auth(operator)).json()["path"]
    with live.client(follow_redirects=True) as browser:
        page = browser.get(link)
        assert page.status_code == 200 and '<table id="health">' in page.text
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
        assert csrf is not None
        foreign = {"Origin": live.base.replace("127.0.0.1", "localhost")}
        other_port = {"Origin": live.base.rsplit(":", 1)[0] + ":1"}
        same = {"Origin": live.base}
        confirm = f"/jobs/{job}/steps/1/confirm"
        for headers in (foreign, other_port, {"Referer": "https://evil.example/page"}):
            assert browser.post(confirm, headers=headers, data={"csrf": csrf.group(1)}).status_code == 403
            assert browser.post("/api/v1/login-links", headers=headers).status_code == 403
        assert browser.post(confirm, headers=same, data={"csrf": "0" * 64}).status_code == 403
        assert browser.post(confirm, headers=same).status_code == 403
        assert browser.post(confirm, data={"csrf": csrf.group(1)}).status_code == 403  # says nowhere where from
        assert jobs.confirmed_by(job, 1) is None
        job_page = browser.get(f"/jobs/{job}")
        assert f'action="/jobs/{job}/steps/1/confirm"' in job_page.text
        done = browser.post(confirm, headers=same, data={"csrf": csrf.group(1)})
        assert done.status_code == 200 and jobs.confirmed_by(job, 1) == "ops-browser"
        # Logging out ends the session at once.
        assert browser.post("/logout", headers=same, data={"csrf": csrf.group(1)}).status_code == 200
        assert browser.get("/").status_code == 401

    # ---- 1,000 wrong passphrases from one address: a doubling wait, no hash spent on most of them
    waits: list[int] = []
    with live.client(ATTACKER) as attacker, live.client(BYSTANDER) as bystander:
        for n in range(1000):
            answer = attacker.post("/api/v1/register", json={"passphrase": f"guess {n}", "name": "intruder",
                                                              "role": "operator"})
            assert answer.status_code in (401, 429), answer.status_code
            if answer.status_code == 429:
                waits.append(int(answer.headers["Retry-After"]))
            if n == 500:  # meanwhile everyone else is served as usual
                assert _register(bystander, "ops2", "operator")
                assert bystander.get("/api/v1/status", headers=_auth(operator)).status_code == 200
        assert len(waits) >= 990 and waits == sorted(waits) and waits[0] <= 2 and waits[-1] >= 600
        right = attacker.post("/api/v1/register", json={"passphrase": PASSPHRASE, "name": "intruder",
                                                         "role": "operator"})
        assert right.status_code == 429, "the throttled address got a passphrase check"

    # ---- the dashboard and the alert loop kept working throughout
    with live.client() as client:
        assert client.get("/api/v1/status", headers=_auth(operator)).status_code == 200
        events = client.get("/api/v1/events?limit=1000", headers=_auth(operator)).json()
        refused = [e for e in events if e["kind"] == "registration_refused" and e["subject"] == ATTACKER]
        assert 1 <= len(refused) <= 3, "refusals are aggregated, not one row each"
        assert not [e for e in events if e["kind"] == "alert_loop_error"]
        assert client.post("/api/v1/heartbeat/agent", headers=_auth(agent),
                           json={"power_state": "off", "disks": [{"stream": "web01.c", "rpo_seconds": 5}]}
                           ).status_code == 204
    _alert_arrives(live, ("raised", "machine_off", "web01"))
    with live.client() as client:
        link = client.post("/api/v1/login-links", headers=_auth(operator)).json()["path"]
    with live.client(follow_redirects=True) as browser:
        page = browser.get(link)
        assert page.status_code == 200 and 'data-machine="web01"' in page.text and "machine_off" in page.text
    assert not [s for s in live.statuses if s[2] >= 500], [s for s in live.statuses if s[2] >= 500][:5]


def test_nothing_the_server_writes_is_readable_by_others(live: Live, tmp_path: Path) -> None:
    written = [p for root in (live.state.parent, live.tmpdir) for p in root.rglob("*")]
    assert any(p.name == "state.db" for p in written) and any(p.name == "server.key" for p in written)
    assert any(p.name == "server.pem" for p in written)
    for path in written:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} is mode {mode:04o}"
    # The vault CA's key is encrypted with the vault passphrase.
    stored = Store.open(live.state).get_meta("ca_key") or ""
    assert "BEGIN ENCRYPTED PRIVATE KEY" in stored and "BEGIN PRIVATE KEY" not in stored


def test_a_store_or_key_others_can_read_is_refused_at_start(tmp_path: Path) -> None:
    state = tmp_path / "open.db"
    Store.open(state)
    state.chmod(0o644)
    refused = dr("config-server", "start", str(SHAREPOINT), "--listen", f"127.0.0.1:{free_port()}",
                 "--state", str(state))
    assert refused.returncode != 0 and len(refused.stderr.splitlines()) == 1
    assert f"the state store {state} is open to other users (mode 0644): run `chmod 600 {state}`" in refused.stderr
    key, cert = tmp_path / "tls.key", tmp_path / "tls.pem"
    key.write_text("not a key\n")
    key.chmod(0o640)
    cert.write_text("not a cert\n")
    state.chmod(0o600)
    refused = dr("config-server", "start", str(SHAREPOINT), "--listen", f"127.0.0.1:{free_port()}",
                 "--state", str(state), "--tls-cert", str(cert), "--tls-key", str(key))
    assert refused.returncode != 0 and f"run `chmod 600 {key}`" in refused.stderr
    assert "Traceback" not in refused.stderr
