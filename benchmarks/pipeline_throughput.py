"""End-to-end pipeline MB/s to a file target / single-core `zstd -1` MB/s on the same data.

Run: python benchmarks/pipeline_throughput.py [MiB]   (goal: ratio >= 0.7)

The pipeline is the real one: this process is the agent (ProcessServerSink), the process server and
the master target run as `dr-agent` processes on loopback with mutual TLS; the process server
fsyncs its cache, compresses with zstd level 1 and forwards; the master target verifies,
decompresses and writes a file. The baseline is python-zstandard level 1 compressing the same
1 MiB chunks in one thread, measured in the same run.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import zstandard
from dr_agent.sink import ProcessServerSink
from pipeline_common import MIB, drive, make_pki, mixed_data, services


def main() -> None:
    total = int(sys.argv[1]) * MIB if len(sys.argv) > 1 else 256 * MIB
    chunks = mixed_data(total)
    c = zstandard.ZstdCompressor(level=1)
    start = time.perf_counter()
    packed = sum(len(c.compress(ch)) for ch in chunks)
    zstd_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        root = Path(tmp)
        pki = make_pki(root)
        mt, ps, ps_port = services(root, pki)
        mt.start()
        ps.start()
        try:
            disk = 1024 * MIB
            sink = ProcessServerSink(disk="bench-disk0", size=disk, servers=[("127.0.0.1", ps_port)],
                                     identity=pki.agent)
            pipe_s = drive(sink, chunks, disk)
            sink.close()
        finally:
            ps.stop()
            mt.stop()
    zstd_mbs = total / 1e6 / zstd_s
    pipe_mbs = total / 1e6 / pipe_s
    print(f"data: {total // MIB} MiB, zstd -1 ratio {total / packed:.2f}")
    print(f"baseline zstd -1, one thread: {zstd_mbs:8.1f} MB/s")
    print(f"pipeline agent->PS->MT->file: {pipe_mbs:8.1f} MB/s")
    print(f"ratio pipeline/zstd: {pipe_mbs / zstd_mbs:.2f} (goal >= 0.7)")


if __name__ == "__main__":
    main()
