"""Export of a page blob recovery point: MB/s of `dr_agent.export` / one streamed read of the same snapshot.

Run: python benchmarks/export_azurite.py [MiB] [--json]   (goal: ratio >= 0.7, issue 15)

Set-up, in one run against one Azurite: the master target's own page blob target writes a disk of
MiB (3 of every 4 MiB written with data, the 4th left empty, so the snapshot has many page ranges
and holes) and takes a recovery point (a blob snapshot).
Baseline: one streamed read of that snapshot into a local file (azure-storage-blob's
`download_blob(max_concurrency=1).readinto`, which lists the page ranges once and skips empty ones).
Measured: `dr_agent.export.export_location` of the same snapshot to FILE.img (one page-range
listing, parallel ranged reads, sparse output), then to FILE.vhd; then two more points, each after
rewriting an eighth of the disk, exported in turn: their times stay flat (the old export re-listed
every page range per 4 MiB read, so each export took longer than the one before).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from pathlib import Path

from dr_agent.export import PARALLEL_READS, export_location
from dr_agent.pageblob import PageBlobTarget
from dr_agent.target import Data
from pipeline_common import MIB, Azurite, bench_args, mixed_data

GOAL = 0.7


def sha256(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        left = size
        while left:
            chunk = f.read(min(left, 8 * MIB))
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def main() -> None:
    args = bench_args(__doc__, 512)
    total = args.mib * MIB
    chunks = mixed_data(total, seed=3)
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        root = Path(tmp)
        az = Azurite(root)
        try:
            from azure.storage.blob import BlobClient

            target = PageBlobTarget(az.conn_str, "exportbench", "bench-disk0.vhd", total)
            try:
                writes: list[tuple[int, Data]] = [(i * MIB, chunks[i]) for i in range(len(chunks)) if i % 4 != 3]
                for pos in range(0, len(writes), 16):
                    target.apply(writes[pos:pos + 16], [])
                target.commit(1)
                snap = target.snapshot("p1", 1)
                location = target.location()

                base_file = root / "streamed.raw"
                blob = BlobClient.from_connection_string(az.conn_str, "exportbench", "bench-disk0.vhd",
                                                         snapshot=snap)
                start = time.perf_counter()
                with base_file.open("wb") as f:
                    blob.download_blob(offset=0, length=total, max_concurrency=1).readinto(f)
                base_s = time.perf_counter() - start

                start = time.perf_counter()
                img = export_location(location, snap, root / "p1.img", connection_string=az.conn_str)
                export_s = time.perf_counter() - start
                start = time.perf_counter()
                export_location(location, snap, root / "p1.vhd", connection_string=az.conn_str)
                vhd_s = time.perf_counter() - start
                same = sha256(img, total) == sha256(base_file, total)
                allocated = img.stat().st_blocks * 512

                successive = [export_s]
                for n in (2, 3):
                    eighth = total // 8 // MIB
                    start_chunk = (n * eighth) % (total // MIB)
                    rewrite: list[tuple[int, Data]] = [
                        ((start_chunk + i) % (total // MIB) * MIB, chunks[-1 - i]) for i in range(eighth)]
                    for pos in range(0, len(rewrite), 16):
                        target.apply(rewrite[pos:pos + 16], [])
                    target.commit(n)
                    handle = target.snapshot(f"p{n}", n)
                    start = time.perf_counter()
                    export_location(location, handle, root / f"p{n}.img", connection_string=az.conn_str)
                    successive.append(time.perf_counter() - start)
            finally:
                target.close()
        finally:
            az.stop()
    base_mbs, export_mbs, vhd_mbs = (total / 1e6 / s for s in (base_s, export_s, vhd_s))
    ratio = export_mbs / base_mbs
    if args.json:
        print(json.dumps({
            "benchmark": "export_azurite", "mib": args.mib, "parallel_reads": PARALLEL_READS,
            "streamed_mbs": round(base_mbs, 1), "export_mbs": round(export_mbs, 1), "vhd_mbs": round(vhd_mbs, 1),
            "ratio": round(ratio, 3), "goal": GOAL, "identical": same, "allocated_mib": allocated // MIB,
            "successive_s": [round(s, 2) for s in successive],
        }))
        return
    print(f"disk {args.mib} MiB, 3/4 written; export with {PARALLEL_READS} ranged reads in flight")
    print(f"one streamed read of the snapshot: {base_s:6.2f} s  {base_mbs:7.1f} MB/s (baseline)")
    print(f"export to FILE.img:                {export_s:6.2f} s  {export_mbs:7.1f} MB/s  "
          f"(sparse: {allocated // MIB} MiB allocated; bytes identical to the streamed read: {same})")
    print(f"export to FILE.vhd:                {vhd_s:6.2f} s  {vhd_mbs:7.1f} MB/s")
    print("successive points' exports (s):    " + ", ".join(f"{s:.2f}" for s in successive))
    print(f"ratio export / streamed read: {ratio:.2f} (goal >= {GOAL})")


if __name__ == "__main__":
    main()
