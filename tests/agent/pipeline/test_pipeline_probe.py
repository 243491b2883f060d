"""An agent's WELCOME never waits for the master target's stream connection of its own disk.

The master target takes one stream connection per disk; the process server's forwarder holds it
while the disk's cache is empty. An agent reconnecting then gets a WELCOME that needs to know where
the replica stands: the process server asks its forwarder, or probes the master target with a HELLO
the master target answers without the stream, all within PROBE_TIMEOUT_S; it never queues behind
the forwarder (which used to cost ~35 s: the master target's wait for the stream's lock).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dr_agent.pki import client_context
from dr_agent.records import FrameType
from dr_agent.transport import dial
from pipeline_harness import MIB, service_pair

from tests.conftest import wait_for

# Seconds an agent's HELLO may wait for its WELCOME here: well over the process server's whole
# probe (ps_forward.PROBE_TIMEOUT_S, 3 s) and well under the master target's wait for a disk's
# stream connection (transport.IDLE_TIMEOUT_S + 5 = 35 s), which the probe must never join.
WELCOME_WITHIN_S = 15.0


def _established_to(port: int) -> int:
    """Established TCP connections to 127.0.0.1:`port` (from /proc/net/tcp)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[2].upper() == f"0100007F:{port:04X}" and fields[3] == "01":
            count += 1
    return count


def _hello(port: int, identity: Any, disk: str, size: int) -> dict[str, Any]:
    conn = dial("127.0.0.1", port, client_context(identity))
    try:
        conn.sock.settimeout(WELCOME_WITHIN_S)
        conn.send_json(FrameType.HELLO, {"disk": disk, "size": size})
        return conn.recv_json(FrameType.WELCOME)
    finally:
        conn.close()


def test_a_reconnecting_agent_s_welcome_does_not_wait_for_the_forwarder_s_stream(tmp_path: Path, pki: Any) -> None:
    mt, ps, ps_port = service_pair(tmp_path, pki)
    mt_port = int((tmp_path / "mt.toml").read_text().split('listen = "127.0.0.1:')[1].split('"')[0])
    mt.start()
    ps.start()
    try:
        disk, size = "web01.sdb", 8 * MIB
        assert _hello(ps_port, pki.agent, disk, size)["applied"] == 0  # a disk new to both: the stream starts
        # The disk's forwarder now holds the master target's stream connection (nothing to send yet).
        wait_for(lambda: _established_to(mt_port) >= 1, 30, "the forwarder's stream to the master target")
        for _ in range(2):  # the agent reconnects (its cache at the process server is still empty)
            welcome = _hello(ps_port, pki.agent, disk, size)
            assert welcome["applied"] == 0 and welcome["durable"] == 0
        assert "being received on another connection" not in (tmp_path / "mt.log").read_text()
    finally:
        ps.stop()
        mt.stop()


def test_the_master_target_answers_a_probe_while_the_disk_is_streamed(tmp_path: Path, pki: Any) -> None:
    """The probe itself, as a process server sends it: a WELCOME within PROBE_TIMEOUT_S while
    another connection holds the disk's stream."""
    from dr_agent.ps_forward import MasterTargetLink

    mt, _ps, _ = service_pair(tmp_path, pki)
    mt_port = int((tmp_path / "mt.toml").read_text().split('listen = "127.0.0.1:')[1].split('"')[0])
    mt.start()
    try:
        link = MasterTargetLink(("127.0.0.1", mt_port), client_context(pki.process_server), name="ps01")
        stream, applied = link.hello("web01.sdb", 8 * MIB)  # holds the disk's one stream connection
        try:
            assert applied == 0
            assert link.applied("web01.sdb", 8 * MIB) == 0
        finally:
            stream.close()
    finally:
        mt.stop()
