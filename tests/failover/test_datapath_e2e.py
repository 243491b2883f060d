"""The SharePoint example's recovery plan as a test failover, end to end on the local data path.

The configuration server (`dr config-server start`), two master targets and two process servers
(`dr-agent` services, registered as a machine registers) run as deployed, the estate split between
the two master targets, both writing page blobs into Azurite. Agents (the data path's sinks, one
per spec disk, certificates from the server's registration) stream to their process server. The
master targets report their catalogs by themselves; the runner picks one multi-VM point for the
whole plan from the server's state, materializes every disk at it from where the server says its
bytes are (each master target's replica and snapshot) into the test failover's resource group,
runs the after-actions, and cleanup removes the test resources. Replication goes on throughout: a
writer keeps changing a disk and inserting points during the failover, and its replica converges
afterwards.
"""

from __future__ import annotations

import itertools
import json
import random
import shutil
import stat
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from dr_agent.contract import stream_name

from dr.failover.datapath import ReplicaExporter
from dr.failover.points import Choice
from dr.failover.provider import BlobDiskStore, Environment, StoreCatalog, container_name
from dr.failover.runner import Runner
from dr.model import Estate
from dr.server.jobs import Jobs
from dr.server.schemas import RegisterRequest
from dr.server.service import ConfigServer
from dr.server.store import Store
from tests.failover.conftest import PASSPHRASE, blob_bytes

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "agent") not in sys.path:  # the agent installs on its own; tests also run from a checkout
    sys.path.insert(0, str(REPO / "agent"))
pytest.importorskip("dr_agent.master_target", reason="the data path (agent package) is not installed")
MIB = 1024 * 1024
# Replica disks here are small (bytes): the data path's own tests and benchmarks cover size.
DISK_BYTES = 2 * MIB
# The data path applies everything within this (seconds, generous for a loaded 2-core machine).
APPLY_TIMEOUT_S = 120
# The live writer's point interval during the failover (seconds; every point is a page blob snapshot).
LIVE_POINT_EVERY_S = 0.5


@dataclass
class Disk:
    """A source disk: what it holds now and at every bookmark, and the agent sink streaming it."""

    sink: Any
    data: bytearray = field(default_factory=lambda: bytearray(DISK_BYTES))
    points: dict[str, bytes] = field(default_factory=dict)

    def write(self, rng: random.Random, count: int) -> None:
        for _ in range(count):
            size = rng.choice([512, 4096, 65536])
            offset = rng.randrange(0, DISK_BYTES - size) // 512 * 512
            payload = rng.randbytes(size)
            self.data[offset:offset + size] = payload
            self.sink.write(offset, payload)

    def bookmark(self, point_id: str, kind: str, group: str | None) -> None:
        self.sink.flush()
        self.points[point_id] = bytes(self.data)
        self.sink.bookmark(point_id, kind, group)  # type: ignore[arg-type]


@dataclass
class Site:
    server: ConfigServer          # the runner's view of the configuration server's state store
    disks: dict[tuple[str, str], Disk]
    closers: list[Any]
    replicas: str  # the master targets' container (one per test: Azurite is shared by the session)
    master_targets: dict[str, str]  # machine -> the master target replicating it


def _register(server: ConfigServer, root: Path, name: str, role: str, machine: str | None = None,
              passphrase: str = PASSPHRASE, directory: str | None = None) -> Any:
    """An identity issued by `server` (in-process) into root/`directory` (default: its name): for
    the data path's peers a test builds itself."""
    from dr_agent.pki import write_identity

    issued = server.register(RegisterRequest(passphrase=passphrase, name=name, role=role,  # type: ignore[arg-type]
                                             machine=machine, address="127.0.0.1"))
    assert issued.private_key_pem is not None
    return write_identity(root / (directory or name), certificate_pem=issued.certificate_pem,
                          private_key_pem=issued.private_key_pem, ca_pem=issued.ca_pem)


# The SharePoint estate over two master targets, each behind its own process server: a plan (and
# its multi-VM group) spanning both.
SPLIT = {"mt01": ("dc01", "sql01"), "mt02": ("app01", "web01", "web02")}


@pytest.fixture
def site(tmp_path: Path, sharepoint: Estate, azurite: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    """`dr config-server start`, two `dr-agent master-target` and two `dr-agent process-server`
    services reporting to it by themselves ([control]), registered with `dr_agent.control.register`
    (what `dr-agent register --server` runs); the sources are agent sinks the test writes through."""
    from dr_agent.contract import REPLICA_CONTAINER  # noqa: F401  (the master targets' default container)
    from dr_agent.control import register
    from dr_agent.sink import ProcessServerSink

    from dr.azure.naming import storage_env
    from tests.agent.control_harness import PASSPHRASE as VAULT
    from tests.agent.control_harness import ConfigServerProcess, free_port
    from tests.agent.pipeline.pipeline_harness import Service
    from tests.failover.conftest import AZURITE_ACCOUNT

    # The master targets read their account's connection string from the environment, as deployed
    # (dr.azure.naming.storage_env); failover reads it there too.
    monkeypatch.setenv(storage_env(AZURITE_ACCOUNT), azurite)
    spec = _spec_dir(tmp_path) / "dr.yaml"
    cs = ConfigServerProcess(spec, tmp_path / "state.db", free_port(), tmp_path / "cs.log")
    cs.start()
    closers: list[Any] = [cs]
    ids = tmp_path / "identities"

    def identity(name: str, role: str, machine: str | None = None) -> Any:
        return register(cs.url, VAULT, name=name, role=role, out=ids / name, machine=machine,
                        addresses=("127.0.0.1",), deadline_s=60).identity

    replicas = f"replica-{time.time_ns()}"
    control = f'\n[control]\nserver = "{cs.url}"\nheartbeat_interval_s = 1\n'
    ps_ports = {}
    try:
        for n, mt in enumerate(SPLIT, start=1):
            mt_port, ps_port = free_port(), free_port()
            (tmp_path / f"{mt}.toml").write_text(
                f'[master_target]\nlisten = "127.0.0.1:{mt_port}"\n'
                f'identity = "{identity(mt, "master_target").directory}"\n'
                f'state_dir = "{tmp_path / mt}"\nstorage = "azure"\ncontainer = "{replicas}"\n'
                f'connection_string_env = "{storage_env(AZURITE_ACCOUNT)}"\n' + control)
            ps = f"ps0{n}"
            (tmp_path / f"{ps}.toml").write_text(
                f'[process_server]\nname = "{ps}"\nlisten = "127.0.0.1:{ps_port}"\n'
                f'identity = "{identity(ps, "process_server").directory}"\ncache_dir = "{tmp_path / ps}"\n'
                f'master_target = "127.0.0.1:{mt_port}"\ncapacity_gb = 1\n' + control)
            for kind, name in (("master-target", mt), ("process-server", ps)):
                service = Service(kind, tmp_path / f"{name}.toml", tmp_path / f"{name}.log")
                service.start()
                closers.append(service)
            ps_ports[mt] = ps_port
        server = ConfigServer(store=Store.open(tmp_path / "state.db"), estate=sharepoint)
        disks: dict[tuple[str, str], Disk] = {}
        where = {m: mt for mt, machines in SPLIT.items() for m in machines}
        for machine in sharepoint.machines:
            agent = identity(f"agent-{machine.name}", "agent", machine.name)  # acts for its machine
            for disk in machine.disks:
                sink = ProcessServerSink(disk=stream_name(machine.name, disk.name), size=DISK_BYTES,
                                         servers=[("127.0.0.1", ps_ports[where[machine.name]])], identity=agent,
                                         patience_s=APPLY_TIMEOUT_S)
                closers.append(sink)
                disks[(machine.name, disk.name)] = Disk(sink=sink)
        yield Site(server=server, disks=disks, closers=closers, replicas=replicas, master_targets=where)
    finally:
        for closer in reversed(closers):
            closer.stop() if hasattr(closer, "stop") else closer.close()


def _reported(site: Site, want: dict[tuple[str, str], set[str]]) -> None:
    """Wait until the configuration server's catalog, as the master targets report it by
    themselves, holds these points of these disks."""
    catalog = StoreCatalog(store=site.server.store)
    deadline = time.monotonic() + APPLY_TIMEOUT_S
    while True:
        missing = {k: ids - {p.point_id for p in catalog.points(*k)} for k, ids in want.items()}
        if not any(missing.values()):
            return
        assert time.monotonic() < deadline, f"never reported: {missing}"
        time.sleep(0.2)


def _background(runner: Runner, job_id: str, done: dict[str, Any]) -> threading.Thread:
    """Run the job in a thread; its result or its exception lands in `done`."""

    def run() -> None:
        try:
            done["job"] = runner.run(job_id)
        except BaseException as err:  # reported by the test's assertion
            done["error"] = repr(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _spec_dir(tmp_path: Path) -> Path:
    spec = tmp_path / "spec"
    (spec / "runbooks").mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "examples" / "sharepoint" / "dr.yaml", spec / "dr.yaml")
    runbook = spec / "runbooks" / "open-traffic-manager-endpoint.sh"
    runbook.write_text(f"#!/bin/sh\ncat > {tmp_path}/runbook-context.json\necho endpoint opened\n")
    runbook.chmod(runbook.stat().st_mode | stat.S_IXUSR)
    return spec


@pytest.mark.slow
def test_sharepoint_test_failover_on_the_local_data_path(site: Site, azurite: str, tmp_path: Path) -> None:
    from dr_agent.vhd import FOOTER_SIZE, parse_footer

    rng = random.Random(7)
    # Three multi-VM consistent points across the whole estate (the agents of the protection group
    # insert the same bookmark id), the second one application-consistent; then a later point of
    # dc01 alone, which a multi-VM choice must not take.
    for round_ in (1, 2, 3):
        for disk in site.disks.values():
            disk.write(rng, 20)
        for disk in site.disks.values():
            disk.bookmark(f"mv-{round_}", "app" if round_ == 2 else "crash", f"g-{round_}")
    site.disks[("dc01", "c")].write(rng, 10)
    site.disks[("dc01", "c")].bookmark("dc01-late", "crash", None)
    for disk in site.disks.values():
        disk.sink.wait_applied(APPLY_TIMEOUT_S)
    # No command reports anything: the master targets do, by themselves, each for its own disks.
    multi_vm = {"mv-1", "mv-2", "mv-3"}
    _reported(site, {**{k: multi_vm for k in site.disks}, ("dc01", "c"): {*multi_vm, "dc01-late"}})
    dc01 = next(m for m in site.server.overview().machines if m.name == "dc01")
    assert dc01.disks[0].points == 4 and dc01.rpo_seconds is not None
    reporters = {k: site.server.replica(*k).reporter for k in site.disks}
    assert reporters == {k: site.master_targets[k[0]] for k in site.disks}
    assert set(reporters.values()) == {"mt01", "mt02"}  # the plan and its group span two master targets

    # Replication goes on during the failover: sql01's data disk keeps changing and getting points.
    data = site.disks[("sql01", "data")]
    stop = threading.Event()

    def keep_writing() -> None:
        n = 0
        while not stop.is_set():
            data.write(rng, 5)
            n += 1
            data.bookmark(f"live-{n}", "crash", None)
            stop.wait(LIVE_POINT_EVERY_S)

    writer = threading.Thread(target=keep_writing, daemon=True)
    writer.start()

    spec = _spec_dir(tmp_path)
    env = Environment(catalog=StoreCatalog(store=site.server.store),
                      exporter=ReplicaExporter(server=site.server),
                      disks=BlobDiskStore(connection_string=azurite), workdir=tmp_path / "work")
    runner = Runner(server=site.server, env=env, spec_path=spec / "dr.yaml", poll_s=0.05)
    jobs = Jobs(store=site.server.store)
    job_id = runner.start_failover("sharepoint", "test", Choice.parse("latest-multi-vm"))
    done: dict[str, Any] = {}
    thread = _background(runner, job_id, done)
    deadline = time.monotonic() + APPLY_TIMEOUT_S
    while not any(s.state == "waiting" for s in jobs.get(job_id).steps):
        assert thread.is_alive() and time.monotonic() < deadline, jobs.get(job_id).error
        time.sleep(0.05)
    manual = next(s for s in jobs.get(job_id).steps if s.state == "waiting")
    assert manual.kind == "manual" and "SharePoint home page" in manual.title
    jobs.confirm(job_id, manual.idx, by="tester")
    thread.join(timeout=APPLY_TIMEOUT_S)
    stop.set()
    writer.join(timeout=10)
    job = jobs.get(job_id)
    assert job.state == "succeeded", (job.error, done.get("error"))

    # Groups started in order (directory, database, application, web), each after the previous ended.
    machine_steps = [s for s in job.steps if s.kind == "failover_machine"]
    assert [s.machine for s in machine_steps] == ["dc01", "sql01", "app01", "web01", "web02"]
    for earlier, later in itertools.pairwise(machine_steps[:4]):  # web01 and web02 run together
        assert earlier.finished is not None and later.started is not None and earlier.finished <= later.started
    # One multi-VM point for the whole plan: the newest all share (mv-3, not dc01-late).
    chosen = next(s for s in job.steps if s.kind == "choose_point").detail["chosen"]
    assert {c["point_id"] for c in chosen.values()} == {"mv-3"} and {c["group_id"] for c in chosen.values()} == {"g-3"}

    # Every disk is materialized at mv-3 in the test failover's resource group, as a fixed VHD.
    group = container_name("contoso-dr-sharepoint-failover-test")
    assert sorted(env.disks.list_disks(group)) == sorted(f"{m}/{d}.vhd" for m, d in site.disks)
    for (machine, disk), source in site.disks.items():
        blob = blob_bytes(azurite, group, f"{machine}/{disk}.vhd")
        assert len(blob) == DISK_BYTES + FOOTER_SIZE and parse_footer(blob[DISK_BYTES:]) == DISK_BYTES
        assert blob[:DISK_BYTES] == source.points["mv-3"], f"{machine}/{disk} is not at mv-3"

    # The after-actions ran: the manual step (confirmed) and the runbook with the plan context.
    context = json.loads((tmp_path / "runbook-context.json").read_text())
    assert context["failover_type"] == "test" and context["network"] == "contoso-dr-vnet-test"
    assert context["machines"]["sql01"]["recovery"]["point"]["point_id"] == "mv-3"
    assert job.steps[-1].output.strip() == "endpoint opened"

    # Replication went on: new points arrived during the failover, and the replica converges.
    data.sink.wait_applied(APPLY_TIMEOUT_S)
    _reported(site, {("sql01", "data"): {p for p in data.points if p.startswith("live-")}})
    live = [p for p in site.server.recovery_points("sql01", "data") if p["point_id"].startswith("live-")]
    assert live, "no recovery point arrived while the failover ran"
    replica = blob_bytes(azurite, site.replicas, f"{stream_name('sql01', 'data')}.vhd")
    assert replica[:DISK_BYTES] == bytes(data.data)

    # Cleanup removes the test resources and nothing else.
    cleanup = runner.run(runner.start_cleanup(job_id))
    assert cleanup.state == "succeeded"
    assert env.disks.list_disks(group) == []
    assert len(BlobDiskStore(connection_string=azurite).list_disks(site.replicas)) == 7


def _confirm_waiting(jobs: Jobs, job_id: str, thread: threading.Thread) -> None:
    deadline = time.monotonic() + APPLY_TIMEOUT_S
    while not any(s.state == "waiting" for s in jobs.get(job_id).steps):
        assert thread.is_alive() and time.monotonic() < deadline, jobs.get(job_id).error
        time.sleep(0.05)
    step = next(s for s in jobs.get(job_id).steps if s.state == "waiting")
    jobs.confirm(job_id, step.idx, by="tester")


@pytest.mark.slow
def test_failback_of_a_vsphere_machine_runs_its_reverse_replication(site: Site, azurite: str,
                                                                   tmp_path: Path) -> None:
    from dr_agent.master_target import MasterTarget, MasterTargetConfig
    from dr_agent.process_server import ProcessServer, ProcessServerConfig

    from dr.failover.datapath import AgentReverseReplication
    from dr.model import PlanGroup, RecoveryPlan

    rng = random.Random(11)
    sql01 = {d: site.disks[("sql01", d)] for d in ("c", "data", "log")}
    for disk in sql01.values():
        disk.write(rng, 30)
        disk.bookmark("p1", "app", None)
        disk.sink.wait_applied(APPLY_TIMEOUT_S)
    _reported(site, {("sql01", d): {"p1"} for d in sql01})

    plan = RecoveryPlan(name="db", groups=[PlanGroup(name="database", machines=["sql01"])], failback=True)
    server = ConfigServer(store=site.server.store, estate=site.server.estate.model_copy(
        update={"recovery_plans": [plan]}))
    # The on-premises side of the reverse direction: a process server and a master target.
    ids = tmp_path / "reverse-identities"
    from tests.agent.control_harness import PASSPHRASE as VAULT
    # Page blobs in their own container here too (seen once in about ten runs with the file target:
    # another SQLite file of the process corrupted; reported to the data path).
    mt_identity = _register(server, ids, "mt-onprem", "master_target", passphrase=VAULT)
    onprem_mt = MasterTarget(MasterTargetConfig(identity=mt_identity,
                                                state_dir=tmp_path / "mt-onprem", storage="azure",
                                                connection_string=azurite, container=f"onprem-{time.time_ns()}"))
    site.closers.append(onprem_mt)
    onprem_ps = ProcessServer(ProcessServerConfig(
        identity=_register(server, ids, "ps-azure", "process_server", passphrase=VAULT),
        cache_dir=tmp_path / "ps-azure",
        master_target=("127.0.0.1", onprem_mt.port), name="ps-azure"))
    site.closers.append(onprem_ps)
    # The runner's agent for the recovered machine: its own name (sql01's on-premises agent keeps its
    # registration), acting for sql01, in --identity DIR/sql01/.
    _register(server, ids, "failback-sql01", "agent", "sql01", passphrase=VAULT, directory="sql01")
    replication = AgentReverseReplication(
        connection_string=azurite, process_server=("127.0.0.1", onprem_ps.port),
        identity_dir=ids, onprem_catalog=tmp_path / "mt-onprem" / "catalog.sqlite",
        restore_dir=tmp_path / "vsphere", onprem_connection_string=azurite, apply_timeout_s=APPLY_TIMEOUT_S)
    site.closers.append(replication)
    env = Environment(catalog=StoreCatalog(store=server.store),
                      exporter=ReplicaExporter(server=server),
                      disks=BlobDiskStore(connection_string=azurite), replication=replication,
                      workdir=tmp_path / "work")
    runner = Runner(server=server, env=env, spec_path=_spec_dir(tmp_path) / "dr.yaml", poll_s=0.05)
    jobs = Jobs(store=server.store)

    failover = runner.start_failover("db", "unplanned", Choice.parse("latest-app"))
    done: dict[str, Any] = {}
    thread = _background(runner, failover, done)
    _confirm_waiting(jobs, failover, thread)  # the source shutdown, by the operator
    thread.join(timeout=APPLY_TIMEOUT_S)
    assert jobs.get(failover).state == "succeeded", (jobs.get(failover).error, done.get("error"))

    failback = runner.start_failback(failover)
    assert [s.kind for s in jobs.get(failback).steps] == ["reprotect", "shutdown", "failback_machine"]
    done = {}
    thread = _background(runner, failback, done)
    _confirm_waiting(jobs, failback, thread)  # the Azure VM's shutdown
    thread.join(timeout=APPLY_TIMEOUT_S)
    job = jobs.get(failback)
    assert job.state == "succeeded", (job.error, done.get("error"))
    assert "reverse replication to the on-premises master target" in job.steps[0].output
    # The vSphere VM's disks are back, equal to what the Azure VM ran on (the p1 point).
    for name, disk in sql01.items():
        assert (tmp_path / "vsphere" / "sql01" / f"{name}.img").read_bytes() == disk.points["p1"]
