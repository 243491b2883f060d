"""`dr-agent agent` under faults, run as a user runs it: one point id across a machine's disks, a
black-holed process server under writes (fsync stays fast, the agent heals by itself), and
SIGTERM / SIGKILL restarts in tracking mode under writes (no EIO, no read-only remount)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from agent_harness import MIB, Estate, need_root, populate, run, tree_hashes, wait_for

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture
def estate(tmp_path: Path, pki: Any) -> Any:
    need_root()
    e = Estate(tmp_path, pki)
    e.start()
    yield e
    e.close()


class Writer:
    """The workload: files written and fsynced in a loop; every fsync's latency and any error kept."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            try:
                with open(self.root / f"w{i % 40}.bin", "wb") as f:
                    f.write(os.urandom(64 * 1024))
                    started = time.monotonic()
                    os.fsync(f.fileno())
                    self.latencies.append(time.monotonic() - started)
            except OSError as err:
                self.errors.append(str(err))
            i += 1
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def _converges(estate: Estate, tmp_path: Path, stream: str, mnt: Path, agent: Any, name: str) -> None:
    os.sync()
    after = time.time()
    want = tree_hashes(mnt)
    point = estate.wait_point(stream, after, 120, agent=agent)
    assert estate.exported_hashes(estate.export(stream, point.id, tmp_path / f"{name}.img")) == want


def test_a_machine_s_disks_share_each_point_id(estate: Estate) -> None:
    disks = [estate.disk(n, 32 * MIB) for n in ("sdb", "sdc")]
    bodies = []
    for d in disks:
        d.mount()
        populate(d.mnt, seed=len(bodies), count=5)
        bodies.append(f'name = "sql_01.{d.image.stem}"\nmode = "tracking"\ndevice = "{d.dev}"\n'
                      f'mount_points = ["{d.mnt}"]')
    agent = estate.start_agent(estate.agent_config("sql_01", bodies, crash_consistent_every_s=1))
    wait_for(lambda: len(estate.points("sql_01.sdc")) >= 3 and len(estate.points("sql_01.sdb")) >= 3, 90,
             "three points on each disk", agent=agent)
    b = {p.id for p in estate.points("sql_01.sdb")}
    c = {p.id for p in estate.points("sql_01.sdc")}
    assert len(b & c) >= 3, (sorted(b), sorted(c))


def test_a_black_holed_process_server_never_holds_the_workload(estate: Estate, tmp_path: Path) -> None:
    disk = estate.disk("sdb")
    disk.mount()
    populate(disk.mnt / "before", seed=5, count=10)
    disk.umount()
    run("losetup", "-d", disk.dev)
    config = estate.agent_config(
        "web02", [f'name = "web02.sdb"\nmode = "splitter"\ndevice = "{disk.image}"\n'
                  f'mountpoint = "{tmp_path / "fuse"}"\nmount_points = ["{disk.mnt}"]'],
        crash_consistent_every_s=1, buffer_mb=4, io_timeout_s=2.0, connect_timeout_s=1.0,
        reconnect_initial_s=0.2, reconnect_max_s=2.0)
    agent = estate.start_agent(config)
    link = tmp_path / "fuse.dev"
    wait_for(lambda: "initial-sync -> protected" in estate.agent_log("web02"), 90, "the initial sync", agent=agent)
    disk.dev = str(link.resolve())
    disk.mount(str(link))
    writer = Writer(disk.mnt / "load")
    try:
        time.sleep(2)
        assert estate.ps.proc is not None
        estate.ps.proc.send_signal(signal.SIGSTOP)  # the link is black-holed: nothing answers, nothing resets
        time.sleep(15)  # several times every timeout of the agent's config
        during = list(writer.latencies)
        estate.ps.proc.send_signal(signal.SIGCONT)
        wait_for(lambda: "bitmap -> protected" in estate.agent_log("web02"), 120, "the agent to heal", agent=agent)
    finally:
        writer.stop()
    assert writer.errors == []
    assert len(during) > 50
    p99 = sorted(during)[int(len(during) * 0.99)]
    assert p99 < 1.0, f"fsync p99 {p99:.3f} s during the outage"
    _converges(estate, tmp_path, "web02.sdb", disk.mnt, agent, "healed")
    disk.umount()  # before the agent stops, as the unit orders it
    log = estate.agent_log("web02")
    assert log.count("the process server is unreachable") >= 1 and log.count("protected -> bitmap") == 1


def test_restarts_in_tracking_mode_never_touch_the_workload(estate: Estate, tmp_path: Path) -> None:
    disk = estate.disk("sdb")
    disk.mount()
    populate(disk.mnt / "before", seed=6, count=10)
    config = estate.agent_config("db02", [f'name = "db02.sdb"\nmode = "tracking"\ndevice = "{disk.dev}"\n'
                                          f'mount_points = ["{disk.mnt}"]'], crash_consistent_every_s=1)
    writer = Writer(disk.mnt / "load")
    try:
        for stop in (signal.SIGKILL, signal.SIGTERM):
            agent = estate.start_agent(config)
            wait_for(lambda: "-> protected" in estate.agent_log("db02").rsplit("agent started:", 1)[-1], 90,
                     "protection", agent=agent)
            time.sleep(1.5)
            agent.send_signal(stop)
            agent.wait(30)
        agent = estate.start_agent(config)
        time.sleep(2)
    finally:
        writer.stop()
    assert writer.errors == []
    assert "ro" not in run("findmnt", "-no", "OPTIONS", str(disk.mnt)).split(",")
    assert "resync -> protected" in estate.agent_log("db02")  # each restart compared the disk by hashes
    _converges(estate, tmp_path, "db02.sdb", disk.mnt, agent, "restarted")


def test_a_multi_vm_group_s_machines_share_each_point_id(tmp_path: Path, pki: Any) -> None:
    need_root()
    groups = ('\n[[process_server.groups]]\nname = "erp"\nmembers = ["web01", "db01"]\n'
              'crash_consistent_every_s = 1\napp_consistent_every_s = 2\n')
    estate = Estate(tmp_path, pki, ps_extra=groups)
    estate.start()
    try:
        db01 = pki.agent_for("db01")
        agents = []
        for name, identity in (("web01", pki.agent), ("db01", db01)):
            d = estate.disk(f"{name}-sdb", 32 * MIB)
            d.mount()
            log = tmp_path / f"{name}-scripts.log"
            agents.append(estate.start_agent(estate.agent_config(
                name, [f'name = "{name}.sdb"\nmode = "tracking"\ndevice = "{d.dev}"\nmount_points = ["{d.mnt}"]'],
                identity=identity, crash_consistent_every_s=3600, multi_vm_group="erp",
                coordinator=f"127.0.0.1:{estate.ps_port}",
                post_scripts=[f'echo "$DR_POINT_KIND $DR_POINT_ID" >> {log}'])))
        wait_for(lambda: len({p.id for p in estate.points("web01.sdb") if p.group_id}
                             & {p.id for p in estate.points("db01.sdb") if p.group_id}) >= 2, 120,
                 "two multi-VM points common to both machines", agent=agents[0])
        # the agents took no points of their own (every 3600 s): each point came from the coordinator
        assert all(p.group_id == "erp" for n in ("web01", "db01") for p in estate.points(f"{n}.sdb"))
        # app points ran the post-scripts with the point's kind and id
        wait_for(lambda: any(p.kind == "app" for p in estate.points("db01.sdb")), 60, "an app point")
        app_ids = {p.id for p in estate.points("db01.sdb") if p.kind == "app"}
        ran = (tmp_path / "db01-scripts.log").read_text().split()
        assert ran[0] == "app" and set(ran[1::2]) & app_ids
    finally:
        estate.close()


def test_a_refused_agent_backs_off_and_stops_on_sigterm(estate: Estate) -> None:
    disk = estate.disk("sdb", 32 * MIB)
    disk.mount()
    config = estate.agent_config("rogue01", [f'name = "rogue01.sdb"\nmode = "tracking"\ndevice = "{disk.dev}"\n'
                                             f'mount_points = ["{disk.mnt}"]'],
                                 identity=estate.pki.rogue_agent, reconnect_initial_s=0.5, reconnect_max_s=30)
    agent = estate.start_agent(config)  # starts although no process server takes it
    wait_for(lambda: "process server is unreachable" in estate.agent_log("rogue01"), 30, "the outage report",
             agent=agent)
    time.sleep(5)
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(15) == 0  # a deadline on the stop, not a measurement
    log = estate.agent_log("rogue01")
    attempts = log.count("unavailable")
    assert 1 <= attempts <= 8, f"{attempts} attempts in about 5 s: no backoff"  # twice a second would be 10+
    assert log.count("process server is unreachable") == 1  # the transition is said once


def test_a_splitter_agent_that_died_compares_the_disk_with_the_replica(estate: Estate, tmp_path: Path) -> None:
    disk = estate.disk("sdb", 16 * MIB)
    run("losetup", "-d", disk.dev)
    config = estate.agent_config("svc02", [f'name = "svc02.sdb"\nmode = "splitter"\ndevice = "{disk.image}"\n'
                                           f'mountpoint = "{tmp_path / "fuse"}"'], crash_consistent_every_s=1)
    replica = tmp_path / "mt/disks/svc02.sdb.img"

    def equal() -> bool:
        return replica.exists() and replica.read_bytes() == disk.image.read_bytes()

    agent = estate.start_agent(config)
    wait_for(lambda: "initial-sync -> protected" in estate.agent_log("svc02"), 60, "protection", agent=agent)
    link = tmp_path / "fuse.dev"
    with open(link, "r+b") as f:
        f.write(os.urandom(4 * MIB))
        os.fsync(f.fileno())
    wait_for(equal, 60, "the replica to equal the disk", agent=agent)
    agent.kill()  # kill -9: what reached the disk after this never reached the stream
    agent.wait(30)
    assert (tmp_path / "state/svc02/svc02.sdb.running").exists()
    for dev in run("losetup", "-j", str(tmp_path / "fuse/svc02.sdb"), "-O", "NAME", "-n").split():
        run("losetup", "-d", dev)
    run("umount", "-l", str(tmp_path / "fuse"))
    with open(disk.image, "r+b") as f:  # changes on the disk the stream never carried
        for off in (0, 5 * MIB + 4096, 15 * MIB):
            f.seek(off)
            f.write(os.urandom(8192))
    assert not equal()
    agent = estate.start_agent(config)
    wait_for(equal, 60, "the restarted agent to bring the replica back", agent=agent)
    agent.terminate()
    assert agent.wait(30) == 0
    log = estate.agent_log("svc02")
    assert "did not stop cleanly" in log and "resync -> protected (resynced against the replica: 6 of 4096" in log
    assert not (tmp_path / "state/svc02/svc02.sdb.running").exists()


def test_an_agent_starts_and_serves_its_disk_while_the_process_server_is_away(estate: Estate,
                                                                               tmp_path: Path) -> None:
    disk = estate.disk("sdb", 32 * MIB)
    run("losetup", "-d", disk.dev)
    assert estate.ps.proc is not None
    estate.ps.proc.send_signal(signal.SIGSTOP)  # away before the agent starts
    try:
        config = estate.agent_config("new01", [f'name = "new01.sdb"\nmode = "splitter"\ndevice = "{disk.image}"\n'
                                               f'mountpoint = "{tmp_path / "fuse"}"'],
                                     crash_consistent_every_s=1, connect_timeout_s=1.0, reconnect_max_s=2.0)
        agent = estate.start_agent(config)
        link = tmp_path / "fuse.dev"
        wait_for(link.exists, 30, "the agent's device", agent=agent)
        run("mkfs.ext4", "-q", "-F", str(link))  # the workload uses its disk at once
        disk.dev = str(link.resolve())
        disk.mount(str(link))
        populate(disk.mnt, seed=8, count=10)
        wait_for(lambda: "process server is unreachable" in estate.agent_log("new01"), 60, "the outage report",
                 agent=agent)
        assert "-> protected" not in estate.agent_log("new01")  # nothing reached the process server
    finally:
        estate.ps.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: "-> protected" in estate.agent_log("new01"), 90, "protection once it is back", agent=agent)
    _converges(estate, tmp_path, "new01.sdb", disk.mnt, agent, "late")
    disk.umount()


def test_an_outage_during_the_initial_sync_heals_and_the_sync_continues(estate: Estate, tmp_path: Path) -> None:
    disk = estate.disk("sdb", 96 * MIB)
    disk.mount()
    with open(disk.mnt / "big.bin", "wb") as f:
        for _ in range(64):
            f.write(os.urandom(MIB))
    disk.umount()
    run("losetup", "-d", disk.dev)
    config = estate.agent_config(
        "sync01", [f'name = "sync01.sdb"\nmode = "splitter"\ndevice = "{disk.image}"\n'
                   f'mountpoint = "{tmp_path / "fuse"}"'],
        crash_consistent_every_s=1, buffer_mb=4, sync_checkpoint_mb=8, io_timeout_s=2.0, connect_timeout_s=1.0,
        reconnect_initial_s=0.2, reconnect_max_s=2.0)
    agent = estate.start_agent(config)
    link = tmp_path / "fuse.dev"
    wait_for(link.exists, 30, "the agent's device", agent=agent)
    disk.dev = str(link.resolve())
    disk.mount(str(link))
    assert estate.ps.proc is not None
    estate.ps.proc.send_signal(signal.SIGSTOP)
    try:
        populate(disk.mnt / "during", seed=9, count=24)  # more than the buffer holds
        wait_for(lambda: "process server is unreachable" in estate.agent_log("sync01"), 60, "the outage report",
                 agent=agent)
        assert "initial-sync -> protected" not in estate.agent_log("sync01")
    finally:
        estate.ps.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: "initial-sync -> protected" in estate.agent_log("sync01"), 120, "the sync to finish",
             agent=agent)
    _converges(estate, tmp_path, "sync01.sdb", disk.mnt, agent, "synced")
    disk.umount()


def test_a_local_spill_carries_an_outage_without_the_bitmap(estate: Estate, tmp_path: Path) -> None:
    disk = estate.disk("sdb", 64 * MIB)
    run("losetup", "-d", disk.dev)
    config = estate.agent_config(
        "spill01", [f'name = "spill01.sdb"\nmode = "splitter"\ndevice = "{disk.image}"\n'
                    f'mountpoint = "{tmp_path / "fuse"}"'],
        crash_consistent_every_s=1, buffer_mb=1, spill_mb=512, io_timeout_s=2.0, connect_timeout_s=1.0,
        reconnect_initial_s=0.2, reconnect_max_s=2.0)
    agent = estate.start_agent(config)
    wait_for(lambda: "initial-sync -> protected" in estate.agent_log("spill01"), 60, "protection", agent=agent)
    link = tmp_path / "fuse.dev"
    disk.dev = str(link.resolve())
    disk.mount(str(link))
    spill = tmp_path / "state/spill01/spill01.sdb.spill"
    assert estate.ps.proc is not None
    writer = Writer(disk.mnt / "load")
    try:
        estate.ps.proc.send_signal(signal.SIGSTOP)
        wait_for(lambda: spill.exists() and spill.stat().st_size > 8 * MIB, 60, "changes in the spill", agent=agent)
        estate.ps.proc.send_signal(signal.SIGCONT)
        wait_for(lambda: "reconnected to the process server" in estate.agent_log("spill01"), 60, "the reconnection",
                 agent=agent)
    finally:
        estate.ps.proc.send_signal(signal.SIGCONT)
        writer.stop()
    assert writer.errors == []
    _converges(estate, tmp_path, "spill01.sdb", disk.mnt, agent, "spilled")
    wait_for(lambda: spill.stat().st_size == 0, 30, "the spill to be emptied", agent=agent)
    disk.umount()
    assert "-> bitmap" not in estate.agent_log("spill01")  # the spill held the whole outage
