"""Multi-VM consistency: agents dial a coordinator; one bookmark id in every stream, or none."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from capture_helpers import MiB, need_root_tools
from dr_agent.capture.consistency import (
    HELLO,
    PAUSE,
    PAUSED,
    Coordinator,
    CoordinatorClient,
    recv_frame,
    send_frame,
    tcp_connector,
    tcp_listener,
)
from dr_agent.capture.errors import CoordinationAborted
from dr_agent.capture.filetarget import FileTarget, ReceivedBookmark
from dr_agent.capture.splitter import Splitter
from dr_agent.errors import CorruptData

GROUP = "sharepoint"
COUNTER = struct.Struct("<Q")
POINTS = 30  # group points taken under a running dependent writer


@dataclass
class Vm:
    """One source machine: a disk behind a splitter, its replica, its agent's coordinator client."""

    name: str
    splitter: Splitter
    target: FileTarget
    fd: int
    at_bookmark: dict[str, int]  # bookmark id -> the counter in the replica when the bookmark arrived
    client: CoordinatorClient | None = None

    def write_counter(self, n: int) -> None:
        # the FUSE file is direct_io: when pwrite returns, the splitter has applied the write to
        # the disk and handed it to the sink, so the next machine's write depends on this one
        os.pwrite(self.fd, COUNTER.pack(n).ljust(4096, b"\0"), 0)


@pytest.fixture
def vms(tmp_path: Path) -> Iterator[list[Vm]]:
    need_root_tools(fuse=True)
    with ExitStack() as stack:
        machines = []
        for name in ("web01", "app01", "sql01"):
            base = tmp_path / name
            (base / "fuse").mkdir(parents=True)
            backing, replica = base / "disk.img", base / "replica.img"
            with open(backing, "wb") as f:
                f.truncate(4 * MiB)
            seen: dict[str, int] = {}

            def on_bookmark(mark: ReceivedBookmark, replica: Path = replica, seen: dict[str, int] = seen) -> None:
                with open(replica, "rb") as f:
                    seen[mark.bookmark_id] = COUNTER.unpack(f.read(8))[0]

            target = stack.enter_context(FileTarget(replica, 4 * MiB, on_bookmark=on_bookmark))
            splitter = stack.enter_context(Splitter(backing, base / "fuse", target, name=name))
            fd = os.open(splitter.path, os.O_RDWR)
            stack.callback(os.close, fd)
            machines.append(Vm(name, splitter, target, fd, seen))
        yield machines
        for vm in machines:
            if vm.client is not None:
                vm.client.close()


class SlowLinkSocket(socket.socket):
    """A TCP connection whose every received message arrives `delay` seconds late (a long WAN link)."""

    delay = 0.02  # seconds

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        time.sleep(self.delay)
        return data


def slow_connector(host: str, port: int) -> Callable[[], socket.socket]:
    def connect() -> socket.socket:
        sock = SlowLinkSocket(socket.AF_INET, socket.SOCK_STREAM)
        sock.connect((host, port))
        return sock
    return connect


def connect_all(coordinator: Coordinator, vms: list[Vm]) -> None:
    """Every agent dials the coordinator; the last one over a slow link (its MARK arrives late:
    without the pause phase the other machines would run ahead meanwhile)."""
    host, port = coordinator.address
    for vm in vms:
        connect = slow_connector(host, port) if vm is vms[-1] else tcp_connector(host, port)
        vm.client = CoordinatorClient(connect, agent_id=vm.name, group_id=GROUP,
                                      participants=[vm.splitter], retry_interval=0.1)
        vm.client.__enter__()
    coordinator.wait_for_agents(GROUP, [vm.name for vm in vms], timeout=10)


def dependent_writer(vms: list[Vm], stop: threading.Event) -> threading.Thread:
    """Write n to every disk in order, each completed before the next: a cross-machine dependency."""
    def run() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            for vm in vms:
                vm.write_counter(n)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_group_point_puts_one_id_in_every_stream_at_a_consistent_cut(vms: list[Vm]) -> None:
    with Coordinator(tcp_listener()) as coordinator:
        connect_all(coordinator, vms)
        stop = threading.Event()
        writer = dependent_writer(vms, stop)
        points = []
        try:
            for _ in range(POINTS):
                time.sleep(0.01)
                points.append(coordinator.checkpoint(GROUP, timeout=5))
        finally:
            stop.set()
            writer.join(10)
    for point in points:
        assert sorted(point.agents) == sorted(vm.name for vm in vms)
        counters = [vm.at_bookmark[point.bookmark_id] for vm in vms]
        # writes go web01 -> app01 -> sql01, each completed first: a consistent cut never shows a later
        # machine ahead of an earlier one, nor more than one step apart
        assert counters[0] >= counters[1] >= counters[2] >= counters[0] - 1, counters
    for vm in vms:
        marks = vm.target.received.bookmarks
        assert [m.bookmark_id for m in marks] == [p.bookmark_id for p in points]
        assert {m.group_id for m in marks} == {GROUP}
    assert points[-1].paused_for < 5


def test_an_agent_that_cannot_pause_in_time_aborts_the_point_for_everyone(vms: list[Vm]) -> None:
    stuck = vms[1]
    with Coordinator(tcp_listener()) as coordinator:
        connect_all(coordinator, vms)
        released = threading.Event()

        def hold_apply_path() -> None:  # a change in flight that takes far too long
            with stuck.splitter.exclusive():
                released.wait(10)

        holder = threading.Thread(target=hold_apply_path, daemon=True)
        holder.start()
        time.sleep(0.05)
        started = time.monotonic()
        with pytest.raises(CoordinationAborted, match=r"app01 did not answer PAUSED"):
            coordinator.checkpoint(GROUP, bookmark_id="aborted-point", timeout=0.5)
        assert time.monotonic() - started < 3
        # the others were resumed: their writes go through while app01 is still stuck
        for vm in (vms[0], vms[2]):
            done = threading.Event()
            threading.Thread(target=lambda vm=vm, done=done: (vm.write_counter(7), done.set()), daemon=True).start()
            assert done.wait(5), f"{vm.name} is still held after the abort"
        released.set()
        holder.join(5)
        point = coordinator.checkpoint(GROUP, timeout=5)
    for vm in vms:
        ids = [m.bookmark_id for m in vm.target.received.bookmarks]
        assert ids == [point.bookmark_id], f"{vm.name}: {ids}"
    stuck.write_counter(8)  # and the stuck machine runs again


def test_an_agent_held_by_a_silent_coordinator_resumes_by_itself(vms: list[Vm]) -> None:
    vm = vms[0]
    listener = tcp_listener()
    host, port = listener.getsockname()[:2]
    client = CoordinatorClient(tcp_connector(host, port), agent_id=vm.name, group_id=GROUP,
                               participants=[vm.splitter], retry_interval=0.1)
    with listener, client:
        conn, _ = listener.accept()
        with conn:
            assert recv_frame(conn)[0] == HELLO
            send_frame(conn, PAUSE, {"point": "p1", "hold_timeout": 0.5})
            assert recv_frame(conn) == (PAUSED, {"point": "p1"})
            blocked_write = threading.Thread(target=vm.write_counter, args=(1,), daemon=True)
            blocked_write.start()
            blocked_write.join(0.2)
            assert blocked_write.is_alive(), "a paused disk must hold writes"
            blocked_write.join(5)  # the hold timeout (0.5 s) lets it through without any RESUME
            assert not blocked_write.is_alive()
            assert vm.target.received.bookmarks == []


def test_a_corrupted_control_frame_is_detected() -> None:
    a, b = socket.socketpair()
    with a, b:
        send_frame(a, HELLO, {"agent_id": "web01", "group_id": GROUP})
        frame = bytearray(b.recv(4096))
        frame[-3] ^= 0x01
        a.sendall(bytes(frame))
        with pytest.raises(CorruptData, match="CRC-32"):
            recv_frame(b)


COORDINATOR_PROCESS = """
import sys
from dr_agent.capture.consistency import Coordinator, tcp_listener
with Coordinator(tcp_listener()) as coordinator:
    print(coordinator.address[1], flush=True)
    coordinator.wait_for_agents("sharepoint", ["web01"], timeout=20)
    print(coordinator.checkpoint("sharepoint", timeout=10).bookmark_id, flush=True)
    sys.stdin.readline()
"""


def listening_sockets_of_this_process() -> list[str]:
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: TCP_LISTEN
                    listening.append(f"{table}: {fields[1]}")
    return listening


def test_the_source_side_dials_and_listens_on_nothing(vms: list[Vm]) -> None:
    vm = vms[0]
    coordinator = subprocess.Popen([sys.executable, "-c", COORDINATOR_PROCESS], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True)
    assert coordinator.stdin is not None and coordinator.stdout is not None
    try:
        port = int(coordinator.stdout.readline())
        client = CoordinatorClient(tcp_connector("127.0.0.1", port), agent_id=vm.name, group_id=GROUP,
                                   participants=[vm.splitter], retry_interval=0.1)
        with client:
            bookmark_id = coordinator.stdout.readline().strip()
            assert client.connected.is_set()
            assert listening_sockets_of_this_process() == []
            coordinator.stdin.write("done\n")
            coordinator.stdin.flush()
    finally:
        coordinator.kill()
        coordinator.wait()
    assert [m.bookmark_id for m in vm.target.received.bookmarks] == [bookmark_id]


def test_group_point_over_mutual_tls_with_a_tracking_mode_machine(vms: list[Vm], loop_file, tracefs,  # type: ignore[no-untyped-def]
                                                                    pki, tmp_path: Path) -> None:
    """A splitter machine and a tracking-mode machine in one group, over TLS with client
    certificates from the registration CA; an agent with another CA's certificate is refused."""
    from capture_helpers import first_difference, mkfs_ext4, run
    from dr_agent.capture.tracking import TrackingAgent
    from dr_agent.pki import Identity, client_context, server_context

    web = vms[0]
    _, dev = loop_file(32 * MiB)
    mkfs_ext4(dev)
    mnt = tmp_path / "db01"
    mnt.mkdir()
    run("mount", dev, str(mnt))
    replica = tmp_path / "db01-replica.img"
    mismatches: list[str] = []

    def frozen_check(mark: ReceivedBookmark) -> None:
        if first_difference(dev, replica) is not None:
            mismatches.append(mark.bookmark_id)

    server_ctx = server_context(pki.process_server)

    def tls(ident: Identity) -> Callable[[], socket.socket]:
        ctx = client_context(ident)
        def connect() -> socket.socket:
            return ctx.wrap_socket(socket.create_connection((host, port), timeout=5), server_hostname="127.0.0.1")
        return connect

    try:
        with FileTarget(replica, 32 * MiB, on_bookmark=frozen_check) as db_target, \
                TrackingAgent(dev, [mnt], db_target, db_target) as db, \
                Coordinator(tcp_listener(), wrap=lambda s: server_ctx.wrap_socket(s, server_side=True)) as coordinator:
            db.start()
            host, port = coordinator.address
            with CoordinatorClient(tls(pki.agent), agent_id="web01", group_id=GROUP,
                                   participants=[web.splitter], retry_interval=0.1), \
                    CoordinatorClient(tls(pki.agent), agent_id="db01", group_id=GROUP,
                                      participants=[db], retry_interval=0.1), \
                    CoordinatorClient(tls(pki.rogue_agent), agent_id="rogue", group_id=GROUP,
                                      participants=[vms[1].splitter], retry_interval=0.1):
                coordinator.wait_for_agents(GROUP, ["web01", "db01"], timeout=10)
                (mnt / "orders.db").write_bytes(os.urandom(2 * MiB))
                web.write_counter(41)
                point = coordinator.checkpoint(GROUP, timeout=5)
                with pytest.raises(CoordinationAborted, match="rogue"):
                    coordinator.wait_for_agents(GROUP, ["rogue"], timeout=1)
    finally:
        run("umount", str(mnt))
    assert sorted(point.agents) == ["db01", "web01"]
    assert [m.bookmark_id for m in db_target.received.bookmarks] == [point.bookmark_id]
    assert [(m.bookmark_id, m.group_id) for m in web.target.received.bookmarks] == [(point.bookmark_id, GROUP)]
    assert web.at_bookmark[point.bookmark_id] == 41
    assert vms[1].target.received.bookmarks == []
    assert mismatches == []
