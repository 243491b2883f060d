"""Capture throughput: `dd bs=1M conv=fsync` through the write-splitter vs a plain loop device.

Both loop devices are `losetup --direct-io=on` over a file in the same directory (same storage).
Measured, alternating to even out drift of a shared machine:

  plain     dd -> /dev/loopN -> backing file                                   (the baseline)
  splitter  dd -> /dev/loopN -> FUSE file -> splitter -> backing file, sink that counts
            (the splitter's own cost: what capture adds before the transport)
  +replica  as splitter, the sink a FileTarget replica in the same directory
            (every byte written twice to the same storage), replica checked byte-identical

Each file is written once first (allocation), then overwritten `--runs` times; the median is
reported with the ratio to the plain loop device measured in the same run.

Usage (root, Linux, fuse3, util-linux):
    python benchmarks/capture_throughput.py [--mib 512] [--runs 3] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "agent"))

from _capture_sinks import CountingSink  # noqa: E402
from dr_agent.capture.filetarget import FileTarget  # noqa: E402
from dr_agent.capture.splitter import Splitter, attach_loop, detach_loop  # noqa: E402

MiB = 1 << 20


def dd(dev: str, mib: int) -> float:
    """MB/s (10^6 bytes per second) of one `dd if=/dev/zero of=dev bs=1M count=mib conv=fsync`."""
    started = time.perf_counter()
    subprocess.run(["dd", "if=/dev/zero", f"of={dev}", "bs=1M", f"count={mib}", "conv=fsync"],
                   check=True, capture_output=True)
    return mib * MiB / (time.perf_counter() - started) / 1e6


def sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=512, help="MiB written per run (default 512)")
    parser.add_argument("--runs", type=int, default=3, help="measured runs per variant (default 3)")
    parser.add_argument("--dir", default="/var/tmp", help="where the backing files live (default /var/tmp)")
    args = parser.parse_args()
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse") or shutil.which("losetup") is None:
        print("needs root, /dev/fuse and losetup", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="dr-capture-bench-", dir=args.dir))
    size = args.mib * MiB
    results: dict[str, list[float]] = {"plain": [], "splitter": [], "+replica": []}
    counting = CountingSink()
    try:
        (work / "fuse1").mkdir()
        (work / "fuse2").mkdir()
        plain_dev = attach_loop(sparse(work / "plain.img", size))
        replica = FileTarget(work / "replica.img", size)
        with Splitter(sparse(work / "split1.img", size), work / "fuse1", counting, name="d1") as sp1, \
                Splitter(sparse(work / "split2.img", size), work / "fuse2", replica, name="d2") as sp2:
            devs = {"plain": plain_dev, "splitter": attach_loop(sp1.path), "+replica": attach_loop(sp2.path)}
            try:
                for dev in devs.values():  # allocation pass, not measured
                    dd(dev, args.mib)
                for _ in range(args.runs):
                    for name, dev in devs.items():
                        results[name].append(dd(dev, args.mib))
            finally:
                for name in ("splitter", "+replica"):
                    detach_loop(devs[name])
                detach_loop(plain_dev)
        replica.close()
        identical = subprocess.run(["cmp", "-s", str(work / "split2.img"), str(work / "replica.img")],
                                   check=False).returncode == 0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    storage = subprocess.run(["df", "--output=source,fstype", args.dir], capture_output=True, text=True,
                             check=False).stdout.splitlines()[-1].split()
    base = statistics.median(results["plain"])
    print(f"capture throughput: dd bs=1M count={args.mib} conv=fsync, median of {args.runs} runs, "
          f"{os.cpu_count()} CPUs, backing files on {args.dir} ({' '.join(storage)})")
    for name, runs in results.items():
        median = statistics.median(runs)
        print(f"  {name:<9} {median:8.0f} MB/s   ratio {median / base:5.2f}   runs "
              + " ".join(f"{r:.0f}" for r in runs))
    print(f"  counting sink saw {counting.bytes / MiB:.0f} MiB and {counting.barriers} barriers; "
          f"replica byte-identical to the backing file: {identical}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
