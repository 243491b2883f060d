"""Source fsync latency while the process server is away, against a local disk in the same run.

As root: `python benchmarks/agent_outage_fsync.py [--seconds 15]`. Three passes of the same
workload (64 KiB written and fsynced, in a loop) on ext4 over a loop device:

  local    the image attached directly (no agent): the machine's own fsync
  outage   the same disk protected by `dr-agent agent` in splitter mode (the agent in the I/O
           path), its process server stopped with SIGSTOP (a black-holed link)

Prints p50/p99/max of each and the ratio outage/local (issue 15: the workload never waits on
the network, so the ratio stays small: the buffer, then the bitmap, absorb the outage).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dr_agent.pki import create_ca, register

MIB = 1024 * 1024


def _port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return int(s.getsockname()[1])


def _run(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def _fsyncs(root: Path, seconds: float) -> list[float]:
    root.mkdir(parents=True, exist_ok=True)
    out: list[float] = []
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        with open(root / f"w{i % 40}.bin", "wb") as f:
            f.write(os.urandom(64 * 1024))
            started = time.monotonic()
            os.fsync(f.fileno())
            out.append(time.monotonic() - started)
        i += 1
        time.sleep(0.01)
    return out


def _stats(xs: list[float]) -> tuple[float, float, float]:
    s = sorted(xs)
    return s[len(s) // 2], s[int(len(s) * 0.99)], s[-1]


def _service(kind: str, config: Path, log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["dr-agent", kind, "--config", str(config)], stdout=subprocess.PIPE,
                            stderr=log.open("ab"))
    assert proc.stdout is not None
    proc.stdout.readline()
    return proc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each pass")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (loop devices, mounts, FUSE)", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="dr-outage-"))
    ca = create_ca(root / "ca", "benchmark passphrase")
    ids = {r: register(ca, "benchmark passphrase", name=n, role=r, out=root / r)
           for r, n in (("agent", "bench01"), ("process-server", "ps01"), ("master-target", "mt01"))}
    mt_port, ps_port = _port(), _port()
    (root / "mt.toml").write_text(f'[master_target]\nlisten = "127.0.0.1:{mt_port}"\nidentity = '
                                  f'"{ids["master-target"].directory}"\nstate_dir = "{root / "mt"}"\n'
                                  'storage = "file"\n')
    (root / "ps.toml").write_text(f'[process_server]\nlisten = "127.0.0.1:{ps_port}"\nidentity = '
                                  f'"{ids["process-server"].directory}"\ncache_dir = "{root / "ps"}"\n'
                                  f'master_target = "127.0.0.1:{mt_port}"\ncapacity_gb = 1\n')
    image, mnt = root / "disk.img", root / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(256 * MIB)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        dev = _run("losetup", "--show", "-f", str(image)).strip()
        _run("mkfs.ext4", "-q", "-F", dev)
        _run("mount", dev, str(mnt))
        local = _fsyncs(mnt / "local", args.seconds)
        _run("umount", str(mnt))
        _run("losetup", "-d", dev)
        procs += [_service("master-target", root / "mt.toml", root / "mt.log"),
                  _service("process-server", root / "ps.toml", root / "ps.log")]
        (root / "agent.toml").write_text(
            f'[agent]\nname = "bench01"\nidentity = "{ids["agent"].directory}"\nstate_dir = "{root / "state"}"\n'
            f'process_servers = ["127.0.0.1:{ps_port}"]\ncrash_consistent_every_s = 5\nbuffer_mb = 16\n'
            f'io_timeout_s = 3\nconnect_timeout_s = 2\nreconnect_max_s = 5\n\n[[agent.disks]]\n'
            f'name = "bench01.sdb"\nmode = "splitter"\ndevice = "{image}"\nmountpoint = "{root / "fuse"}"\n')
        procs.append(_service("agent", root / "agent.toml", root / "agent.log"))
        link = root / "fuse.dev"
        while not link.exists() or "-> protected" not in (root / "agent.log").read_text():
            time.sleep(0.2)
        _run("mount", str(link), str(mnt))
        procs[1].send_signal(signal.SIGSTOP)
        try:
            outage = _fsyncs(mnt / "outage", args.seconds)
        finally:
            procs[1].send_signal(signal.SIGCONT)
        _run("umount", str(mnt))
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(60)
        subprocess.run(["umount", str(mnt)], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)
    for name, xs in (("local", local), ("outage", outage)):
        p50, p99, worst = _stats(xs)
        print(f"{name:7s} fsyncs {len(xs):6d}  p50 {p50 * 1000:8.2f} ms  p99 {p99 * 1000:8.2f} ms  "
              f"max {worst * 1000:8.2f} ms")
    ratio = _stats(outage)[1] / max(_stats(local)[1], 1e-6)
    print(f"fsync p99 during a process-server outage / local p99: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
