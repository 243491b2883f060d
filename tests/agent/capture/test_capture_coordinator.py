"""Multi-VM consistency as deployed: the process server hosts the coordinator; agents dial it.

`dr-agent master-target` and `dr-agent process-server` run as processes from their TOML configs (the
process server's with `[[process_server.groups]]`, as `dr replica configs` renders it); each source
machine is a `GroupMember` in this process with a participant that ships its disks through real
`ProcessServerSink` streams. The master target's catalog is the judge: one bookmark id, tagged with
the group, on every disk of every member, at a consistent cut of a workload whose writes depend on
each other across machines.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from dr_agent.catalog import Catalog, Point
from dr_agent.contract import PS_PORT, ProcessServerHealth, stream_name
from dr_agent.coordination import GroupMember, coordinator_address
from dr_agent.errors import ProtocolError
from dr_agent.process_server import ProcessServer, ProcessServerConfig
from dr_agent.ps_coordinator import GroupConfig
from dr_agent.sink import ProcessServerSink

from dr.cli import cli
from tests.agent.pipeline.pipeline_harness import REPO, service_pair
from tests.conftest import wait_for as shared_wait_for

GROUP = "sharepoint"
MACHINES = ("web01", "app01", "sql01")
DISKS = ("c", "data")
DISK_BYTES = 1 << 20
COUNTER = struct.Struct("<Q")
DEADLINE_S = 60.0  # seconds any wait below may take on a loaded 2-core machine


class Machine:
    """A source machine as a group point sees it: its disks' streams, held by `pause`, marked by `mark`.

    Writes go through `write`, which waits while the machine is paused (the agent's apply path)."""

    def __init__(self, name: str, sinks: list[ProcessServerSink]) -> None:
        self.name, self.sinks = name, sinks
        self._apply = threading.Lock()
        self._held = False
        self._kind = "crash"
        self.stuck = threading.Event()      # set: the next pause blocks until `unstick`
        self._unstuck = threading.Event()
        self.pauses: list[str] = []         # kinds of the pauses asked for
        self.written = 0

    def write(self, n: int) -> None:
        with self._apply:
            for sink in self.sinks:
                sink.write(0, COUNTER.pack(n).ljust(4096, b"\0"))
            self.written = n

    def pause(self, kind: str, point_id: str | None = None) -> None:
        assert point_id, "the point's id is known when it pauses (the pre-scripts' DR_POINT_ID)"
        self.pauses.append(kind)
        if self.stuck.is_set():
            self._unstuck.wait(DEADLINE_S)  # a change in flight that takes far too long
        self._apply.acquire()
        self._held, self._kind = True, kind
        for sink in self.sinks:
            sink.flush()

    def mark(self, bookmark_id: str, group_id: str) -> None:
        assert self._held, "mark() without pause()"
        for sink in self.sinks:
            sink.bookmark(bookmark_id, "app" if self._kind == "app" else "crash", group_id)

    def resume(self) -> None:
        if self._held:
            self._held = False
            self._apply.release()

    def unstick(self) -> None:
        self.stuck.clear()
        self._unstuck.set()


def group_table(members: tuple[str, ...] = MACHINES, *, every_s: float = 1, pause_timeout_s: float = 5,
                hold_timeout_s: float = 30) -> str:
    quoted = ", ".join(f'"{m}"' for m in members)
    return (f'\n[[process_server.groups]]\nname = "{GROUP}"\nmembers = [{quoted}]\n'
            f"crash_consistent_every_s = {every_s}\npause_timeout_s = {pause_timeout_s}\n"
            f"hold_timeout_s = {hold_timeout_s}\n")


def rendered_process_server(root: Path, local: str) -> tuple[str, str, tuple[str, ...]]:
    """process-server.toml as `dr replica configs` renders it for the linux estate's ps-dublin,
    the coordinator of multi-VM group web-tier (whose policy here takes crash points every second),
    with the lines that place it on a machine (listen, identity, cache, master target, metrics)
    taken from `local`, and without its [control] table (no configuration server here); and the
    group's name and members."""
    spec = root / "spec"
    shutil.copytree(REPO / "examples/linux-estate", spec)
    text = (spec / "dr.yaml").read_text()
    start = text.index("  - name: web-tier\n")
    end = text.index("  - name: ", start + 1)
    group = re.sub(r"(?m)^      crash_consistent_every: .*\n", "", text[start:end])
    group = group.replace("      multi_vm_consistency: true\n",
                          "      multi_vm_consistency: true\n      crash_consistent_every: 1s\n", 1)
    (spec / "dr.yaml").write_text(text[:start] + group + text[end:])
    res = CliRunner().invoke(cli, ["replica", "configs", str(spec / "dr.yaml"), "--out", str(root / "configs")])
    assert res.exit_code == 0, res.output
    rendered = (root / "configs/ps-dublin/process-server.toml").read_text()
    here = tomllib.loads(local)["process_server"]
    for key in ("listen", "identity", "cache_dir", "master_target", "master_target_hostname", "metrics"):
        value = f'{key} = "{here[key]}"' if key in here else ""
        rendered = re.sub(rf"(?m)^{key} = .*$", value, rendered)
    rendered = re.sub(r"(?ms)^\[control\]\n.*?(?=^\[|\Z)", "", rendered)
    (group,) = tomllib.loads(rendered)["process_server"]["groups"]
    assert group["crash_consistent_every_s"] == 1
    return rendered, group["name"], tuple(group["members"])


class Site:
    """A master target and a process server (processes), and the group's machines in this process."""

    def __init__(self, root: Path, pki: Any, stack: ExitStack, *, groups: str | None = None) -> None:
        """`groups`: [[process_server.groups]] tables for the process server; None: the rendered
        configuration of a process server that coordinates a group (`rendered_process_server`)."""
        self.root, self.pki, self.stack = root, pki, stack
        self.mt, self.ps, self.ps_port = service_pair(root, pki)
        self.group, self.members = GROUP, MACHINES
        if groups is None:
            text, self.group, self.members = rendered_process_server(root, (root / "ps.toml").read_text())
            (root / "ps.toml").write_text(text)
        else:
            with (root / "ps.toml").open("a") as f:
                f.write(groups)
        self.mt.start()
        stack.callback(self.mt.stop)
        self.ps.start()
        stack.callback(self.ps.stop)

    def machine(self, name: str) -> Machine:
        sinks = []
        for disk in DISKS:
            sink = ProcessServerSink(disk=stream_name(name, disk), size=DISK_BYTES,
                                     servers=[("127.0.0.1", self.ps_port)], identity=self.pki.agent_for(name),
                                     patience_s=DEADLINE_S)
            self.stack.callback(sink.close)
            sinks.append(sink)
        return Machine(name, sinks)

    def member(self, machine: Machine, *, port: int | None = None) -> GroupMember:
        m = GroupMember([("127.0.0.1", port or self.ps_port)], self.pki.agent_for(machine.name), agent=machine.name,
                        group=self.group, participant=machine, server_hostname="127.0.0.1")
        self.stack.callback(m.close)
        return m

    def group_points(self) -> dict[str, list[Point]]:
        """The master target's catalog: point id -> its points on the disks, for this group."""
        cat = Catalog(self.root / "mt/catalog.sqlite")
        try:
            out: dict[str, list[Point]] = {}
            for p in cat.points(self.group):
                out.setdefault(p.id, []).append(p)
            return out
        finally:
            cat.close()

    def complete_points(self) -> int:
        """How many of the group's points are on every disk of every member."""
        streams = {stream_name(m, d) for m in self.members for d in DISKS}
        return sum({p.disk for p in points} == streams for points in self.group_points().values())

    def alerts(self) -> list[dict[str, Any]]:
        import json

        path = self.root / "ps/alerts.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for(what: str, check: Callable[[], bool], timeout: float = DEADLINE_S) -> None:
    shared_wait_for(check, timeout, what)


def dependent_writer(machines: list[Machine], stop: threading.Event) -> threading.Thread:
    """Write n to every machine in order, each write taken before the next: a cross-machine dependency."""
    def run() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            for m in machines:
                m.write(n)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def settled_points(site: Site, members: list[GroupMember], machines: list[Machine]) -> dict[str, list[Point]]:
    """The group's points once no more can start: one member leaves (the group is incomplete), and
    every bookmark sent is applied. The coordinator keeps taking points until then, so the newest
    may have been under way as the member left, its MARK not reaching every disk; such a point is
    left out here (failover never picks a point missing from a disk: dr.failover.points)."""
    members[0].close()
    for m in machines:
        for sink in m.sinks:
            sink.wait_applied(DEADLINE_S)
    found = site.group_points()
    if found:
        newest = max(found, key=lambda i: max(p.time for p in found[i]))
        if len({p.disk for p in found[newest]}) < len(site.members) * len(DISKS):
            del found[newest]
    assert found, "no group point on every disk"
    return found


def counter_at(point: Point) -> int:
    with open(point.snapshot, "rb") as f:
        return int(COUNTER.unpack(f.read(COUNTER.size))[0])


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


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as s:
        yield s


def test_group_points_put_one_id_on_every_disk_of_every_member(tmp_path: Path, pki: Any, stack: ExitStack) -> None:
    site = Site(tmp_path, pki, stack)  # rendered by `dr replica configs`
    machines = [site.machine(name) for name in site.members]
    members = [site.member(m) for m in machines]
    for member in members:
        assert member.wait_connected(DEADLINE_S), f"{member.agent} did not join"
    stop = threading.Event()
    writer = dependent_writer(machines, stop)
    stack.callback(writer.join, 10)
    stack.callback(stop.set)
    streams = {stream_name(m, d) for m in site.members for d in DISKS}
    wait_for("three group points on every disk", lambda: site.complete_points() >= 3)
    stop.set()
    writer.join(10)
    found = settled_points(site, members, machines)

    assert listening_sockets_of_this_process() == []  # the source side only dials
    for point_id, points in found.items():
        assert {p.disk for p in points} == streams, f"point {point_id} is not on every disk"
        assert {(p.group_id, p.kind) for p in points} == {(site.group, "crash")}
        at = {p.disk: counter_at(p) for p in points}
        first, second, third = (at[stream_name(m, "c")] for m in site.members)
        # writes go to the members in order, each taken before the next: a consistent cut never
        # shows a later machine ahead of an earlier one, nor more than one step apart
        assert first >= second >= third >= first - 1, (point_id, first, second, third)
        assert all(at[stream_name(m, "data")] == at[stream_name(m, "c")] for m in site.members)
    assert {k for m in machines for k in m.pauses} == {"crash"}


def test_a_member_that_does_not_pause_aborts_the_point_for_everyone(tmp_path: Path, pki: Any,
                                                                    stack: ExitStack) -> None:
    site = Site(tmp_path, pki, stack, groups=group_table(every_s=1, pause_timeout_s=1))
    machines = [site.machine(name) for name in MACHINES]
    stuck = machines[1]
    stuck.stuck.set()
    members = [site.member(m) for m in machines]
    for member in members:
        assert member.wait_connected(DEADLINE_S)
    wait_for("an aborted point", lambda: any("aborted" in a["message"] for a in site.alerts()))
    aborted = next(a for a in site.alerts() if "aborted" in a["message"])
    assert "app01 did not answer PAUSED" in aborted["message"], aborted
    # the others were resumed: their writes go through while app01 is still stuck
    for m in (machines[0], machines[2]):
        done = threading.Event()
        threading.Thread(target=lambda m=m, done=done: (m.write(7), done.set()), daemon=True).start()
        assert done.wait(DEADLINE_S), f"{m.name} is still held after the abort"
    assert site.group_points() == {}  # MARK is sent only once everyone paused: no id anywhere
    stuck.unstick()
    wait_for("a group point after the stuck member recovered", lambda: site.complete_points() >= 1)
    for points in settled_points(site, members, machines).values():
        assert len(points) == len(MACHINES) * len(DISKS)
    stuck.write(8)  # and the stuck machine runs again


def test_a_missing_member_means_no_group_point_said_once(tmp_path: Path, pki: Any, stack: ExitStack) -> None:
    """In process, to read the process server's health (its heartbeat body)."""
    mt, _ps, _ = service_pair(tmp_path, pki)
    mt.start()
    stack.callback(mt.stop)
    mt_port = int(tomllib.loads(mt.config.read_text())["master_target"]["listen"].rsplit(":", 1)[1])
    ps = ProcessServer(ProcessServerConfig(
        identity=pki.process_server, cache_dir=tmp_path / "ps-inproc", master_target=("127.0.0.1", mt_port),
        name="ps01", groups=(GroupConfig(GROUP, MACHINES, crash_consistent_every_s=0.2),)))
    stack.callback(ps.close)
    site_port = ps.port
    machines = {name: Machine(name, []) for name in MACHINES}
    members = [GroupMember([("127.0.0.1", site_port)], pki.agent_for(name), agent=name, group=GROUP,
                           participant=machines[name], server_hostname="127.0.0.1") for name in MACHINES[:2]]
    for m in members:
        stack.callback(m.close)
    wait_for("both members joined", lambda: all(m.state is not None for m in members))
    wait_for("the problem recorded", lambda: GROUP in ps.health().group_problems)
    time.sleep(1.0)  # five scheduled points come and go without the third member
    health = ps.health()
    assert ProcessServerHealth.from_json(health.to_json()) == health
    assert health.groups == {GROUP: False}
    assert "sql01 not connected" in health.group_problems[GROUP]
    assert health.master_target_reachable
    warnings = [a for a in ps.alerts.read() if a["code"] == "group-point"]
    assert len(warnings) == 1 and "sql01" in warnings[0]["message"]  # said once, not at every schedule
    assert not any(m.connected for m in members)  # so the agents take their own points meanwhile
    assert all(not m.pauses for m in machines.values())

    # a machine that is not a member is refused; the third member completes the group
    outsider = GroupMember([("127.0.0.1", site_port)], pki.agent_for("mail01"), agent="mail01", group=GROUP,
                           participant=Machine("mail01", []), server_hostname="127.0.0.1")
    stack.callback(outsider.close)
    third = GroupMember([("127.0.0.1", site_port)], pki.agent_for("sql01"), agent="sql01", group=GROUP,
                        participant=machines["sql01"], server_hostname="127.0.0.1")
    stack.callback(third.close)
    assert third.wait_connected(DEADLINE_S) and all(m.wait_connected(DEADLINE_S) for m in members)
    wait_for("a group point", lambda: GROUP in ps.health().last_group_points)
    assert ps.health().groups == {GROUP: True} and GROUP not in ps.health().group_problems
    assert not outsider.connected and outsider.state is None
    assert all(m.pauses for m in machines.values())


def test_an_agent_joins_only_as_its_own_machine(tmp_path: Path, pki: Any, stack: ExitStack) -> None:
    site = Site(tmp_path, pki, stack, groups=group_table())
    # web01's certificate (a compromised web01) speaking for app01 in the group
    impostor = GroupMember([("127.0.0.1", site.ps_port)], pki.agent, agent="app01", group=GROUP,
                           participant=Machine("app01", []), server_hostname="127.0.0.1")
    stack.callback(impostor.close)
    refusal = "certificate web01 (machine web01) may not join group sharepoint as app01"
    wait_for("the refusal", lambda: refusal in impostor.problem)
    assert "an agent joins only as its own machine" in impostor.problem
    assert "dr-agent register --name" in impostor.problem
    assert not impostor.connected and impostor.state is None
    log = (tmp_path / "ps.log").read_text()
    assert "refused web01 (role agent, machine web01) to join group sharepoint as app01" in log
    # app01's own certificate joins
    member = site.member(Machine("app01", []))
    wait_for("app01 joined", lambda: member.state is not None and member.state.members["app01"])


def test_members_keep_running_while_the_coordinator_is_unreachable(tmp_path: Path, pki: Any,
                                                                   stack: ExitStack) -> None:
    mt, ps, port = service_pair(tmp_path, pki)  # nothing listens on the process server's port yet
    with (tmp_path / "ps.toml").open("a") as f:
        f.write(group_table(("web01",)))
    machine = Machine("web01", [])
    member = GroupMember([("127.0.0.1", port)], pki.agent, agent="web01", group=GROUP, participant=machine,
                         server_hostname="127.0.0.1")
    stack.callback(member.close)
    for n in range(1, 50):  # the workload is never held by a coordinator that is not there
        machine.write(n)
    assert not member.wait_connected(1.0)
    mt.start()
    stack.callback(mt.stop)
    ps.start()
    stack.callback(ps.stop)
    assert member.wait_connected(DEADLINE_S), "the member did not join once the coordinator came up"
    ps.stop()  # the coordinator goes away again: the member notices, and is never left held
    wait_for("the member to notice", lambda: not member.connected)
    machine.write(99)
    assert machine.written == 99


def test_coordinator_addresses() -> None:
    assert coordinator_address("ps01:9443") == ("ps01", 9443)
    assert coordinator_address("ps01") == ("ps01", PS_PORT)
    with pytest.raises(ProtocolError, match="HOST:PORT"):
        coordinator_address("ps01:https")


def test_a_held_member_resumes_by_itself_when_the_coordinator_falls_silent(tmp_path: Path, pki: Any,
                                                                         stack: ExitStack) -> None:
    """The process server freezes (SIGSTOP) while the group is paused: the member's hold timeout lets
    the workload through without any RESUME."""
    import signal

    site = Site(tmp_path, pki, stack, groups=group_table(("web01",), every_s=0.5, pause_timeout_s=0.5,
                                                         hold_timeout_s=1))
    machine = site.machine("web01")
    held = threading.Event()
    real_pause = machine.pause

    def pause_and_freeze(kind: str, point_id: str | None = None) -> None:
        real_pause(kind, point_id)
        if not held.is_set():
            held.set()
            assert site.ps.proc is not None
            site.ps.proc.send_signal(signal.SIGSTOP)  # the coordinator falls silent mid-point

    machine.pause = pause_and_freeze  # type: ignore[method-assign]
    member = site.member(machine)
    assert member.wait_connected(DEADLINE_S)
    assert held.wait(DEADLINE_S)
    assert site.ps.proc is not None
    stack.callback(site.ps.proc.send_signal, signal.SIGCONT)
    started = time.monotonic()
    blocked = threading.Thread(target=machine.write, args=(1,), daemon=True)
    blocked.start()
    blocked.join(0.3)
    assert blocked.is_alive(), "a paused machine must hold writes"
    blocked.join(DEADLINE_S)  # the hold timeout (1 s) lets it through
    assert not blocked.is_alive() and machine.written == 1
    assert time.monotonic() - started < DEADLINE_S


def test_app_points_on_the_app_schedule_and_a_wrong_coordinator_says_why(tmp_path: Path, pki: Any,
                                                                        stack: ExitStack) -> None:
    mt, _ps, _ = service_pair(tmp_path, pki)
    mt.start()
    stack.callback(mt.stop)
    mt_port = int(tomllib.loads(mt.config.read_text())["master_target"]["listen"].rsplit(":", 1)[1])

    def process_server(name: str, groups: tuple[GroupConfig, ...]) -> ProcessServer:
        ps = ProcessServer(ProcessServerConfig(identity=pki.process_server, cache_dir=tmp_path / name,
                                               master_target=("127.0.0.1", mt_port), name=name, groups=groups))
        stack.callback(ps.close)
        return ps

    coordinating = process_server("ps01", (GroupConfig(GROUP, ("web01",), crash_consistent_every_s=3600,
                                                       app_consistent_every_s=0.3),))
    other = process_server("ps02", ())
    machine = Machine("web01", [])
    member = GroupMember([("127.0.0.1", coordinating.port)], pki.agent, agent="web01", group=GROUP,
                         participant=machine, server_hostname="127.0.0.1")
    stack.callback(member.close)
    wait_for("two app points", lambda: len(machine.pauses) >= 2)
    assert set(machine.pauses) == {"app"}  # the app schedule's points; the crash one is an hour away
    assert member.connected and member.problem == ""

    lost = GroupMember([("127.0.0.1", other.port)], pki.agent, agent="web01", group=GROUP,
                       participant=Machine("web01", []), server_hostname="127.0.0.1")
    stack.callback(lost.close)
    wait_for("the refusal", lambda: "coordinates no multi-VM group" in lost.problem)
    assert not lost.connected and "check `coordinator` in agent.toml" in lost.problem


def test_an_app_point_that_fails_becomes_a_crash_point(tmp_path: Path, pki: Any, stack: ExitStack) -> None:
    """A pre-script that fails on a member costs the group its app point, not its RPO."""
    mt, _ps, _ = service_pair(tmp_path, pki)
    mt.start()
    stack.callback(mt.stop)
    mt_port = int(tomllib.loads(mt.config.read_text())["master_target"]["listen"].rsplit(":", 1)[1])
    ps = ProcessServer(ProcessServerConfig(
        identity=pki.process_server, cache_dir=tmp_path / "ps-inproc", master_target=("127.0.0.1", mt_port),
        groups=(GroupConfig(GROUP, ("web01", "app01"), crash_consistent_every_s=3600, app_consistent_every_s=0.5),)))
    stack.callback(ps.close)

    class PreScriptFails(Machine):
        def pause(self, kind: str, point_id: str | None = None) -> None:
            if kind == "app":
                self.pauses.append(kind)
                raise RuntimeError("pre-script /etc/dr-agent/pre.sh exited 3")
            super().pause(kind, point_id)

    machines = [Machine("web01", []), PreScriptFails("app01", [])]
    for m in machines:
        member = GroupMember([("127.0.0.1", ps.port)], pki.agent_for(m.name), agent=m.name, group=GROUP, participant=m,
                             server_hostname="127.0.0.1")
        stack.callback(member.close)
    wait_for("a crash point after the failed app point", lambda: "crash" in machines[0].pauses)
    wait_for("the crash point taken", lambda: GROUP in ps.health().last_group_points)
    assert machines[1].pauses[:2] == ["app", "crash"]
    alerts = [a["message"] for a in ps.alerts.read() if a["code"] == "group-point"]
    assert any("app01 failed: pre-script /etc/dr-agent/pre.sh exited 3" in a for a in alerts), alerts
