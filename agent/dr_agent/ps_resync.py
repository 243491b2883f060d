"""The process server's resync relay: an agent's block-hash requests, answered by the master target.

A resync compares the source disk with the replica block by block (xxh3-128 digests). The agent
asks its process server; the process server relays each request to the master target once every
change it cached for the disk is applied there, so the digests describe the replica as of
everything the agent sent before asking.
"""

from __future__ import annotations

import threading

from dr_agent.cache import DiskCache
from dr_agent.contract import Welcome
from dr_agent.errors import ProtocolError
from dr_agent.ps_forward import MasterTargetLink
from dr_agent.records import FrameType
from dr_agent.transport import Connection

# Seconds a hash request waits for the master target to apply what is cached before it.
CATCH_UP_TIMEOUT_S = 300.0


def relay_hashes(conn: Connection, disk: str, cache: DiskCache, link: MasterTargetLink,
                 stop: threading.Event) -> None:
    """Relay `conn`'s HASHES requests for `disk` to the master target until either side ends."""
    up, _ = link.hello(disk, cache.disk_size, purpose="hashes")
    try:
        conn.send_msg(FrameType.WELCOME, Welcome(applied=cache.acked_seq, durable=cache.durable_seq))
        while not stop.is_set():
            ftype, payload = conn.recv()
            if ftype != FrameType.HASHES:
                raise ProtocolError(f"expected HASHES, got {ftype.name}")
            with cache.changed:  # the replica must hold every change this agent sent first
                ok = cache.changed.wait_for(lambda: cache.acked_seq >= cache.durable_seq,
                                            timeout=CATCH_UP_TIMEOUT_S)
            if not ok:
                conn.refuse("the master target is not catching up")
                return
            up.send_payload(FrameType.HASHES, payload)
            rtype, reply = up.recv()
            if rtype != FrameType.HASHES:
                raise ProtocolError(f"master target answered {rtype.name} to HASHES")
            conn.send_payload(FrameType.HASHES, reply)
    finally:
        up.close()
