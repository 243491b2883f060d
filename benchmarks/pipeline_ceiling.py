"""CPU accounting and the machine's ceiling for the pipeline benchmarks.

Not a benchmark itself; `pipeline_throughput.py` and `pipeline_azurite.py` import it.

**CPU accounting.** Core-seconds (user + system) a process used between two samples: this process
from `resource.getrusage(RUSAGE_SELF)` (every thread: the agent's sink and its reader), the
services and Azurite from utime + stime in `/proc/PID/stat` (clock ticks, `SC_CLK_TCK`, 10 ms
here). Utilisation = all core-seconds / (wall seconds x `os.cpu_count()`): 1.0 means every core
was busy for the whole phase, so no implementation could have gone faster without doing less work.
Not counted anywhere: kernel threads (writeback, softirq of loopback TCP when it runs in
ksoftirqd), which only makes the utilisation an underestimate.

**The ceiling** is the per-byte work the design cannot avoid, each piece measured here, on the same
data, in isolation (nothing else running, nothing overlapped), as CPU seconds of the thread(s)
doing it (`time.thread_time`, user + system), never as wall time:

- hop 1, agent -> process server: TLS send + receive of every raw byte, with the project's own
  certificates and contexts (`dr_agent.pki.client_context` / `server_context`, mutual TLS, the
  agent's and the process server's identities) over a loopback socket between two threads; both
  ends' CPU counted, the handshake not;
- compression: `dr_agent.compress.Compressor` (zstd level 1, stored raw when it does not shrink),
  the process server's own, over every 1 MiB chunk;
- the cache copy: the stored (compressed) bytes written once to a file, fsynced every
  `CACHE_FSYNC_BYTES` of raw data;
- hop 2, process server -> master target: TLS send + receive of the stored bytes (the process
  server's and the master target's identities);
- decompression of the chunks stored compressed;
- the replica copy (file path only): every raw byte written once to a file with `pwrite`, fsynced
  every `REPLICA_FSYNC_BYTES`.

They are counted because the issue requires them: mutual TLS on both hops, zstd at the process
server, a durable cache (fsync before acknowledging) and a durable replica. Not counted, because
an implementation could make them (nearly) free: building and checksumming records and frames
(xxh3 runs at several GB/s), Python's per-frame bookkeeping, ACKs, thread hand-offs, copies
between buffers, and the page-cache work of reading the cache back (the forwarder could send from
memory). The writes are measured in the benchmark's own temporary directory (the same file system
as the services' cache and replica).

Ceiling wall (file path) = sum of those core-seconds / cores: the best wall time any
implementation of this design could reach on this machine if it kept every core busy with nothing
but that work. The disk is a second bound, printed beside it: the wall time of the two durable
copies written one after the other; the ceiling is the slower of the two bounds.

Ceiling wall (Azurite path) = (core-seconds of the raw `upload_page` baseline, this process and
Azurite + the unavoidable work above without the replica file copy, which Azurite replaces) /
cores, or the baseline's wall time if that is larger (Azurite's own pace).
"""

from __future__ import annotations

import os
import resource
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dr_agent.compress import CODEC_ZSTD, Compressor
from dr_agent.pki import Identity, client_context, server_context

MIB = 1024 * 1024
# Raw bytes between two fsyncs of the cache copy: the agent flushes every 16 MiB in
# pipeline_common.drive, and a flush returns only once the process server fsynced its cache.
CACHE_FSYNC_BYTES = 16 * MIB
# Raw bytes between two fsyncs of the replica copy: the master target's group commit
# (GATHER_BYTES in dr_agent/master_target.py, 32 MiB).
REPLICA_FSYNC_BYTES = 32 * MIB
# Clock ticks per second of /proc/PID/stat's utime and stime (USER_HZ; 100 on Linux).
CLK_TCK = os.sysconf("SC_CLK_TCK")
# What the pieces of work handle: data chunks, and the payloads Compressor.compress returns.
Block = bytes | memoryview


def cores() -> int:
    return os.cpu_count() or 1


def self_cpu_s() -> float:
    """Core-seconds (user + system) this process used so far, every thread."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def pid_cpu_s(pid: int) -> float:
    """Core-seconds (utime + stime) process `pid` used so far, from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) is in parentheses and may hold spaces: split after the last ')'.
    rest = stat[stat.rindex(")") + 2:].split()
    # rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


@dataclass(frozen=True)
class Usage:
    """Core-seconds per process over one phase of `wall_s` seconds."""

    wall_s: float
    core_s: dict[str, float]

    @property
    def total_s(self) -> float:
        return sum(self.core_s.values())

    @property
    def utilisation(self) -> float:
        return self.total_s / (self.wall_s * cores()) if self.wall_s > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        return {"wall_s": round(self.wall_s, 4), "core_s": {k: round(v, 3) for k, v in self.core_s.items()},
                "total_core_s": round(self.total_s, 3), "utilisation": round(self.utilisation, 3)}

    def line(self, label: str) -> str:
        parts = ", ".join(f"{name} {sec:.2f}" for name, sec in self.core_s.items())
        return (f"cpu {label}: {parts}; total {self.total_s:.2f} core-s in {self.wall_s:.2f} s wall "
                f"= {self.utilisation:.0%} of {cores()} cores")


@dataclass
class Meter:
    """Samples the CPU of this process (name `self_name`) and of `pids` around a phase."""

    pids: dict[str, int]
    self_name: str = "agent"
    usage: Usage | None = field(default=None, init=False)

    def _sample(self) -> dict[str, float]:
        return {self.self_name: self_cpu_s(), **{name: pid_cpu_s(pid) for name, pid in self.pids.items()}}

    @contextmanager
    def measure(self) -> Iterator[None]:
        before = self._sample()
        start = time.perf_counter()
        yield
        wall = time.perf_counter() - start
        after = self._sample()
        self.usage = Usage(wall, {name: after[name] - before[name] for name in before})


def _tls_cpu_s(payloads: Sequence[Block], sender: Identity, receiver: Identity) -> float:
    """CPU seconds of both ends (two threads of this process) to send `payloads` over mutual TLS."""
    lengths = [len(p) for p in payloads]
    ready = threading.Barrier(2)
    spent: dict[str, float] = {}
    errors: list[BaseException] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def receive() -> None:
            try:
                raw, _ = listener.accept()
                with server_context(receiver).wrap_socket(raw, server_side=True) as tls:
                    ready.wait()
                    start = time.thread_time()
                    for n in lengths:  # as transport.Connection._read_exact: a fresh buffer per frame
                        buf = bytearray(n)
                        view = memoryview(buf)
                        got = 0
                        while got < n:
                            k = tls.recv_into(view[got:], n - got)
                            if not k:
                                raise ConnectionError("the sender closed early")
                            got += k
                    spent["receive"] = time.thread_time() - start
            except BaseException as err:  # reported by the caller
                errors.append(err)
                ready.abort()

        thread = threading.Thread(target=receive, name="tls-receive")
        thread.start()
        raw = socket.create_connection(("127.0.0.1", port))
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with client_context(sender).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            try:
                ready.wait()
            except threading.BrokenBarrierError:
                thread.join()
                raise RuntimeError(f"TLS receiver failed: {errors[0]!r}") from None
            start = time.thread_time()
            for p in payloads:
                tls.sendall(p)
            spent["send"] = time.thread_time() - start
            thread.join()
    if errors:
        raise RuntimeError(f"TLS receiver failed: {errors[0]!r}")
    return spent["send"] + spent["receive"]


def _write_copy(path: Path, blocks: Sequence[Block], raw_lengths: Sequence[int], fsync_every: int,
                write: Callable[[int, Block, int], None]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) to write `blocks` to a new file, fsyncing every `fsync_every` raw bytes."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        wall0, cpu0 = time.perf_counter(), time.thread_time()
        pos = since = 0
        for block, raw in zip(blocks, raw_lengths, strict=True):
            write(fd, block, pos)
            pos += len(block)
            since += raw
            if since >= fsync_every:
                os.fsync(fd)
                since = 0
        os.fsync(fd)
        return time.thread_time() - cpu0, time.perf_counter() - wall0
    finally:
        os.close(fd)
        path.unlink()


def _append(fd: int, block: Block, _pos: int) -> None:
    view = memoryview(block)
    while view:
        view = view[os.write(fd, view):]


def _pwrite(fd: int, block: Block, pos: int) -> None:
    view = memoryview(block)
    while view:
        k = os.pwrite(fd, view, pos)
        view, pos = view[k:], pos + k


@dataclass(frozen=True)
class Ceiling:
    """The unavoidable work of the design on one data set: core-seconds per piece, disk wall time."""

    raw_bytes: int
    stored_bytes: int
    core_s: dict[str, float]
    disk_wall_s: dict[str, float]

    def work_s(self, *, replica_file: bool) -> float:
        return sum(v for k, v in self.core_s.items() if replica_file or k != "replica_write")

    def cpu_bound_s(self, *, replica_file: bool = True) -> float:
        return self.work_s(replica_file=replica_file) / cores()

    def disk_bound_s(self) -> float:
        return sum(self.disk_wall_s.values())

    def file_wall_s(self) -> float:
        return max(self.cpu_bound_s(), self.disk_bound_s())

    def azurite_wall_s(self, baseline: Usage) -> float:
        return max((baseline.total_s + self.work_s(replica_file=False)) / cores(), baseline.wall_s)

    def as_json(self) -> dict[str, Any]:
        return {"raw_bytes": self.raw_bytes, "stored_bytes": self.stored_bytes,
                "core_s": {k: round(v, 3) for k, v in self.core_s.items()},
                "disk_wall_s": {k: round(v, 3) for k, v in self.disk_wall_s.items()},
                "cores": cores()}

    def line(self, *, replica_file: bool = True) -> str:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in self.core_s.items() if replica_file or k != "replica_write")
        return f"unavoidable work (core-s, measured alone): {parts}; total {self.work_s(replica_file=replica_file):.2f}"


def measure_ceiling(chunks: Sequence[bytes], directory: Path, *, agent: Identity, ps: Identity,
                    mt: Identity, replica_file: bool = True) -> Ceiling:
    """Measure each unavoidable piece of work on `chunks` (see the module docstring), one after another."""
    comp = Compressor()
    start = time.thread_time()
    stored = [comp.compress(c) for c in chunks]
    compress_s = time.thread_time() - start
    payloads = [p for _, p in stored]
    start = time.thread_time()
    for (codec, payload), chunk in zip(stored, chunks, strict=True):
        if codec == CODEC_ZSTD:
            comp.decompress(codec, payload, len(chunk))
    decompress_s = time.thread_time() - start
    raw_lengths = [len(c) for c in chunks]
    core_s = {"tls_hop1": _tls_cpu_s(chunks, agent, ps), "compress": compress_s}
    disk: dict[str, float] = {}
    core_s["cache_write"], disk["cache_write"] = _write_copy(directory / "ceiling-cache.seg", payloads,
                                                             raw_lengths, CACHE_FSYNC_BYTES, _append)
    core_s["tls_hop2"] = _tls_cpu_s(payloads, ps, mt)
    core_s["decompress"] = decompress_s
    if replica_file:
        core_s["replica_write"], disk["replica_write"] = _write_copy(directory / "ceiling-replica.img", chunks,
                                                                     raw_lengths, REPLICA_FSYNC_BYTES, _pwrite)
    return Ceiling(sum(raw_lengths), sum(len(p) for p in payloads), core_s, disk)
