"""The API: authentication, registration, heartbeats driving health, the catalog, roles, OpenAPI."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient

from dr.server.app import create_app
from dr.server.service import ConfigServer
from tests.server.conftest import PASSPHRASE, Clock


@pytest.fixture
def client(server: ConfigServer) -> TestClient:
    return TestClient(create_app(server))


def register(client: TestClient, name: str, role: str, **extra: Any) -> dict[str, Any]:
    answer = client.post("/api/v1/register", json={"passphrase": PASSPHRASE, "name": name, "role": role, **extra})
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def machine(client: TestClient, token: str, name: str) -> dict[str, Any]:
    status = client.get("/api/v1/status", headers=bearer(token)).json()
    return next(m for m in status["machines"] if m["name"] == name)


def test_unauthenticated_calls_are_refused(client: TestClient) -> None:
    for method, path in [("get", "/api/v1/status"), ("get", "/api/v1/events"), ("get", "/api/v1/jobs"),
                         ("post", "/api/v1/heartbeat/agent"), ("post", "/api/v1/catalog"),
                         ("post", "/api/v1/login-links"), ("post", "/api/v1/jobs/x/steps/1/confirm")]:
        answer = client.request(method, path, json={})
        assert answer.status_code == 401, (path, answer.text)
        assert "token" in answer.json()["detail"]
        assert answer.headers["www-authenticate"] == "Bearer"
    forged = client.get("/api/v1/status", headers=bearer("not-a-token"))
    assert forged.status_code == 401 and "register again" in forged.json()["detail"]
    page = client.get("/", cookies={"dr_token": "forged"})
    assert page.status_code == 401 and "login-link" in page.text


def test_openapi_is_published(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert {"/api/v1/register", "/api/v1/status", "/api/v1/catalog",
            "/api/v1/jobs/{job_id}/steps/{idx}/confirm"} <= set(schema["paths"])
    assert "RegisterRequest" in schema["components"]["schemas"]


def test_registration_needs_the_vault_passphrase_and_issues_a_certificate(client: TestClient) -> None:
    wrong = client.post("/api/v1/register", json={"passphrase": "guess", "name": "ps01", "role": "process_server"})
    assert wrong.status_code == 401 and "passphrase is wrong" in wrong.json()["detail"]
    unknown = client.post("/api/v1/register", json={"passphrase": PASSPHRASE, "name": "a", "role": "agent",
                                                     "machine": "nosuch"})
    assert unknown.status_code == 404 and "not in the spec" in unknown.json()["detail"]

    answer = register(client, "ps01", "process_server", address="10.0.0.20", site="hq")
    cert = x509.load_pem_x509_certificate(answer["certificate_pem"].encode())
    ca = x509.load_pem_x509_certificate(answer["ca_pem"].encode())
    cert.verify_directly_issued_by(ca)
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "ps01"
    assert answer["private_key_pem"].startswith("-----BEGIN PRIVATE KEY")

    # With a CSR the server signs the caller's key and returns no key.
    key = ec.generate_private_key(ec.SECP256R1())
    from cryptography.hazmat.primitives import hashes, serialization

    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "mt01")]))
           .sign(key, hashes.SHA256()))
    answer = register(client, "mt01", "master_target",
                      csr_pem=csr.public_bytes(serialization.Encoding.PEM).decode())
    assert answer["private_key_pem"] is None
    signed = x509.load_pem_x509_certificate(answer["certificate_pem"].encode())
    assert signed.public_key() == key.public_key()
    signed.verify_directly_issued_by(ca)


def test_heartbeats_drive_health(client: TestClient, clock: Clock) -> None:
    operator = register(client, "ops", "operator")["token"]
    agent = register(client, "agent-dc01", "agent", machine="dc01")["token"]
    ps = register(client, "ps01", "process_server", site="hq")["token"]
    mt = register(client, "mt01", "master_target")["token"]

    dc01 = machine(client, operator, "dc01")
    assert dc01["health"]["state"] == "Critical"
    assert any("never sent a heartbeat" in r for r in dc01["health"]["reasons"])

    beat = client.post("/api/v1/heartbeat/agent", headers=bearer(agent),
                       json={"power_state": "on", "disks": [{"stream": "dc01.c", "rpo_seconds": 30}]})
    assert beat.status_code == 204, beat.text
    dc01 = machine(client, operator, "dc01")
    assert dc01["health"] == {"state": "Healthy", "reasons": []}
    assert dc01["rpo_seconds"] == 30

    # RPO over the 15 min threshold: Warning; over twice: Critical.
    client.post("/api/v1/heartbeat/agent", headers=bearer(agent),
                json={"disks": [{"stream": "dc01.c", "rpo_seconds": 16 * 60}]})
    assert machine(client, operator, "dc01")["health"]["state"] == "Warning"
    client.post("/api/v1/heartbeat/agent", headers=bearer(agent),
                json={"disks": [{"stream": "dc01.c", "rpo_seconds": 31 * 60}]})
    assert machine(client, operator, "dc01")["health"]["state"] == "Critical"
    client.post("/api/v1/heartbeat/agent", headers=bearer(agent),
                json={"disks": [{"stream": "dc01.c", "rpo_seconds": 5}]})
    assert machine(client, operator, "dc01")["health"]["state"] == "Healthy"

    # The heartbeat timeout (300 s in this fixture) passes: Critical, with the reason.
    clock.advance(301)
    dc01 = machine(client, operator, "dc01")
    assert dc01["health"]["state"] == "Critical"
    assert any("no heartbeat from the agent of dc01" in r for r in dc01["health"]["reasons"])

    # Process server cache: 40 % free Healthy, 28 % Warning, 20 % Critical (ASR: 30 % / 25 %).
    def ps_state(free: float) -> str:
        assert client.post("/api/v1/heartbeat/process-server", headers=bearer(ps),
                           json={"cache_free_fraction": free}).status_code == 204
        comps = client.get("/api/v1/status", headers=bearer(operator)).json()["components"]
        return str(next(c for c in comps if c["name"] == "ps01")["health"]["state"])

    assert [ps_state(0.4), ps_state(0.28), ps_state(0.2)] == ["Healthy", "Warning", "Critical"]

    # A heartbeat of the wrong kind is refused.
    wrong = client.post("/api/v1/heartbeat/process-server", headers=bearer(agent), json={"cache_free_fraction": 1})
    assert wrong.status_code == 403
    assert client.post("/api/v1/heartbeat/master-target", headers=bearer(mt), json={}).status_code == 204


def test_master_targets_report_rpo_and_recovery_points(client: TestClient, clock: Clock,
                                                        server: ConfigServer) -> None:
    operator = register(client, "ops", "operator")["token"]
    agent = register(client, "agent-sql01", "agent", machine="sql01")["token"]
    mt = register(client, "mt01", "master_target")["token"]
    t = clock.now
    report = {"streams": [
        {"stream": f"sql01.{d}", "size": 1 << 20, "rpo_seconds": 12,
         "location": {"kind": "pageblob", "account": "contosodr", "container": "replicas", "blob": f"sql01.{d}.vhd"},
         "points": [{"point_id": "p1", "time": t - 600, "kind": "app", "group_id": "g1", "snapshot": "s1"},
                    {"point_id": "p2", "time": t - 60, "kind": "crash", "group_id": "g2", "snapshot": "s2"}]}
        for d in ("c", "data", "log")
    ]}
    assert client.post("/api/v1/catalog", headers=bearer(agent), json=report).status_code == 403
    assert client.post("/api/v1/catalog", headers=bearer(mt), json=report).status_code == 204
    # A stream that is no disk of the spec is an event, not a failure; the others are recorded.
    odd = {"streams": [*report["streams"], {"stream": "sql01.nosuch", "size": 512,
                                             "location": {"kind": "file", "path": "/x"}, "points": []}]}
    assert client.post("/api/v1/catalog", headers=bearer(mt), json=odd).status_code == 204
    client.post("/api/v1/catalog", headers=bearer(mt), json=odd)
    events = client.get("/api/v1/events", headers=bearer(operator)).json()
    assert [e["subject"] for e in events if e["kind"] == "unknown_stream"] == ["mt01"]  # once
    half = {"streams": [{"stream": "sql01.c", "size": 512, "location": {"kind": "pageblob", "account": "a"}}]}
    assert client.post("/api/v1/catalog", headers=bearer(mt), json=half).status_code == 422

    points = client.get("/api/v1/machines/sql01/recovery-points?disk=data", headers=bearer(operator)).json()
    assert [(p["point_id"], p["kind"], p["group_id"]) for p in points] == [("p1", "app", "g1"), ("p2", "crash", "g2")]
    sql01 = machine(client, operator, "sql01")
    assert sql01["latest_point"] == t - 60 and sql01["latest_app_point"] == t - 600
    # The RPO is at least the newest point's age (60 s), though the master target said 12 s.
    assert [d["rpo_seconds"] for d in sql01["disks"]] == [60, 60, 60]
    # The server is the catalog of record: where each point's bytes are.
    replica = server.replica("sql01", "data")
    assert replica.location == {"kind": "pageblob", "account": "contosodr", "container": "replicas",
                                "blob": "sql01.data.vhd"} and replica.size == 1 << 20 and replica.reporter == "mt01"
    assert server.point_snapshot("sql01", "data", "p2") == "s2"


def test_events_record_registrations(client: TestClient) -> None:
    operator = register(client, "ops", "operator")["token"]
    client.post("/api/v1/register", json={"passphrase": "nope", "name": "x", "role": "process_server"})
    events = client.get("/api/v1/events", headers=bearer(operator)).json()
    kinds = [(e["kind"], e["subject"]) for e in events]
    # A refusal is recorded per client address (aggregated), naming the name it tried.
    assert ("registered", "ops") in kinds and ("registration_refused", "testclient") in kinds
    assert any("registration of x refused" in e["message"] for e in events)


def test_only_operators_confirm_steps_and_mint_login_links(client: TestClient) -> None:
    agent = register(client, "agent-dc01", "agent", machine="dc01")["token"]
    assert client.post("/api/v1/jobs/x/steps/1/confirm", headers=bearer(agent)).status_code == 403
    assert client.post("/api/v1/login-links", headers=bearer(agent)).status_code == 403
    operator = register(client, "ops", "operator")["token"]
    assert client.post("/api/v1/jobs/x/steps/1/confirm", headers=bearer(operator)).status_code == 404


def test_a_login_link_works_once(client: TestClient) -> None:
    operator = register(client, "ops", "operator")["token"]
    link = client.post("/api/v1/login-links", headers=bearer(operator)).json()
    browser = TestClient(client.app)
    first = browser.get(link["path"])
    assert first.status_code == 200 and 'id="health"' in first.text and "dc01" in first.text
    again = TestClient(client.app).get(link["path"])
    assert again.status_code == 401


def test_the_vault_passphrase_cannot_change(server: ConfigServer) -> None:
    from dr.server.service import AuthError

    with pytest.raises(AuthError, match="another passphrase"):
        server.init_vault("another one")


def test_a_pending_resync_a_process_server_reports_shows_as_warning(client: TestClient) -> None:
    from dr_agent.contract import ProcessServerHealth

    operator = register(client, "ops", "operator")["token"]
    agent = register(client, "agent-dc01", "agent", machine="dc01")["token"]
    ps = register(client, "ps01", "process_server", site="hq")["token"]
    beat = client.post("/api/v1/heartbeat/agent", headers=bearer(agent),
                       json={"power_state": "on", "disks": [{"stream": "dc01.c", "rpo_seconds": 30}]})
    assert beat.status_code == 204

    def ps_beat(resync_from: dict[str, int]) -> int:
        body = ProcessServerHealth(  # the body the process server's control loop sends (its health())
            name="ps01", cache_bytes=0, cache_capacity_bytes=2**30, cache_free_fraction=0.9, cache_level="ok",
            backlog_bytes={}, agents={"dc01.c": "agent-dc01"}, master_target_reachable=True, groups={},
            resync_from=resync_from).to_json()
        return client.post("/api/v1/heartbeat/process-server", headers=bearer(ps), json=body).status_code

    assert ps_beat({"dc01.c": 1234}) == 204
    dc01 = machine(client, operator, "dc01")
    assert dc01["health"]["state"] == "Warning"
    assert any("disk c: resync pending" in r and "ps01" in r and "record 1234" in r for r in dc01["health"]["reasons"])
    assert not any("resync" in r for r in machine(client, operator, "sql01")["health"]["reasons"])  # only dc01's

    assert ps_beat({}) == 204  # the agent resynced: the warning goes
    assert machine(client, operator, "dc01")["health"] == {"state": "Healthy", "reasons": []}

    # Bounded like the other fields: a negative record number or a malformed stream name is refused.
    for bad in ({"dc01.c": -1}, {"no such/stream": 1}):
        assert client.post("/api/v1/heartbeat/process-server", headers=bearer(ps),
                           json={"cache_free_fraction": 0.9, "resync_from": bad}).status_code == 422
