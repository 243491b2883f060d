"""Azurite path: pipeline MB/s into page blobs / a raw upload_page loop to the same Azurite.

Run: python benchmarks/pipeline_azurite.py [MiB]   (goal: ratio >= 0.8)

Baselines, measured in the same run against the same Azurite, each on a fresh page blob:
- like for like (the ratio's baseline): BlobClient.upload_page with the master target's page size
  (4 MiB, pageblob.MAX_PUT_PAGE) and its concurrency (pageblob.PARALLEL_PUTS calls in flight);
- for reference: the same loop in one thread, one call at a time.
Pipeline: agent (this process) -> process server -> master target (page blob target, parallel
Put Page) -> Azurite; from the first write to the last page applied.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dr_agent.pageblob import MAX_PUT_PAGE, PARALLEL_PUTS
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
            pages = [(off, b"".join(chunks[off // MIB:(off + MAX_PUT_PAGE) // MIB]))
                     for off in range(0, total, MAX_PUT_PAGE)]
            serial = cc.get_blob_client("raw-serial.vhd")
            serial.create_page_blob(total)
            start = time.perf_counter()
            for off, page in pages:
                serial.upload_page(page, offset=off, length=len(page))
            serial_s = time.perf_counter() - start
            blob = cc.get_blob_client("raw-parallel.vhd")
            blob.create_page_blob(total)
            start = time.perf_counter()
            with ThreadPoolExecutor(max_workers=PARALLEL_PUTS) as pool:
                for fut in [pool.submit(blob.upload_page, page, offset=off, length=len(page))
                            for off, page in pages]:
                    fut.result()
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
    raw_mbs, serial_mbs, pipe_mbs = total / 1e6 / raw_s, total / 1e6 / serial_s, total / 1e6 / pipe_s
    print(f"data: {total // MIB} MiB")
    print(f"reference upload_page loop ({MAX_PUT_PAGE // MIB} MiB, one at a time): {serial_mbs:8.1f} MB/s")
    print(f"baseline upload_page ({MAX_PUT_PAGE // MIB} MiB, {PARALLEL_PUTS} in flight):  {raw_mbs:8.1f} MB/s")
    print(f"pipeline agent->PS->MT->page blob:               {pipe_mbs:8.1f} MB/s")
    print(f"ratio pipeline/raw: {pipe_mbs / raw_mbs:.2f} (goal >= 0.8); "
          f"against the one-at-a-time loop: {pipe_mbs / serial_mbs:.2f}")


if __name__ == "__main__":
    main()
