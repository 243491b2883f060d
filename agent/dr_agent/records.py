"""Self-describing bytes: change records (cache, wire) and wire frames.

A record is one change of one disk stream, numbered by a per-disk sequence number::

    offset size  field
    0      4     magic b"DRRC"
    4      1     version (1)
    5      1     kind: 1 write, 2 discard (reads back as zeros), 3 flush (barrier), 4 bookmark
    6      1     codec of the payload: 0 raw, 1 zstd (dr_agent.compress)
    7      1     reserved (0)
    8      4     payload length (bytes, as stored)
    12     8     sequence number (per disk, from 1, contiguous)
    20     8     disk offset (bytes)
    28     8     logical length (bytes: written data, discarded range; 0 for flush; JSON length for bookmark)
    36     8     xxh3-64 of bytes 0..35 and the payload

A frame is one message on a TLS connection::

    0      4     magic b"DRFR"
    4      1     version (1)
    5      1     type (FrameType)
    6      2     reserved (0)
    8      4     payload length (bytes)
    12     8     xxh3-64 of the payload

Nothing is applied to a replica unless its record checksum verified on the hop that applies it.
"""

from __future__ import annotations

import enum
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import xxhash

from dr_agent.errors import CorruptData

RECORD_MAGIC = b"DRRC"
RECORD_VERSION = 1
RECORD_HEADER = struct.Struct("<4sBBBBIQQQQ")
RECORD_HEADER_SIZE = RECORD_HEADER.size  # 44 bytes
# Largest payload a record may carry (bytes): FUSE hands at most 1 MiB per write; 64 MiB bounds a
# corrupt length field so a reader never allocates gigabytes.
MAX_RECORD_PAYLOAD = 64 * 1024 * 1024

FRAME_MAGIC = b"DRFR"
FRAME_VERSION = 1
FRAME_HEADER = struct.Struct("<4sBBHIQ")
FRAME_HEADER_SIZE = FRAME_HEADER.size  # 20 bytes
MAX_FRAME_PAYLOAD = 80 * 1024 * 1024


class Kind(enum.IntEnum):
    WRITE = 1
    DISCARD = 2
    FLUSH = 3
    BOOKMARK = 4


_KINDS = frozenset(int(k) for k in Kind)


class FrameType(enum.IntEnum):
    HELLO = 1      # JSON: who is dialling, for which disk
    WELCOME = 2    # JSON: the receiver's last durable sequence for that disk
    RECORDS = 3    # concatenated records, in sequence order
    ACK = 4        # JSON: {"durable": seq, "applied": seq}
    FALLBACK = 5   # JSON: the cache is full; the agent tracks changes in a bitmap from "from_seq"
    ERROR = 6      # JSON: {"error": "..."}; the connection closes after it
    PING = 7       # JSON: keepalive / ask for an ACK
    HASHES = 8     # JSON request {"first_block", "count", "block_size"}; reply: 16-byte xxh3-128 digests
    RESYNCED = 9   # JSON {"from": seq, "mark": n}: the agent resynced the disk after drops up to number n
    # The multi-VM coordinator (hosted by the process server; bodies: dr_agent.contract, "coordinator")
    JOIN = 10      # agent -> coordinator, first frame: {"agent", "group"}
    GROUP = 11     # coordinator -> agent: accepted, and whenever membership changes; {"group", "members"}
    PAUSE = 12     # coordinator -> agent: hold the apply path; {"point", "kind", "hold_timeout"}
    PAUSED = 13    # agent -> coordinator: {"point"}
    MARK = 14      # coordinator -> agent: one bookmark id on every disk; {"point", "bookmark_id", "group_id"}
    MARKED = 15    # agent -> coordinator: {"point"}
    RESUME = 16    # coordinator -> agent: let writes through; {"point"}
    ABORT = 17     # coordinator -> agent: no point this time, resume; {"point"}
    RESUMED = 18   # agent -> coordinator: {"point"}
    FAILED = 19    # agent -> coordinator: a step failed; {"point", "reason"}


def _checksum(header_without_sum: bytes | memoryview, payload: bytes | memoryview) -> int:
    h = xxhash.xxh3_64()
    h.update(header_without_sum)
    h.update(payload)
    return h.intdigest()


@dataclass(frozen=True, slots=True)
class Record:
    kind: Kind
    seq: int
    offset: int
    length: int
    codec: int
    payload: bytes | memoryview  # a view into a received frame when decoded with views=True

    def header(self) -> bytes:
        """The 44-byte header, checksum included: `header() + payload` is the encoded record."""
        head = RECORD_HEADER.pack(
            RECORD_MAGIC, RECORD_VERSION, self.kind, self.codec, 0, len(self.payload),
            self.seq, self.offset, self.length, 0,
        )[:-8]
        return head + struct.pack("<Q", _checksum(head, self.payload))

    def encode(self) -> bytes:
        return self.header() + self.payload

    def parts(self) -> tuple[bytes, bytes | memoryview]:
        """(header, payload): the encoded record without copying the payload (for writev, send)."""
        return self.header(), self.payload

    @property
    def size(self) -> int:
        return RECORD_HEADER_SIZE + len(self.payload)

    def bookmark(self) -> dict[str, Any]:
        """The bookmark's fields: id, kind (crash/app), group (multi-VM id or None), time (epoch s)."""
        if self.kind != Kind.BOOKMARK:
            raise ValueError(f"record {self.seq} is a {self.kind.name}, not a bookmark")
        value: dict[str, Any] = json.loads(bytes(self.payload))
        return value


def bookmark_record(seq: int, bookmark_id: str, kind: str, group_id: str | None, time: float) -> Record:
    body = json.dumps({"id": bookmark_id, "kind": kind, "group": group_id, "time": time}).encode()
    return Record(Kind.BOOKMARK, seq, 0, len(body), 0, body)


def verify_record(buf: bytes | bytearray | memoryview, pos: int = 0) -> tuple[int, int]:
    """(sequence, position after) of the record at `pos`, checked as `decode_record` checks it.

    Nothing is copied: the process server forwards cached records as the verified bytes they are.
    Raises CorruptData, or EOFError when short."""
    view = memoryview(buf)
    seq, end, _ = _verified(view, pos)
    return seq, end


def _check_header(what: str, pos: int | None, magic: tuple[bytes, bytes], version: tuple[int, int],
                  payload: tuple[int, int]) -> None:
    """Refuse a record's or frame's header whose (got, expected) magic or version differs, or whose
    (payload length, maximum) is too long: CorruptData naming `what` and, when known, its byte `pos`."""
    if magic[0] == magic[1] and version[0] == version[1] and payload[0] <= payload[1]:
        return  # the hot path: every record read goes through here
    at = "" if pos is None else f" at byte {pos}"
    if magic[0] != magic[1]:
        raise CorruptData(f"{what} magic {bytes(magic[0])!r}{at}; expected {magic[1]!r}")
    if version[0] != version[1]:
        raise CorruptData(f"{what} version {version[0]}{at}; this agent reads version {version[1]}")
    if payload[0] > payload[1]:
        raise CorruptData(f"{what} payload length {payload[0]}{at} exceeds {payload[1]}")


def _verified(view: memoryview, pos: int) -> tuple[int, int, tuple[int, int, int, int]]:
    """(seq, end, (kind, codec, offset, length)) of the checked record at `pos`."""
    if len(view) - pos < RECORD_HEADER_SIZE:
        raise EOFError("short record header")
    magic, version, kind, codec, _, plen, seq, offset, length, checksum = RECORD_HEADER.unpack_from(view, pos)
    _check_header("record", pos, (magic, RECORD_MAGIC), (version, RECORD_VERSION), (plen, MAX_RECORD_PAYLOAD))
    end = pos + RECORD_HEADER_SIZE + plen
    if end > len(view):
        raise EOFError("short record payload")
    if _checksum(view[pos:pos + RECORD_HEADER_SIZE - 8], view[pos + RECORD_HEADER_SIZE:end]) != checksum:
        raise CorruptData(f"record seq {seq} at byte {pos}: checksum mismatch")
    if kind not in _KINDS:
        raise CorruptData(f"record seq {seq}: unknown kind {kind}")
    return seq, end, (kind, codec, offset, length)


def decode_record(buf: bytes | bytearray | memoryview, pos: int = 0, *,
                  views: bool = False) -> tuple[Record, int]:
    """The record at `pos` and the position after it. Raises CorruptData, or EOFError when short.

    With `views` the payload is a view into `buf` (no copy: a frame's megabytes go from the
    socket's buffer to the compressor or the replica as they are)."""
    view = memoryview(buf)
    seq, end, (kind, codec, offset, length) = _verified(view, pos)
    body = view[pos + RECORD_HEADER_SIZE:end]
    return Record(Kind(kind), seq, offset, length, codec, body if views else bytes(body)), end


def decode_records(buf: bytes | bytearray | memoryview, *, views: bool = False) -> list[Record]:
    out: list[Record] = []
    pos = 0
    while pos < len(buf):
        try:
            rec, pos = decode_record(buf, pos, views=views)
        except EOFError:
            raise CorruptData(f"a frame ends inside a record at byte {pos}") from None
        out.append(rec)
    return out


def frame_header(ftype: FrameType, parts: Sequence[bytes | bytearray | memoryview]) -> bytes:
    """The header of a frame whose payload is the concatenation of `parts` (not copied here)."""
    h = xxhash.xxh3_64()
    for part in parts:
        h.update(part)
    return FRAME_HEADER.pack(FRAME_MAGIC, FRAME_VERSION, ftype, 0, sum(len(p) for p in parts), h.intdigest())


def encode_frame(ftype: FrameType, payload: bytes | bytearray) -> bytes:
    return frame_header(ftype, (payload,)) + payload


def json_frame(ftype: FrameType, body: dict[str, Any]) -> bytes:
    return encode_frame(ftype, json.dumps(body).encode())


def parse_frame_header(head: bytes | bytearray) -> tuple[FrameType, int, int]:
    """(type, payload length, checksum) of a frame header; raises CorruptData."""
    magic, version, ftype, _, plen, checksum = FRAME_HEADER.unpack(head)
    _check_header("frame", None, (magic, FRAME_MAGIC), (version, FRAME_VERSION), (plen, MAX_FRAME_PAYLOAD))
    try:
        t = FrameType(ftype)
    except ValueError:
        raise CorruptData(f"unknown frame type {ftype}") from None
    return t, plen, checksum


def verify_frame_payload(payload: bytes | bytearray, checksum: int) -> None:
    if xxhash.xxh3_64_intdigest(payload) != checksum:
        raise CorruptData(f"frame checksum mismatch ({len(payload)} byte payload)")
