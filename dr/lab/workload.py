"""A source machine's workload: keeps writing and rewriting files on the machine's disks, and answers
three requests through a control directory: pause (stop writing, every write durable), resume, and
manifest (the sha256 of every file on every disk, as the disks hold them now).

Run on the machine (in its namespaces) by `dr lab up`:

    python -m dr.lab.workload --control DIR --disk NAME=MOUNT [--disk ...] [--interval 0.2]

Control protocol (files, so any process on the host can drive it; one client at a time):
    DIR/request.json  {"id": N, "op": "pause" | "resume" | "manifest"}   (written atomically)
    DIR/reply.json    {"id": N, "ok": true, ...}: manifest adds {"manifest": {disk: {path: sha256}}}
    DIR/status.json   {"pid", "paused", "writes", "time"}, rewritten about once a second

`Workload(DIR)` is the client (the drill uses it): pause() returns once the workload has stopped and
synced its file systems, so a recovery point taken then holds exactly the manifest's bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dr.lab.errors import LabError

POLL_S = 0.05                 # seconds between looks at the control directory
WORK_DIR = "workload"         # the workload's files on each disk
FILES_PER_DISK = 8            # files it rewrites in turn
MAX_WRITE = 64 * 1024         # bytes per rewrite, at most
DEFAULT_INTERVAL_S = 0.2      # seconds between writes: light, the host's cores are shared
Manifest = dict[str, dict[str, str]]


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def file_manifest(mounts: dict[str, Path]) -> Manifest:
    """{disk: {relative path: sha256}} of every regular file on each disk (lost+found left out)."""
    out: Manifest = {}
    for disk, mount in sorted(mounts.items()):
        files: dict[str, str] = {}
        for dirpath, dirnames, filenames in os.walk(mount):
            dirnames[:] = sorted(d for d in dirnames if not (dirpath == str(mount) and d == "lost+found"))
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if path.is_file() and not path.is_symlink():
                    files[str(path.relative_to(mount))] = hashlib.sha256(path.read_bytes()).hexdigest()
        out[disk] = files
    return out


def _sync(mount: Path) -> None:
    fd = os.open(mount, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.sync()


@dataclass(frozen=True)
class Settings:
    control: Path
    mounts: dict[str, Path]
    interval_s: float
    seed: int


def serve(settings: Settings, stop: threading.Event) -> int:
    """The workload's loop, until `stop` is set (SIGTERM)."""
    rng = random.Random(settings.seed)
    settings.control.mkdir(parents=True, exist_ok=True)
    for mount in settings.mounts.values():
        (mount / WORK_DIR).mkdir(exist_ok=True)
    paused, writes, last_status, next_write = False, 0, 0.0, 0.0
    seen = (_read_json(settings.control / "request.json") or {}).get("id")  # a request before a restart is old
    disks = sorted(settings.mounts)
    while not stop.is_set():
        now = time.monotonic()
        request = _read_json(settings.control / "request.json")
        if request is not None and request.get("id") != seen:
            seen = request.get("id")
            reply: dict[str, Any] = {"id": seen, "ok": True}
            op = request.get("op")
            if op == "pause":
                paused = True
                for mount in settings.mounts.values():
                    _sync(mount)
            elif op == "resume":
                paused = False
            elif op == "manifest":
                reply["manifest"] = file_manifest(settings.mounts)
            else:
                reply = {"id": seen, "ok": False, "error": f"unknown op {op!r}"}
            reply["paused"] = paused
            _write_json(settings.control / "status.json",   # before the reply: a client reads it next
                        {"pid": os.getpid(), "paused": paused, "writes": writes, "time": time.time()})
            _write_json(settings.control / "reply.json", reply)
        if not paused and disks and now >= next_write:
            disk = disks[writes % len(disks)]
            path = settings.mounts[disk] / WORK_DIR / f"file{rng.randrange(FILES_PER_DISK):02d}.bin"
            data = rng.randbytes(rng.randrange(512, MAX_WRITE))
            with open(path, "r+b" if path.exists() else "wb") as f:
                f.seek(0)
                f.write(data)
                f.truncate()
                f.flush()
                os.fsync(f.fileno())
            with open(settings.mounts[disk] / WORK_DIR / "journal.log", "a") as log:
                log.write(f"{time.time():.3f} write {path.name} {len(data)} {hashlib.sha256(data).hexdigest()}\n")
            writes += 1
            next_write = now + settings.interval_s
        if now - last_status >= 1.0:
            _write_json(settings.control / "status.json",
                        {"pid": os.getpid(), "paused": paused, "writes": writes, "time": time.time()})
            last_status = now
        stop.wait(POLL_S)
    return 0


class Workload:
    """The client of a machine's workload (its control directory)."""

    def __init__(self, control: Path, *, machine: str = "") -> None:
        self.control = control
        self.machine = machine or control.parent.name

    def _ask(self, op: str, timeout: float) -> dict[str, Any]:
        request_id = time.time_ns()
        self.control.mkdir(parents=True, exist_ok=True)
        _write_json(self.control / "request.json", {"id": request_id, "op": op})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = _read_json(self.control / "reply.json")
            if reply is not None and reply.get("id") == request_id:
                if not reply.get("ok"):
                    raise LabError(f"workload of {self.machine}: {reply.get('error')}")
                return reply
            time.sleep(POLL_S)
        raise LabError(f"the workload of {self.machine} did not answer {op!r} within {timeout:.0f} s: "
                       "is it running? (dr lab status)")

    def pause(self, timeout: float = 30.0) -> None:
        """Stop writing; returns once every write so far is durable on the disks."""
        self._ask("pause", timeout)

    def resume(self, timeout: float = 30.0) -> None:
        self._ask("resume", timeout)

    def manifest(self, timeout: float = 120.0) -> Manifest:
        """{disk: {relative path: sha256}} of every file on the machine's disks now."""
        manifest: Manifest = self._ask("manifest", timeout)["manifest"]
        return manifest

    def status(self) -> dict[str, Any] | None:
        """The last status the workload wrote (pid, paused, writes, time), or None."""
        return _read_json(self.control / "status.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dr.lab.workload", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--control", required=True, type=Path)
    parser.add_argument("--disk", action="append", default=[], metavar="NAME=MOUNT")
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL_S, help="seconds between writes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    mounts: dict[str, Path] = {}
    for item in args.disk:
        name, sep, mount = item.partition("=")
        if not sep or not Path(mount).is_dir():
            parser.error(f"--disk {item!r}: expected NAME=MOUNT with MOUNT a mounted directory")
        mounts[name] = Path(mount)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return serve(Settings(args.control, mounts, args.interval, args.seed), stop)


if __name__ == "__main__":
    sys.exit(main())
