"""Azurite path: pipeline MB/s into page blobs / a raw upload_page loop to the same Azurite.

Run: python benchmarks/pipeline_azurite.py [MiB] [--json]   (goal: ratio >= 0.8)

Baselines, measured in the same run against the same Azurite, each on a fresh page blob:
- like for like (the ratio's baseline): BlobClient.upload_page with the master target's page size
  (4 MiB, pageblob.MAX_PUT_PAGE) and its concurrency (pageblob.PARALLEL_PUTS calls in flight);
- for reference: the same loop in one thread, one call at a time.
Pipeline: agent (this process) -> process server -> master target (page blob target, parallel
Put Page) -> Azurite; from the first write to the last page applied.

Beside the ratio, measured in the same run (pipeline_ceiling.py says exactly what is counted and
why): the core-seconds of this process and Azurite during each baseline, of the agent, process
server, master target and Azurite during the pipeline, and the machine's ceiling: the baseline's
core-seconds (the cost of putting the bytes into Azurite) plus the pipeline's unavoidable work (TLS
on both hops, zstd -1, decompression, the cache copy with fsync) divided over the cores, or the
baseline's wall time if that is longer; as MB/s and as a ratio to the baseline.
"""

from __future__ import annotations

import json
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dr_agent.pageblob import MAX_PUT_PAGE, PARALLEL_PUTS
from pipeline_ceiling import Meter, cores, measure_ceiling
from pipeline_common import MIB, Azurite, bench_args, make_pki, measured_pipeline, mixed_data


def main() -> None:
    args = bench_args(__doc__, 256)
    total = args.mib * MIB
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
            serial_blob = cc.get_blob_client("raw-serial.vhd")
            serial_blob.create_page_blob(total)
            serial_meter = Meter({"azurite": az.proc.pid}, self_name="client")
            with serial_meter.measure():
                for off, page in pages:
                    serial_blob.upload_page(page, offset=off, length=len(page))
            blob = cc.get_blob_client("raw-parallel.vhd")
            blob.create_page_blob(total)
            raw_meter = Meter({"azurite": az.proc.pid}, self_name="client")
            with raw_meter.measure(), ThreadPoolExecutor(max_workers=PARALLEL_PUTS) as pool:
                for fut in [pool.submit(blob.upload_page, page, offset=off, length=len(page))
                            for off, page in pages]:
                    fut.result()
            del pages

            pki = make_pki(root)
            ceiling = measure_ceiling(chunks, root, agent=pki.agent, ps=pki.ps, mt=pki.mt, replica_file=False)
            os.environ["BENCH_AZURE"] = az.conn_str
            pipe_s, pipe = measured_pipeline(root, pki, chunks, total, Meter, disk="bench.disk1",
                                             also={"azurite": az.proc.pid}, storage="azure",
                                             conn_env="BENCH_AZURE")
        finally:
            az.stop()
    serial, raw = serial_meter.usage, raw_meter.usage
    assert serial is not None and raw is not None
    raw_mbs, serial_mbs, pipe_mbs = total / 1e6 / raw.wall_s, total / 1e6 / serial.wall_s, total / 1e6 / pipe_s
    ceiling_s = ceiling.azurite_wall_s(raw)
    ceiling_mbs = total / 1e6 / ceiling_s
    overhead = pipe.total_s / (raw.total_s + ceiling.work_s(replica_file=False))
    if args.json:
        print(json.dumps({
            "benchmark": "pipeline_azurite", "mib": total // MIB, "cores": cores(),
            "serial_mbs": round(serial_mbs, 1), "raw_mbs": round(raw_mbs, 1), "pipeline_mbs": round(pipe_mbs, 1),
            "ratio": round(pipe_mbs / raw_mbs, 3), "goal": 0.8, "ratio_serial": round(pipe_mbs / serial_mbs, 3),
            "ceiling_mbs": round(ceiling_mbs, 1), "ceiling_ratio": round(ceiling_mbs / raw_mbs, 3),
            "pipeline_of_ceiling": round(pipe_mbs / ceiling_mbs, 3),
            "pipeline_core_s_of_unavoidable": round(overhead, 3),
            "ceiling_wall_s": round(ceiling_s, 4), "ceiling_is_baseline_wall": ceiling_s == raw.wall_s,
            "unavoidable": ceiling.as_json(), "serial_cpu": serial.as_json(), "raw_cpu": raw.as_json(),
            "pipeline_cpu": pipe.as_json(), "loadavg": [round(x, 2) for x in os.getloadavg()],
        }))
        return
    print(f"ratio pipeline/raw: {pipe_mbs / raw_mbs:.2f} (goal >= 0.8); "
          f"against the one-at-a-time loop: {pipe_mbs / serial_mbs:.2f}")
    print(f"ceiling ratio on this machine: {ceiling_mbs / raw_mbs:.2f}; pipeline/ceiling: {pipe_mbs / ceiling_mbs:.2f}")
    print(f"data: {total // MIB} MiB")
    print(f"reference upload_page loop ({MAX_PUT_PAGE // MIB} MiB, one at a time): {serial_mbs:8.1f} MB/s")
    print(f"baseline upload_page ({MAX_PUT_PAGE // MIB} MiB, {PARALLEL_PUTS} in flight):  {raw_mbs:8.1f} MB/s")
    print(f"pipeline agent->PS->MT->page blob:               {pipe_mbs:8.1f} MB/s")
    bound = "the baseline's wall time" if ceiling_s == raw.wall_s else \
        f"({raw.total_s:.2f} baseline + {ceiling.work_s(replica_file=False):.2f} pipeline) core-s / {cores()} cores"
    print(f"ceiling:                                         {ceiling_mbs:8.1f} MB/s ({bound})")
    print(ceiling.line(replica_file=False))
    print(serial.line("during the one-at-a-time loop"))
    print(raw.line("during the baseline"))
    print(pipe.line("during the pipeline"))
    print(f"the gap: the pipeline used {overhead:.2f}x "
          f"the baseline's plus the unavoidable core-s and kept the cores {pipe.utilisation:.0%} busy")


if __name__ == "__main__":
    main()
