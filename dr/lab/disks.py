"""A source machine's disks: a sparse image each, a loop device with ext4 (mounted directly, inside
the machine), holding data before any agent arrives (as a real server's disks do), and the manifest of that data.

The lab chooses the size (`--disk-size`, default 64 MiB), not the spec: a 900 GB spec disk would not
fit on the host, and every byte is replicated. The seed data is deterministic (a function of the
estate, machine and disk names), so a drill can tell pre-agent data from what the workload wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from dr.lab.errors import LabError
from dr.lab.host import quiet, run

MIB = 1024 * 1024
DEFAULT_DISK_SIZE = 64 * MIB       # bytes; the lab's choice (see the module docstring)
MIN_DISK_SIZE = 16 * MIB           # below this, ext4's journal and the seed data do not fit
SEED_FILES = 12                    # files per disk written before any agent (4 KiB .. 256 KiB each)
SEED_MAX_BYTES = 256 * 1024
SEED_DIR = "seed"                  # where the seed files live on each disk
MANIFEST = "seed-manifest.json"    # beside the disk images: {disk: {relative path: sha256}}
RELEASE_TIMEOUT_S = 30.0           # seconds `down` waits for the kernel to free a detached loop device


@dataclass(frozen=True)
class Disk:
    machine: str
    name: str
    image: Path
    device: str        # /dev/loopN
    mount: Path        # where the machine mounts it (inside the machine only; the host path is empty)


def parse_size(text: str) -> int:
    """`64M`, `1G`, `33554432` -> bytes (a multiple of 1 MiB, at least MIN_DISK_SIZE)."""
    units = {"K": 1024, "M": MIB, "G": 1024 * MIB}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = units.get(t[-1:], 1)
    number = t[:-1] if t[-1:] in units else t
    try:
        size = int(float(number) * mult)
    except ValueError:
        raise LabError(f"--disk-size {text!r}: expected a size such as 64M or 1G") from None
    if size < MIN_DISK_SIZE:
        raise LabError(f"--disk-size {text}: at least {MIN_DISK_SIZE // MIB}M (ext4 and the seed data need room)")
    return size - size % MIB


def loops_of(directory: Path) -> dict[str, str]:
    """Loop devices whose backing file is under `directory`: {device: backing file}."""
    done = run(["losetup", "--list", "--noheadings", "--raw", "--output", "NAME,BACK-FILE"], what="list loops",
               check=False)
    found: dict[str, str] = {}
    for line in done.stdout.splitlines():
        name, _, back = line.partition(" ")
        back = back.replace(" (deleted)", "")
        if back.startswith(f"{directory}/"):
            found[name] = back
    return found


def mounts_under(directory: Path) -> list[str]:
    """Mount points at or below `directory` in the host's mount table, deepest first."""
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        target = line.split()[1].encode().decode("unicode_escape")
        if target == str(directory) or target.startswith(f"{directory}/"):
            found.append(target)
    return sorted(set(found), key=len, reverse=True)


def seed_files(estate: str, machine: str, disk: str) -> dict[str, bytes]:
    """The deterministic pre-agent content of a disk: {relative path: bytes}."""
    rng = random.Random(hashlib.sha256(f"{estate}/{machine}/{disk}".encode()).digest())
    files: dict[str, bytes] = {}
    for i in range(SEED_FILES):
        size = rng.randrange(4096, SEED_MAX_BYTES)
        files[f"{SEED_DIR}/d{i % 3}/file{i:02d}.bin"] = rng.randbytes(size)
    files[f"{SEED_DIR}/README"] = (f"{machine}/{disk}: written by dr lab before any agent was installed\n").encode()
    return files


def make(estate: str, machine: str, disk: str, label: str, directory: Path, size: int) -> Disk:
    """Create (or find) the image with its ext4 file system and seed data, and its loop device. The
    file system is made with the seed files in it (mke2fs -d), so it is never mounted on the host:
    the machine mounts it (dr.lab.machine)."""
    images, mounts = directory / "disks", directory / "mnt"
    images.mkdir(parents=True, exist_ok=True)
    image, mount = images / f"{disk}.img", mounts / disk
    mount.mkdir(parents=True, exist_ok=True)
    if not image.exists():
        src = directory / "seed-src" / disk
        shutil.rmtree(src, ignore_errors=True)
        for rel, data in seed_files(estate, machine, disk).items():
            path = src / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        partial = image.with_suffix(".partial")
        with open(partial, "wb") as f:
            f.truncate(size)
        run(["mkfs.ext4", "-q", "-F", "-L", label, "-E", "lazy_itable_init=0,lazy_journal_init=0", "-d", str(src),
             str(partial)], what=f"make ext4 with the seed data on {machine}/{disk}")
        os.replace(partial, image)
        shutil.rmtree(src.parent, ignore_errors=True)
    device = next((dev for dev, back in loops_of(directory).items() if back == str(image)), None)
    if device is None:
        device = run(["losetup", "--find", "--show", str(image)], what=f"attach {machine}/{disk} to a loop device"
                     ).stdout.strip()
    return Disk(machine=machine, name=disk, image=image, device=device, mount=mount)


def write_manifest(directory: Path, estate: str, machine: str, disks: list[str]) -> Path:
    manifest = {d: {rel: hashlib.sha256(data).hexdigest() for rel, data in seed_files(estate, machine, d).items()}
                for d in disks}
    path = directory / MANIFEST
    path.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return path


def release(directory: Path, *, timeout: float = RELEASE_TIMEOUT_S) -> list[str]:
    """Unmount everything under `directory` and detach its loop devices; what was released. A loop
    device is freed once the last mount of it is gone (a machine's mount namespace goes away just
    after its last process): waited for, with a deadline."""
    done: list[str] = []
    for target in mounts_under(directory):
        if quiet(["umount", target]) or quiet(["umount", "-l", target]):
            done.append(f"mount {target}")
    detached: set[str] = set()
    deadline = time.monotonic() + timeout
    while True:
        left = loops_of(directory)
        for device in left:
            if quiet(["losetup", "-d", device]) and device not in detached:
                detached.add(device)
                done.append(f"loop {device}")
        if not loops_of(directory) or time.monotonic() > deadline:
            return done
        time.sleep(0.2)
