"""Helpers of the agent service's tests: machines and disks (loop devices with a populated ext4),
the real `dr-agent process-server` / `master-target` processes, and `dr-agent agent` run as a user
runs it. Nothing here stands in for a product component."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "pipeline"))
from pipeline_harness import REPO, Service, free_port

from tests.conftest import wait_for as shared_wait_for

MIB = 1024 * 1024
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "agent"), str(REPO)])}


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: loop devices, mounts, tracefs and FUSE (CI runs the suite as root)")
    missing = [t for t in ("losetup", "mount", "umount", "mkfs.ext4", "e2fsck", "dr-agent", "dr")
               if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing {', '.join(missing)}: apt-get install e2fsprogs mount fuse3; pip install -e ./agent .")


def run(*argv: str, timeout: float = 120) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{' '.join(argv)} exited {proc.returncode}: {proc.stdout}{proc.stderr}"
    return proc.stdout


def populate(root: Path, seed: int, count: int, *, max_kib: int = 512) -> None:
    """`count` files of random size and content (half of them compressible), fsynced."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        n = rng.randint(1, max_kib) * 1024
        data = rng.randbytes(n) if i % 2 else bytes([rng.randrange(256)]) * n
        path = root / f"f{seed}-{i}.bin"
        with open(path, "wb") as f:
            f.write(data)
            os.fsync(f.fileno())


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "lost+found" not in p.parts}


class Disk:
    """A sparse image file with ext4 on a loop device: a source machine's disk."""

    def __init__(self, root: Path, name: str, size: int) -> None:
        self.image = root / f"{name}.img"
        with open(self.image, "wb") as f:
            f.truncate(size)
        self.dev = run("losetup", "--show", "-f", str(self.image)).strip()
        run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", self.dev)
        self.mnt = root / f"{name}.mnt"
        self.mnt.mkdir()

    def mount(self, dev: str | None = None) -> None:
        run("mount", dev or self.dev, str(self.mnt))

    def umount(self) -> None:
        if os.path.ismount(self.mnt):
            run("umount", str(self.mnt))

    def detach(self) -> None:
        self.umount()
        subprocess.run(["losetup", "-d", self.dev], capture_output=True, check=False)


class Estate:
    """A master target and a process server as processes (file replicas), and agents."""

    def __init__(self, root: Path, pki: Any, *, ps_extra: str = "") -> None:
        self.root, self.pki = root, pki
        mt_port, self.ps_port = free_port(), free_port()
        (root / "mt.toml").write_text(
            f'[master_target]\nlisten = "127.0.0.1:{mt_port}"\nidentity = "{pki.master_target.directory}"\n'
            f'state_dir = "{root / "mt"}"\nstorage = "file"\n')
        (root / "ps.toml").write_text(
            f'[process_server]\nname = "ps01"\nlisten = "127.0.0.1:{self.ps_port}"\n'
            f'identity = "{pki.process_server.directory}"\ncache_dir = "{root / "ps"}"\n'
            f'master_target = "127.0.0.1:{mt_port}"\ncapacity_gb = 1\n{ps_extra}')
        self.mt = Service("master-target", root / "mt.toml", root / "mt.log")
        self.ps = Service("process-server", root / "ps.toml", root / "ps.log")
        self.agents: list[subprocess.Popen[bytes]] = []
        self.announcements: list[dict[str, Any]] = []  # each started agent's first stdout line
        self.disks: list[Disk] = []

    @property
    def catalog(self) -> Path:
        return self.root / "mt/catalog.sqlite"

    def start(self) -> None:
        self.mt.start()
        self.ps.start()

    def disk(self, name: str, size: int = 64 * MIB) -> Disk:
        d = Disk(self.root, name, size)
        self.disks.append(d)
        return d

    def agent_config(self, name: str, disks: list[str], *, identity: Any = None, **settings: Any) -> Path:
        """agent.toml with `disks` ([[agent.disks]] bodies) and extra [agent] settings."""
        identity = identity or self.pki.agent_for(name)
        lines = [f'[agent]\nname = "{name}"\nidentity = "{identity.directory}"\n'
                 f'state_dir = "{self.root / "state" / name}"\nprocess_servers = ["127.0.0.1:{self.ps_port}"]']
        lines += [f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"' for k, v in settings.items()]
        text = "\n".join(lines) + "\n" + "".join(f"\n[[agent.disks]]\n{body}\n" for body in disks)
        path = self.root / f"{name}.toml"
        path.write_text(text)
        return path

    def start_agent(self, config: Path) -> subprocess.Popen[bytes]:
        """`dr-agent agent --config agent.toml`, as a user starts it; returns once it announced itself."""
        log = (self.root / f"{config.stem}.log").open("ab")
        proc = subprocess.Popen(["dr-agent", "-v", "agent", "--config", str(config)], stdout=subprocess.PIPE,
                                stderr=log, env=ENV)
        self.agents.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, f"the agent did not start: {(self.root / f'{config.stem}.log').read_text()[-3000:]}"
        self.announcements.append(json.loads(line))
        return proc

    def agent_log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text()

    def points(self, stream: str, after: float = 0.0) -> list[Any]:
        from dr_agent.catalog import Catalog

        if not self.catalog.exists():
            return []
        cat = Catalog(self.catalog)
        try:
            return [p for p in cat.points(stream) if p.time > after]
        except Exception:  # the disk is not in the catalog yet
            return []
        finally:
            cat.close()

    def wait_point(self, stream: str, after: float, timeout: float, *, agent: Any = None) -> Any:
        found = wait_for(lambda: (self.points(stream, after) or [None])[-1], timeout,
                         f"a recovery point of {stream} after {after}", agent=agent)
        return found

    def export(self, stream: str, point: str, dest: Path) -> Path:
        run("dr", "replica", "export", stream, "--point", point, "--to", str(dest), "--catalog", str(self.catalog))
        return dest

    def exported_hashes(self, image: Path) -> dict[str, str]:
        """Every file's sha256 of an exported image, mounted as a recovered VM mounts it (a crash-
        consistent point's journal is replayed); then e2fsck -fn must find it clean."""
        mnt = image.with_suffix(".mnt")
        mnt.mkdir()
        run("mount", "-o", "loop", str(image), str(mnt))
        try:
            return tree_hashes(mnt)
        finally:
            run("umount", str(mnt))
            run("e2fsck", "-fn", str(image))

    def close(self) -> None:
        for proc in self.agents:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for d in self.disks:
            d.detach()
        for svc in (self.ps, self.mt):
            if svc.proc is not None and svc.proc.poll() is None:
                svc.proc.send_signal(signal.SIGCONT)
            svc.stop()


def wait_for(check: Callable[[], Any], timeout: float, what: str, *, agent: Any = None) -> Any:
    """The shared wait (tests/conftest.py), failing early when `agent` (a Popen) exits meanwhile."""
    def step() -> Any:
        value = check()
        if not value and agent is not None and agent.poll() is not None:
            raise AssertionError(f"the agent exited ({agent.returncode}) while waiting for {what}")
        return value

    return shared_wait_for(step, timeout, what)
