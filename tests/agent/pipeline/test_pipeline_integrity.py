"""Corruption is detected by checksum, never applied, and reported; records and caches recover."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest
from dr_agent.cache import DiskCache
from dr_agent.compress import CODEC_RAW, CODEC_ZSTD, Compressor
from dr_agent.errors import AgentError, CorruptData
from dr_agent.pki import client_context
from dr_agent.records import (
    RECORD_HEADER_SIZE,
    FrameType,
    Kind,
    Record,
    decode_record,
    encode_frame,
)
from dr_agent.transport import dial
from pipeline_harness import MIB, Shadow, TcpProxy

from tests.conftest import wait_for

# Deadline for the process server to find and report a bad record (seconds).
REPORT_TIMEOUT_S = 30


def _dropped(p: Any) -> list[int]:
    return [a["from_seq"] for a in p.ps.alerts.read() if a["code"] == "dropped"]


def test_record_round_trip_and_every_flipped_byte_is_caught() -> None:
    rec = Record(Kind.WRITE, 42, 8192, 5, CODEC_RAW, b"hello")
    blob = rec.encode()
    assert decode_record(blob)[0] == rec
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x10
        with pytest.raises((CorruptData, EOFError)):
            decode_record(bytes(bad))


def test_compression_stores_raw_when_it_does_not_shrink() -> None:
    c = Compressor()
    noise = os.urandom(65536)
    assert c.compress(noise) == (CODEC_RAW, noise)
    codec, packed = c.compress(bytes(65536))
    assert codec == CODEC_ZSTD and len(packed) < 100
    assert c.decompress(codec, packed, 65536) == bytes(65536)
    with pytest.raises(CorruptData):
        c.decompress(codec, packed, 4096)


def test_cache_truncates_a_torn_tail_and_reports_a_flipped_byte(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, "d0", segment_bytes=1 << 20)
    cache.append([Record(Kind.WRITE, s, s * 4096, 4096, CODEC_RAW, bytes([s]) * 4096) for s in range(1, 11)])
    seg = next((tmp_path / "d0").glob("*.seg"))
    cache.close()
    full = seg.stat().st_size
    with seg.open("ab") as f:  # a crash in the middle of an append: half a record
        f.write(Record(Kind.WRITE, 11, 0, 4096, CODEC_RAW, b"x" * 4096).encode()[:1000])
    reopened = DiskCache(tmp_path, "d0")
    assert reopened.last_seq == 10 and reopened.truncated_bytes == 1000 and not reopened.corruptions
    assert seg.stat().st_size == full
    reopened.close()

    data = bytearray(seg.read_bytes())
    data[full - 100] ^= 0xFF  # inside record 10's payload
    seg.write_bytes(bytes(data))
    scanned = DiskCache(tmp_path, "d0")
    assert scanned.corruptions and "seq 10" in scanned.corruptions[0]
    assert [r.seq for r in scanned.read_from(1, 1 << 30)[:9]] == list(range(1, 10))
    with pytest.raises(CorruptData):
        scanned.read_from(10, 1 << 30)
    scanned.close()


def test_cache_drops_from_a_bad_record_and_remembers_it_across_a_restart(tmp_path: Path) -> None:
    def rec(s: int) -> Record:
        return Record(Kind.WRITE, s, s * 4096, 4096, CODEC_RAW, bytes([s % 256]) * 4096)

    cache = DiskCache(tmp_path, "d0", segment_bytes=64 * 1024)  # 15 records a segment: 4 segments
    cache.append([rec(s) for s in range(1, 61)])
    assert len(list((tmp_path / "d0").glob("*.seg"))) == 4
    assert cache.drop_from(23) == 38
    assert cache.last_seq == cache.durable_seq == 22 and cache.resync_from == 23
    assert len(list((tmp_path / "d0").glob("*.seg"))) == 2  # the segment holding 23 ends before it
    assert [r.seq for r in cache.read_from(1, 1 << 30)] == list(range(1, 23))
    cache.close()

    again = DiskCache(tmp_path, "d0", segment_bytes=64 * 1024)
    assert again.last_seq == 22 and again.resync_from == 23 and again.resync_mark == 1 and not again.corruptions
    again.append([rec(s) for s in range(23, 31)])  # the stream goes on from the dropped record
    assert [r.seq for r in again.read_from(20, 1 << 30)] == list(range(20, 31))
    assert again.drop_from(28) == 3 and again.resync_from == 23 and again.resync_mark == 2
    assert not again.resynced(1)  # a resync that began before the second drop does not cover it
    assert again.resynced(2)
    again.close()
    assert DiskCache(tmp_path, "d0").resync_from is None


def test_forwarded_cache_bytes_are_the_verified_records_and_stop_before_a_bad_one(tmp_path: Path) -> None:
    """The process server forwards cached bytes without decoding them: what it reads must be the
    records exactly as encoded, each verified, and a byte flipped on disk after the scan (so no
    hole is known) must end the read before that record, or fail it when it is the first."""
    recs = [Record(Kind.WRITE, s, s * 4096, 4096, CODEC_RAW, bytes([s]) * 4096) for s in range(1, 9)]
    cache = DiskCache(tmp_path, "d0", segment_bytes=5 * (RECORD_HEADER_SIZE + 4096))  # two segments
    cache.append(recs)
    parts, last = cache.read_raw_from(2, 1 << 30)
    assert last == 8 and b"".join(parts) == b"".join(r.encode() for r in recs[1:])
    parts, last = cache.read_raw_from(1, 2 * (RECORD_HEADER_SIZE + 4096))  # whole records only
    assert last == 2 and b"".join(parts) == recs[0].encode() + recs[1].encode()
    seg = sorted((tmp_path / "d0").glob("*.seg"))[0]
    data = bytearray(seg.read_bytes())
    data[-100] ^= 0x01  # inside seq 5, the first segment's last record
    seg.write_bytes(bytes(data))
    parts, last = cache.read_raw_from(1, 1 << 30)
    assert last == 4 and b"".join(parts) == b"".join(r.encode() for r in recs[:4])
    with pytest.raises(CorruptData):
        cache.read_raw_from(last + 1, 1 << 30)
    cache.close()


def _behind_a_proxy(make_pipeline: Any) -> tuple[Any, TcpProxy]:
    """A pipeline whose process server reaches the master target through a proxy that can be cut."""
    proxies: list[TcpProxy] = []

    def via_proxy(port: int) -> int:
        proxies.append(TcpProxy(port))
        return proxies[0].port

    return make_pipeline(mt_port=via_proxy), proxies[0]


def _corrupt_last_write(cache_dir: Path) -> None:
    seg = sorted(cache_dir.glob("*.seg"))[0]
    data = bytearray(seg.read_bytes())
    data[-5000] ^= 0x01  # in the last write's payload
    seg.write_bytes(bytes(data))


def test_flipped_byte_in_a_cache_segment_is_never_forwarded_and_the_agent_resends(
        make_pipeline: Any, tmp_path: Path) -> None:
    p, proxy = _behind_a_proxy(make_pipeline)
    proxy.cut()
    size = 8 * MIB
    shadow = Shadow(size)
    sink = p.sink("c01.disk0", size)
    rng = random.Random(9)
    for i in range(6):
        shadow.write(sink, i * 65536, rng.randbytes(65536))
    sink.flush()
    corrupt_seq = sink.seq - 1  # the last write; the flush after it is the last record
    _corrupt_last_write(tmp_path / "ps/c01.disk0")
    proxy.restore()
    wait_for(lambda: _dropped(p), REPORT_TIMEOUT_S, "the process server to drop the corrupt record")
    alerts = p.ps.alerts.read()
    corrupt = [a for a in alerts if a["code"] == "corrupt"]
    assert corrupt and "checksum" in corrupt[0]["message"] and f"seq {corrupt_seq}" in corrupt[0]["message"]
    assert [a["from_seq"] for a in alerts if a["code"] == "dropped"] == [corrupt_seq]
    # The agent still holds the records (the master target never applied them): it resends them.
    sink.wait_applied(30)
    assert (tmp_path / "mt/disks/c01.disk0.img").read_bytes() == bytes(shadow.data)
    assert "c01.disk0" not in p.ps.health().resync_from  # the resend healed the gap
    assert any(a["code"] == "resent" for a in p.ps.alerts.read())
    assert sink.fallback is None
    proxy.close()


def test_a_dropped_record_the_agent_no_longer_holds_heals_by_resync(
        make_pipeline: Any, pki: Any, tmp_path: Path) -> None:
    from dr_agent.heal import resync_after_fallback

    p, proxy = _behind_a_proxy(make_pipeline)
    size = 8 * MIB
    disk = tmp_path / "c02.img"
    disk.write_bytes(bytes(size))
    sink = p.sink("c02.disk0", size)
    rng = random.Random(10)
    with open(disk, "r+b") as f:
        for i in range(8):  # the initial copy reaches the replica
            data = rng.randbytes(MIB)
            f.seek(i * MIB)
            f.write(data)
            sink.write(i * MIB, data)
        sink.flush()
        sink.wait_applied(30)
        proxy.cut()
        for i in range(6):  # cached, not applied: the link to the master target is cut
            data = rng.randbytes(65536)
            f.seek(i * 65536)
            f.write(data)
            sink.write(i * 65536, data)
        sink.flush()
    sink.close()  # the agent restarts: it holds nothing of the stream any more
    dropped_seq = sink.seq - 1
    _corrupt_last_write(tmp_path / "ps/c02.disk0")
    proxy.restore()
    assert wait_for(lambda: _dropped(p), REPORT_TIMEOUT_S, "the process server to drop the corrupt record") == [
        dropped_seq]
    # No agent holds the record: the operator sees the gap until a resync heals it.
    assert p.ps.health().resync_from == {"c02.disk0": dropped_seq}

    again = p.sink("c02.disk0", size)
    with pytest.raises(AgentError):  # the WELCOME says resync: the sink refuses changes until then
        again.write(0, bytes(4096))
    assert again.fallback is not None and again.fallback.resync and again.fallback.from_seq == dropped_seq
    assert again.dirty == [(0, 4096)]  # kept as a dirty range, never shipped
    result = resync_after_fallback(again, disk, servers=[("127.0.0.1", p.ps.port)], identity=pki.agent_for("c02"))
    again.wait_applied(30)
    assert result.blocks_differing == 16 and result.bytes_sent == 65536  # only the lost write's blocks
    assert (tmp_path / "mt/disks/c02.disk0.img").read_bytes() == disk.read_bytes()
    assert "c02.disk0" not in p.ps.health().resync_from
    assert any(a["code"] == "resynced" for a in p.ps.alerts.read())
    again.close()
    proxy.close()


def test_flipped_byte_in_a_frame_is_refused_and_reported(make_pipeline: Any, pki: Any) -> None:
    p = make_pipeline()
    conn = dial("127.0.0.1", p.ps.port, client_context(pki.agent_for("f01")))
    conn.send_json(FrameType.HELLO, {"disk": "f01.disk0", "size": MIB})
    assert conn.recv_json(FrameType.WELCOME)["durable"] == 0
    frame = bytearray(encode_frame(FrameType.RECORDS,
                                   Record(Kind.WRITE, 1, 0, 4096, CODEC_RAW, b"z" * 4096).encode()))
    frame[20 + RECORD_HEADER_SIZE + 7] ^= 0x04
    conn.send(bytes(frame))
    with pytest.raises(AgentError, match="checksum"):
        conn.recv_json(FrameType.ACK)
    conn.close()
    assert p.ps.health().backlog_bytes.get("f01.disk0", 0) == 0  # nothing of the bad frame was cached
    assert any(a["code"] == "corrupt" for a in p.ps.alerts.read())
