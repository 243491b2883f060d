"""The control loop as deployed: `dr-agent register --server` against `dr config-server start`, and
the three `dr-agent` services reporting heartbeats and the recovery-point catalog by themselves
(a `[control]` table in their configuration), until the dashboard's API shows the estate Healthy.
"""

from __future__ import annotations

import os
import stat
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from control_harness import ConfigServerProcess, free_port, register, wait_for, write_spec
from cryptography import x509
from cryptography.x509.oid import NameOID
from dr_agent.contract import machine_uri, stream_name

# Generous for a loaded 2-core machine (seconds).
REGISTER_TIMEOUT_S = 90
# The Done-when of issue 14: every machine and server Healthy within a minute of a working estate.
HEALTHY_WITHIN_S = 60


def _lines(stream: Any, into: list[str]) -> threading.Thread:
    def read() -> None:
        for line in stream:
            into.append(line)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def test_register_waits_for_a_configuration_server_that_starts_late(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, {"sql_01": ["data_1"]})
    server = ConfigServerProcess(spec, tmp_path / "state.db", free_port(), tmp_path / "cs.log")
    out = tmp_path / "identity"
    proc = register(server.url, "ps01", "process-server", out, "--deadline", "2m", background=True)
    said: list[str] = []
    reader = _lines(proc.stderr, said)
    try:
        # The server comes up only after the client has tried three times (1 + 2 + 4 s of backoff).
        wait_for("three tries of the registration client",
                 lambda: sum("waiting for the configuration server" in line for line in said) >= 3, 30)
        assert proc.poll() is None, said
        server.start()
        assert proc.wait(timeout=REGISTER_TIMEOUT_S) == 0, "".join(said)
        reader.join(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        server.stop()
    assert f"waiting for the configuration server at {server.url} to register ps01" in said[0]
    assert "next try in" in said[0] and "giving up in" in said[0]
    assert proc.stdout is not None and "registered ps01 as process_server" in proc.stdout.read()

    # The identity as the contract lays it out; the key and the token only for root.
    for name, mode in (("cert.pem", 0o644), ("key.pem", 0o600), ("ca.pem", 0o644), ("token", 0o600)):
        assert stat.S_IMODE(os.stat(out / name).st_mode) == mode, name
    cert = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
    cert.verify_directly_issued_by(ca)
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "process_server"
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "ps01"
    # ONE CA: the configuration server's vault CA, which also signs the server's own certificate.
    from dr.server import certs
    from dr.server.store import Store

    store = Store.open(tmp_path / "state.db")
    assert certs.ca_pem(store) == (out / "ca.pem").read_text()
    row = store.one("SELECT role, address FROM components WHERE name = 'ps01'")
    store.close()
    assert row is not None and row["role"] == "process_server" and row["address"] == "127.0.0.1"


def test_a_wrong_passphrase_is_refused_without_retrying(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, {"sql_01": ["data_1"]})
    server = ConfigServerProcess(spec, tmp_path / "state.db", free_port(), tmp_path / "cs.log")
    server.start()
    try:
        env = {**os.environ, "DR_VAULT_KEY": "not the passphrase"}
        done = subprocess.run(["dr-agent", "register", "--server", server.url, "--name", "mt01", "--role",
                               "master-target", "--out", str(tmp_path / "mt01"), "--deadline", "30m"],
                              env=env, capture_output=True, text=True, timeout=60)
        unknown = subprocess.run(["dr-agent", "register", "--server", server.url, "--name", "nosuch", "--role",
                                  "agent", "--out", str(tmp_path / "nosuch")],
                                 env={**os.environ, "DR_VAULT_KEY": "control loop tests passphrase"},
                                 capture_output=True, text=True, timeout=60)
        other = subprocess.run(["dr-agent", "register", "--server", server.url, "--name", "agent-sql_01", "--machine",
                                "sql_01", "--role", "agent", "--out", str(tmp_path / "other")],
                               env={**os.environ, "DR_VAULT_KEY": "control loop tests passphrase"},
                               capture_output=True, text=True, timeout=60)
    finally:
        server.stop()
    assert other.returncode == 0, other.stderr  # its own name, acting for sql_01 (named in its certificate)
    cert = x509.load_pem_x509_certificate((tmp_path / "other/cert.pem").read_bytes())
    alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert alt.get_values_for_type(x509.UniformResourceIdentifier) == [machine_uri("sql_01")]
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"dr-agent: error: the server at {server.url} cannot prove it holds the vault passphrase: the passphrase "
        "is wrong, or this is not the configuration server; check both (or give --ca-file)")
    assert not (tmp_path / "mt01").exists()
    assert unknown.returncode == 2 and "machine 'nosuch' is not in the spec" in unknown.stderr


def test_register_gives_up_at_its_deadline_saying_why(tmp_path: Path) -> None:
    url = f"https://127.0.0.1:{free_port()}"  # nothing listens there
    done = subprocess.run(["dr-agent", "register", "--server", url, "--name", "ps01", "--role", "process-server",
                           "--out", str(tmp_path / "ps01"), "--deadline", "3s"],
                          env={**os.environ, "DR_VAULT_KEY": "x" * 20}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"dr-agent: error: the configuration server at {url} did not answer within 3 s (")
    assert last.endswith("): start it, or check --server and the network")
    assert not (tmp_path / "ps01").exists()


def test_control_bodies_parse_strictly() -> None:
    from dr_agent.contract import CatalogPoint, CatalogReport, ReplicaLocation, StreamCatalog
    from dr_agent.errors import ProtocolError

    report = CatalogReport(streams=(StreamCatalog(
        stream=stream_name("sql_01", "data_1"), size=1 << 20, rpo_seconds=3.0,
        location=ReplicaLocation(kind="pageblob", account="acct", container="replicas", blob="sql_01.data_1.vhd"),
        points=(CatalogPoint(point_id="p1", time=1.5, kind="crash", snapshot="2026-12-01T00:00:00Z",
                             group_id="g1"),)),))
    assert CatalogReport.from_json(report.to_json()) == report
    with pytest.raises(ProtocolError, match="a page blob replica needs account, container and blob"):
        ReplicaLocation.from_json({"kind": "pageblob", "container": "replicas"})
    with pytest.raises(ProtocolError, match=r"points\[0\].*snapshot' is missing"):
        CatalogReport.from_json({"streams": [{"stream": "a.b", "size": 512, "location": {"kind": "file", "path": "/x"},
                                              "points": [{"point_id": "p", "time": 1, "kind": "crash"}]}]})


@pytest.mark.root
@pytest.mark.slow
def test_services_report_heartbeats_and_catalogs_by_themselves(tmp_path: Path, azurite: str) -> None:
    from agent_harness import Disk, need_root, populate
    from pipeline_harness import Service

    need_root()
    machines = {"sql_01": ["data_1", "log"]}
    spec = write_spec(tmp_path, machines)
    server = ConfigServerProcess(spec, tmp_path / "state.db", free_port(), tmp_path / "cs.log")
    server.start()
    services: list[Service] = []
    disks: list[Disk] = []
    try:
        ids = {name: tmp_path / "id" / name for name in ("mt01", "ps01", "sql_01")}
        register(server.url, "mt01", "master-target", ids["mt01"])
        register(server.url, "ps01", "process-server", ids["ps01"])
        register(server.url, "sql_01", "agent", ids["sql_01"])
        control = f'\n[control]\nserver = "{server.url}"\nheartbeat_interval_s = 1\n'
        mt_port, ps_port = free_port(), free_port()
        (tmp_path / "mt.toml").write_text(
            f'[master_target]\nlisten = "127.0.0.1:{mt_port}"\nidentity = "{ids["mt01"]}"\n'
            f'state_dir = "{tmp_path / "mt"}"\nstorage = "file"\n' + control)
        (tmp_path / "ps.toml").write_text(
            f'[process_server]\nname = "ps01"\nlisten = "127.0.0.1:{ps_port}"\nidentity = "{ids["ps01"]}"\n'
            f'cache_dir = "{tmp_path / "ps"}"\nmaster_target = "127.0.0.1:{mt_port}"\ncapacity_gb = 1\n' + control)
        body = []
        for name in machines["sql_01"]:
            disk = Disk(tmp_path, name, 32 * 1024 * 1024)
            disks.append(disk)
            disk.mount()
            populate(disk.mnt / "before", seed=len(disks), count=5)
            body.append(f'[[agent.disks]]\nname = "{stream_name("sql_01", name)}"\nmode = "tracking"\n'
                        f'device = "{disk.dev}"\nmount_points = ["{disk.mnt}"]\n')
        (tmp_path / "agent.toml").write_text(
            f'[agent]\nname = "sql_01"\nidentity = "{ids["sql_01"]}"\nstate_dir = "{tmp_path / "agent"}"\n'
            f'process_servers = ["127.0.0.1:{ps_port}"]\ncrash_consistent_every_s = 1\n'
            + "".join(body) + control)
        for kind, config in (("master-target", "mt.toml"), ("process-server", "ps.toml"), ("agent", "agent.toml")):
            service = Service(kind, tmp_path / config, tmp_path / f"{kind}.log")
            service.start()
            services.append(service)

        with server.operator() as api:
            def healthy() -> Any:
                # Healthy, and past the initial sync (which is Healthy too): points at the server
                view = api.get("/api/v1/status").json()
                disks = [d for m in view["machines"] for d in m["disks"]]
                protected = all(d["points"] > 0 and d["rpo_seconds"] is not None for d in disks)
                return view if view["health"]["state"] == "Healthy" and protected else None

            try:
                view = wait_for("the estate to be Healthy", healthy, HEALTHY_WITHIN_S)
            except AssertionError:
                raise AssertionError(f"{api.get('/api/v1/status').json()}") from None
            sql01 = next(m for m in view["machines"] if m["name"] == "sql_01")
            assert [d["disk"] for d in sql01["disks"]] == ["data_1", "log"]
            assert all(d["points"] > 0 and d["rpo_seconds"] is not None for d in sql01["disks"]), sql01
            assert sql01["last_heartbeat"] is not None and sql01["latest_point"] is not None
            assert {c["name"]: c["health"]["state"] for c in view["components"]} == {
                "mt01": "Healthy", "ps01": "Healthy"}
            assert [e for e in view["events"] if e["kind"] == "unknown_stream"] == []
            points = api.get("/api/v1/machines/sql_01/recovery-points", params={"disk": "log"}).json()
            assert points and all(p["snapshot"] for p in points)

        # A test failover as a user runs it: no --catalog, the points and where their bytes are come
        # from the configuration server; a machine with an underscore and two disks, one point.
        _test_failover(spec, tmp_path, azurite, {d.image.stem: d for d in disks})

        with server.operator() as api:
            view = api.get("/api/v1/status").json()

            # The server goes away and comes back: the services tell it again, each saying so once.
            server.stop()
            before = view["time"]
            wait_for("the master target to notice", lambda: "configuration server is unreachable"
                     in (tmp_path / "master-target.log").read_text(), 30)
            server.start()

        with server.operator() as api:
            def fresh() -> bool:
                comps = api.get("/api/v1/status").json()["components"]
                return all((c["last_heartbeat"] or 0) > before for c in comps)

            wait_for("heartbeats after the server's restart", fresh, HEALTHY_WITHIN_S)
        wait_for("the master target to say so", lambda: "answers again" in (tmp_path / "master-target.log").read_text(),
                 10)
        log = (tmp_path / "master-target.log").read_text()
        assert log.count("configuration server is unreachable") == 1
        assert log.count("answers again; heartbeats resumed") == 1

        # Registering again (a push does) revokes the old token: the running service reads the new one.
        with server.operator() as api:
            now = api.get("/api/v1/status").json()["time"]
            register(server.url, "mt01", "master-target", ids["mt01"])

            def beating() -> bool:
                comps = api.get("/api/v1/status").json()["components"]
                return next(c for c in comps if c["name"] == "mt01")["last_heartbeat"] > now + 1

            wait_for("heartbeats with the new token", beating, HEALTHY_WITHIN_S)
    finally:
        for service in reversed(services):
            service.stop()
        for disk in disks:
            disk.detach()
        server.stop()


def _test_failover(spec: Path, tmp_path: Path, azurite: str, sources: dict[str, Any]) -> None:
    """`dr failover all --type test --point latest`; every disk of sql_01 lands in Azure at the same
    point, its file system clean and holding the files the source had before its agent came."""
    import json

    from agent_harness import run, tree_hashes
    from azure.storage.blob import BlobServiceClient
    from control_harness import dr
    from dr_agent.vhd import FOOTER_SIZE

    done = dr("failover", "all", "--type", "test", "--point", "latest", "--spec", str(spec), "--state",
              str(tmp_path / "state.db"), "--storage", azurite, "--format", "json",
              env={"DR_WORKDIR": str(tmp_path / "work")}, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    job = json.loads(done.stdout)
    chosen = next(s for s in job["steps"] if s["kind"] == "choose_point")["detail"]["chosen"]
    assert list(chosen) == ["sql_01"]
    service = BlobServiceClient.from_connection_string(azurite)
    blobs = {b.name: c.name for c in service.list_containers()
             for b in service.get_container_client(c.name).list_blobs() if b.name.startswith("sql_01/")}
    assert sorted(blobs) == ["sql_01/data_1.vhd", "sql_01/log.vhd"], blobs
    for name, container in blobs.items():
        disk = name.split("/")[1].removesuffix(".vhd")
        data = service.get_blob_client(container, name).download_blob().readall()
        image = tmp_path / f"failed-over-{disk}.img"
        image.write_bytes(data[:-FOOTER_SIZE])
        run("e2fsck", "-fn", str(image))
        mnt = tmp_path / f"failed-over-{disk}"
        mnt.mkdir()
        run("mount", "-o", "ro,noload,loop", str(image), str(mnt))
        try:
            assert tree_hashes(mnt / "before") == tree_hashes(sources[disk].mnt / "before"), disk
        finally:
            run("umount", str(mnt))
    cleanup = dr("failover", "cleanup", job["id"], "--spec", str(spec), "--state", str(tmp_path / "state.db"),
                 "--storage", azurite, env={"DR_WORKDIR": str(tmp_path / "work")}, timeout=300)
    assert cleanup.returncode == 0, cleanup.stdout + cleanup.stderr
