"""The SharePoint plan as a test failover with real capture agents on loop-device disks.

Every disk of the five machines (seven disks) is an ext4 file system on a loop device over the
agent's FUSE write-splitter, which applies each write to a sparse backing file and streams it
(ProcessServerSink, with the certificate the configuration server's registration issued) to a
process server, which forwards to a master target writing page blobs into Azurite. The agents of
the protection group dial the coordinator the process server hosts (GroupMember, mutual TLS); its
group checkpoints put one bookmark id in every disk's stream while every agent is paused, and the
test snapshots each backing file at that instant. The runner picks the newest multi-VM point,
materializes every disk at it through the data path's export into the test failover's resource
group, runs the after-actions, and cleanup removes the test resources; a writer keeps changing sql01's data disk
during the failover, and its replica converges afterwards.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from dr_agent.contract import stream_name

from dr.azure.naming import storage_env
from dr.failover.datapath import ReplicaExporter
from dr.failover.points import Choice
from dr.failover.provider import BlobDiskStore, Environment, StoreCatalog, container_name
from dr.failover.runner import Runner
from dr.model import Estate
from dr.server.jobs import Jobs
from dr.server.schemas import CatalogReport
from dr.server.service import ConfigServer, Principal
from dr.server.store import Store
from tests.failover.conftest import AZURITE_ACCOUNT, PASSPHRASE, blob_bytes
from tests.failover.test_datapath_e2e import APPLY_TIMEOUT_S, _background, _register, _spec_dir

pytestmark = [pytest.mark.slow, pytest.mark.root]

MIB = 1024 * 1024
# Each source disk (bytes): a sparse backing file, big enough for ext4 with a journal and the workload.
DISK_BYTES = 16 * MIB
GROUP = "sharepoint"  # the protection group: the coordinator's group id
# Seconds the coordinator waits for every agent to pause (generous for a loaded 2-core machine).
PAUSE_TIMEOUT_S = 15.0
# The live writer's point interval during the failover (seconds).
LIVE_POINT_EVERY_S = 0.5


@dataclass
class SourceDisk:
    """One protected disk: backing file, splitter, sink, loop device, mounted ext4, and its snapshots."""

    machine: str
    disk: str
    backing: Path
    mnt: Path
    splitter: Any
    sink: Any
    dev: str
    snapshots: dict[str, bytes] = field(default_factory=dict)

    @property
    def stream(self) -> str:
        return stream_name(self.machine, self.disk)


class SnapshotAtMark:
    """A machine as the coordinator sees it: its disks' splitters, plus a copy of each backing file
    taken at MARK, while the coordinator holds every agent of the group paused (no write can reach
    any disk)."""

    def __init__(self, disks: list[SourceDisk]) -> None:
        self.disks = disks

    def pause(self, kind: str, point_id: str | None = None) -> None:
        for i, disk in enumerate(self.disks):
            try:
                disk.splitter.pause()
            except BaseException:
                for held in self.disks[:i]:
                    held.splitter.resume()
                raise

    def mark(self, bookmark_id: str, group_id: str) -> None:
        for disk in self.disks:
            disk.splitter.mark(bookmark_id, group_id)
            disk.snapshots[bookmark_id] = disk.backing.read_bytes()

    def resume(self) -> None:
        for disk in self.disks:
            disk.splitter.resume()


@dataclass
class CaptureSite:
    server: ConfigServer
    disks: dict[tuple[str, str], SourceDisk]
    coordinator: Any
    master_target: Any
    replicas: str


def _report(site: CaptureSite) -> int:
    """What the master target's control loop posts (its own catalog report, through the API's
    schema) taken by the configuration server; the recovery points it holds. (This test runs the
    server in-process; tests/agent/test_control.py and test_datapath_e2e.py run the loop itself.)"""
    report = CatalogReport.model_validate(site.master_target.catalog_report().to_json())
    site.server.report_catalog(Principal(name="mt01", role="master_target"), report)
    return sum(len(s.points) for s in report.streams)


def run(*argv: str) -> str:
    """The pipeline harness's runner (imported late: the harness needs the agent package on the path,
    which importing test_datapath_e2e ensures, or a skip when the agent is not installed)."""
    from tests.agent.pipeline.pipeline_harness import run as harness_run

    return harness_run(*argv)


def _umount(mnt: Path) -> None:
    if os.path.ismount(mnt):
        run("umount", str(mnt))


def _ours(root: Path) -> list[str]:
    """Loop devices and mounts under `root` still present (none may outlive the test)."""
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=False).stdout
    mounts = subprocess.run(["findmnt", "-rn", "-o", "TARGET,SOURCE"], capture_output=True, text=True,
                            check=False).stdout
    return [line for line in (loops + mounts).splitlines() if f"{root}/" in line]


@pytest.fixture
def capture_site(tmp_path: Path, sharepoint: Estate, azurite: str) -> Iterator[CaptureSite]:
    from tests.agent.pipeline.pipeline_harness import need_root

    need_root()
    from dr_agent.capture.splitter import Splitter, attach_loop, detach_loop
    from dr_agent.coordination import GroupMember
    from dr_agent.master_target import MasterTarget, MasterTargetConfig
    from dr_agent.process_server import ProcessServer, ProcessServerConfig
    from dr_agent.ps_coordinator import GroupConfig
    from dr_agent.sink import ProcessServerSink

    server = ConfigServer(store=Store.open(tmp_path / "state.db"), estate=sharepoint)
    server.init_vault(PASSPHRASE)
    ids = tmp_path / "identities"
    replicas = f"capture-{time.time_ns()}"
    try:
        with ExitStack() as stack:
            mt = MasterTarget(MasterTargetConfig(identity=_register(server, ids, "mt01", "master_target"),
                                                 state_dir=tmp_path / "mt", storage="azure",
                                                 connection_string=azurite, container=replicas))
            stack.callback(mt.close)
            ps_identity = _register(server, ids, "ps01", "process_server")
            # The process server coordinates the group (the test takes the points itself: the
            # schedule's first is an hour away).
            group = GroupConfig(GROUP, tuple(m.name for m in sharepoint.machines), crash_consistent_every_s=3600,
                                pause_timeout_s=PAUSE_TIMEOUT_S)
            ps = ProcessServer(ProcessServerConfig(identity=ps_identity, cache_dir=tmp_path / "ps",
                                                   master_target=("127.0.0.1", mt.port), name="ps01",
                                                   groups=(group,)))
            stack.callback(ps.close)
            disks: dict[tuple[str, str], SourceDisk] = {}
            agents: dict[str, tuple[Any, list[SourceDisk]]] = {}
            for machine in sharepoint.machines:
                identity = _register(server, ids, f"agent-{machine.name}", "agent", machine.name)
                agents[machine.name] = (identity, [])
                for spec_disk in machine.disks:
                    base = tmp_path / "source" / stream_name(machine.name, spec_disk.name)
                    (base / "fuse").mkdir(parents=True)
                    (base / "mnt").mkdir()
                    backing = base / "backing.img"
                    with open(backing, "wb") as f:
                        f.truncate(DISK_BYTES)
                    sink = ProcessServerSink(disk=stream_name(machine.name, spec_disk.name), size=DISK_BYTES,
                                             servers=[("127.0.0.1", ps.port)], identity=identity,
                                             patience_s=APPLY_TIMEOUT_S)
                    stack.callback(sink.close)
                    splitter = stack.enter_context(Splitter(backing, base / "fuse", sink,
                                                            name=stream_name(machine.name, spec_disk.name)))
                    dev = attach_loop(splitter.path)
                    stack.callback(detach_loop, dev)
                    run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", dev)
                    run("mount", dev, str(base / "mnt"))
                    stack.callback(_umount, base / "mnt")
                    disk = SourceDisk(machine.name, spec_disk.name, backing, base / "mnt", splitter, sink, dev)
                    disks[(machine.name, spec_disk.name)] = disk
                    agents[machine.name][1].append(disk)
            # Each machine's agent dials the coordinator in the process server with its own
            # certificate (mutual TLS from the registration CA).
            members = [GroupMember([("127.0.0.1", ps.port)], identity, agent=name, group=GROUP,
                                   participant=SnapshotAtMark(machine_disks), server_hostname="127.0.0.1")
                       for name, (identity, machine_disks) in agents.items()]
            for member in members:
                stack.callback(member.close)
            for member in members:
                assert member.wait_connected(PAUSE_TIMEOUT_S), f"{member.agent} did not join its group"
            coordinator = ps.coordinator
            yield CaptureSite(server=server, disks=disks, coordinator=coordinator, master_target=mt,
                              replicas=replicas)
    finally:
        left = _ours(tmp_path)
        assert not left, f"loop devices or mounts left behind: {left}"


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "lost+found" not in p.parts}


def _workload(disk: SourceDisk, rng: random.Random, round_: int) -> None:
    """New files, an overwrite in place and a delete on one disk's file system, then fsync'd."""
    folder = disk.mnt / f"round-{round_}"
    folder.mkdir()
    for i in range(4):
        (folder / f"f{i}.bin").write_bytes(rng.randbytes(rng.choice([4096, 70_000, 300_000])))
    if round_ > 1:
        with open(disk.mnt / "round-1" / "f0.bin", "r+b") as f:
            f.seek(100)
            f.write(rng.randbytes(5000))
        (disk.mnt / f"round-{round_ - 1}" / "f1.bin").unlink()
    os.sync()


def _group_point(site: CaptureSite) -> tuple[str, dict[tuple[str, str], dict[str, str]]]:
    """A multi-VM point with every file system frozen (clean on every disk); the files it holds."""
    from dr_agent.capture.consistency import app_consistent

    with app_consistent([d.mnt for d in site.disks.values()]):
        point = site.coordinator.checkpoint(GROUP)
        files = {key: _hashes(d.mnt) for key, d in site.disks.items()}
    assert sorted(point.members) == sorted({m for m, _ in site.disks})
    return point.bookmark_id, files


def test_sharepoint_test_failover_with_capture_agents_on_loop_disks(capture_site: CaptureSite, azurite: str,
                                                                     tmp_path: Path) -> None:
    from dr_agent.vhd import FOOTER_SIZE, parse_footer

    site = capture_site
    rng = random.Random(7)
    for disk in site.disks.values():
        _workload(disk, rng, 1)
    first, _ = _group_point(site)
    for disk in site.disks.values():
        _workload(disk, rng, 2)
    chosen_id, files = _group_point(site)
    # After the newest group point: more changes everywhere, and a point of dc01 alone, which a
    # multi-VM choice must not take.
    for disk in site.disks.values():
        _workload(disk, rng, 3)
    dc01 = site.disks[("dc01", "c")]
    dc01.splitter.bookmark("crash", id="dc01-late")
    for disk in site.disks.values():
        disk.sink.wait_applied(APPLY_TIMEOUT_S)
    assert _report(site) == 7 * 2 + 1
    for (machine, name), disk in site.disks.items():
        points = site.server.recovery_points(machine, name)
        assert [(p["point_id"], p["group_id"]) for p in points][:2] == [(first, GROUP), (chosen_id, GROUP)]
        assert set(disk.snapshots) == {first, chosen_id}

    # Replication goes on during the failover: files keep changing on sql01's data disk, with points.
    data = site.disks[("sql01", "data")]
    stop = threading.Event()
    live: list[str] = []

    def keep_writing() -> None:
        for n in itertools.count(1):
            if stop.is_set():
                return
            with open(data.mnt / f"live-{n % 16}.bin", "wb") as f:
                f.write(random.Random(n).randbytes(65536))
                os.fsync(f.fileno())
            live.append(data.splitter.bookmark("crash", id=f"live-{n}"))
            stop.wait(LIVE_POINT_EVERY_S)

    writer = threading.Thread(target=keep_writing, daemon=True)
    spec = _spec_dir(tmp_path)
    env = Environment(catalog=StoreCatalog(store=site.server.store),
                      exporter=ReplicaExporter(server=site.server, environ={storage_env(AZURITE_ACCOUNT): azurite}),
                      disks=BlobDiskStore(connection_string=azurite), workdir=tmp_path / "work")
    runner = Runner(server=site.server, env=env, spec_path=spec / "dr.yaml", poll_s=0.05)
    jobs = Jobs(store=site.server.store)
    try:
        writer.start()
        job_id = runner.start_failover("sharepoint", "test", Choice.parse("latest-multi-vm"))
        done: dict[str, Any] = {}
        thread = _background(runner, job_id, done)
        deadline = time.monotonic() + APPLY_TIMEOUT_S
        while not any(s.state == "waiting" for s in jobs.get(job_id).steps):
            assert thread.is_alive() and time.monotonic() < deadline, (jobs.get(job_id).error, done)
            time.sleep(0.05)
        manual = next(s for s in jobs.get(job_id).steps if s.state == "waiting")
        assert manual.kind == "manual" and "SharePoint home page" in manual.title
        jobs.confirm(job_id, manual.idx, by="tester")
        thread.join(timeout=APPLY_TIMEOUT_S)
    finally:
        stop.set()
        writer.join(timeout=10)
    job = jobs.get(job_id)
    assert job.state == "succeeded", (job.error, done.get("error"))
    assert len(live) >= 2, "the writer made no progress during the failover"

    # Groups started in order (directory, database, application, web), each after the previous ended.
    machine_steps = [s for s in job.steps if s.kind == "failover_machine"]
    assert [s.machine for s in machine_steps] == ["dc01", "sql01", "app01", "web01", "web02"]
    for earlier, later in itertools.pairwise(machine_steps[:4]):  # web01 and web02 run together
        assert earlier.finished is not None and later.started is not None and earlier.finished <= later.started
    # One multi-VM point for the whole plan: the newest group point (not dc01-late, not a live point).
    chosen = next(s for s in job.steps if s.kind == "choose_point").detail["chosen"]
    assert {(c["point_id"], c["group_id"]) for c in chosen.values()} == {(chosen_id, GROUP)}

    # Every disk is materialized at that point in the test failover's resource group, byte for byte
    # what the source disk held while the coordinator held the whole group, and a clean ext4 with
    # the files of that instant.
    group = container_name("contoso-dr-sharepoint-failover-test")
    assert sorted(env.disks.list_disks(group)) == sorted(f"{m}/{d}.vhd" for m, d in site.disks)
    restored = tmp_path / "restored"
    restored.mkdir()
    for (machine, name), disk in site.disks.items():
        blob = blob_bytes(azurite, group, f"{machine}/{name}.vhd")
        assert len(blob) == DISK_BYTES + FOOTER_SIZE and parse_footer(blob[DISK_BYTES:]) == DISK_BYTES
        assert blob[:DISK_BYTES] == disk.snapshots[chosen_id], f"{machine}/{name} is not the source at the point"
        image = tmp_path / f"exported-{disk.stream}.img"
        image.write_bytes(blob[:DISK_BYTES])
        run("e2fsck", "-fn", str(image))
        run("mount", "-o", "loop,ro", str(image), str(restored))
        try:
            assert _hashes(restored) == files[(machine, name)], f"{machine}/{name}: files differ at the point"
        finally:
            run("umount", str(restored))

    # The after-actions ran: the manual step (confirmed) and the runbook with the plan context.
    context = json.loads((tmp_path / "runbook-context.json").read_text())
    assert context["failover_type"] == "test" and context["network"] == "contoso-dr-vnet-test"
    assert context["machines"]["sql01"]["recovery"]["point"]["point_id"] == chosen_id
    assert job.steps[-1].output.strip() == "endpoint opened"

    # Replication went on: points of the writer arrived during the failover, and once its file
    # system is unmounted (everything flushed through the splitter) the replica equals the disk.
    run("umount", str(data.mnt))
    data.splitter.bookmark("crash", id="after-unmount")
    data.sink.wait_applied(APPLY_TIMEOUT_S)
    _report(site)
    started = min(s.started for s in job.steps if s.started is not None)
    arrived = [p for p in site.server.recovery_points("sql01", "data") if p["point_id"].startswith("live-")]
    assert any(p["time"] >= started for p in arrived), "no recovery point arrived while the failover ran"
    replica = blob_bytes(azurite, site.replicas, f"{data.stream}.vhd")
    assert replica[:DISK_BYTES] == data.backing.read_bytes()

    # Cleanup removes the test resources and nothing else.
    cleanup = runner.run(runner.start_cleanup(job_id))
    assert cleanup.state == "succeeded"
    assert env.disks.list_disks(group) == []
    assert len(BlobDiskStore(connection_string=azurite).list_disks(site.replicas)) == 7
