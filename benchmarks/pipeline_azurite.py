"""Azurite path: pipeline MB/s into page blobs / a raw upload_page loop to the same Azurite.

Run: python benchmarks/pipeline_azurite.py [MiB]   (goal: ratio >= 0.8)

Baseline: one thread calling BlobClient.upload_page with 4 MiB pages, sequentially, on a fresh page
blob. Pipeline: agent (this process) -> process server -> master target (page blob target,
parallel Put Page) -> Azurite; from the first write to the last page applied.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from dr_agent.sink import ProcessServerSink
from pipeline_common import MIB, Azurite, drive, make_pki, mixed_data, services


def main() -> None:
    total = int(sys.argv[1]) * MIB if len(sys.argv) > 1 else 256 * MIB
    chunks = mixed_data(total, seed=2)
    with tempfile.TemporaryDirectory(prefix="bench-azurite-") as tmp:
        root = Path(tmp)
        az = Azurite(root)
        try:
            from azure.storage.blob import ContainerClient

            cc = ContainerClient.from_connection_string(az.conn_str, "raw")
            cc.create_container()
            blob = cc.get_blob_client("raw.vhd")
            blob.create_page_blob(total)
            start = time.perf_counter()
            for i in range(0, len(chunks), 4):
                page = b"".join(chunks[i:i + 4])
                blob.upload_page(page, offset=i * MIB, length=len(page))
            raw_s = time.perf_counter() - start

            pki = make_pki(root)
            os.environ["BENCH_AZURE"] = az.conn_str
            mt, ps, ps_port = services(root, pki, storage="azure", conn_env="BENCH_AZURE")
            mt.start()
            ps.start()
            try:
                sink = ProcessServerSink(disk="bench-disk1", size=total, servers=[("127.0.0.1", ps_port)],
                                         identity=pki.agent)
                pipe_s = drive(sink, chunks, total)
                sink.close()
            finally:
                ps.stop()
                mt.stop()
        finally:
            az.stop()
    raw_mbs, pipe_mbs = total / 1e6 / raw_s, total / 1e6 / pipe_s
    print(f"data: {total // MIB} MiB")
    print(f"baseline upload_page loop (4 MiB, one thread): {raw_mbs:8.1f} MB/s")
    print(f"pipeline agent->PS->MT->page blob:            {pipe_mbs:8.1f} MB/s")
    print(f"ratio pipeline/raw: {pipe_mbs / raw_mbs:.2f} (goal >= 0.8)")


if __name__ == "__main__":
    main()
