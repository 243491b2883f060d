"""Initial sync and resync rates vs simply reading the same bytes, measured in the same run.

The image (`--mib`, default 1024) is a quarter random data, a quarter explicit zeros, half holes,
in 1 MiB runs. Measured (page cache dropped before each pass, so reads come from storage):

  read        reading the whole image (cat-like, 4 MiB reads): the baseline
  initial     initial_sync to a sink that counts (zero blocks skipped, holes never read)
  resync      resync against an identical replica (xxh3-128 of every block on both sides,
              nothing sent): compared with reading both files

Usage: python benchmarks/capture_sync.py [--mib 1024] [--dir /var/tmp]   (root: drops caches)
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "agent"))

from _capture_sinks import CountingSink  # noqa: E402
from dr_agent.capture.filetarget import FileTarget  # noqa: E402
from dr_agent.capture.initial_sync import initial_sync  # noqa: E402
from dr_agent.capture.resync import resync  # noqa: E402

MiB = 1 << 20


def drop_caches() -> None:
    os.sync()
    if os.geteuid() == 0:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def read_all(*paths: Path) -> None:
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.read(4 * MiB):
                pass


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    drop_caches()
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--dir", default="/var/tmp")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dr-sync-bench-", dir=args.dir))
    size: int = args.mib * MiB
    try:
        image, replica = work / "disk.img", work / "replica.img"
        rng = random.Random(1)
        with open(image, "wb") as f:
            f.truncate(size)
            for mib in range(args.mib):
                kind = mib % 4
                if kind == 0:
                    f.seek(mib * MiB)
                    f.write(rng.randbytes(MiB))
                elif kind == 1:
                    f.seek(mib * MiB)
                    f.write(bytes(MiB))
        shutil.copyfile(image, replica)
        t_read = timed(lambda: read_all(image))
        sink = CountingSink()
        t_initial = timed(lambda: initial_sync(image, sink, checkpoint=work / "ckpt", chunk=4 * MiB,
                                               checkpoint_every=256 * MiB))
        t_read2 = timed(lambda: read_all(image, replica))
        with FileTarget(replica, size) as target:
            t_resync = timed(lambda: resync(image, target, target))
            assert target.received.bytes_written == 0
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def rate(t: float) -> float:
        return size / t / 1e6  # MB/s of disk covered

    print(f"capture sync rates: {args.mib} MiB image (1/4 data, 1/4 zeros, 1/2 holes) on {args.dir}, "
          f"{os.cpu_count()} CPUs, caches dropped: {os.geteuid() == 0}")
    print(f"  read image          {rate(t_read):8.0f} MB/s of disk")
    print(f"  initial sync        {rate(t_initial):8.0f} MB/s of disk   ratio {t_read / t_initial:5.2f} "
          f"(sent {sink.bytes / MiB:.0f} MiB)")
    print(f"  read image+replica  {rate(t_read2):8.0f} MB/s of disk")
    print(f"  resync (no change)  {rate(t_resync):8.0f} MB/s of disk   ratio {t_read2 / t_resync:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
