"""Facts of a Linux machine: what discovery learns over SSH and what the agent reports when it registers.

Pure standard library, so the agent (installed on production servers) and `dr discover physical` share
one model and one set of parsers. Each parser takes the text a read-only command prints:

    /etc/os-release              -> parse_os_release
    lsblk -J -b -o LSBLK_COLUMNS  -> parse_lsblk
    ip -j addr                   -> parse_ip_addr
    findmnt -J -o FINDMNT_COLUMNS -> parse_findmnt
    test -d /sys/firmware/efi    -> firmware "uefi" when it exists, else "bios"
    nproc, /proc/meminfo, uname -m, hostname

`COMMANDS` is the exact list run on a source; `facts_from_outputs` builds `LinuxFacts` from their outputs,
and `collect_local` runs them on this machine (the agent's registration).
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Firmware = Literal["bios", "uefi"]

# No PATH column: it needs util-linux 2.33+, while -J works from 2.27 (the path is derived from NAME).
LSBLK_COLUMNS = "NAME,TYPE,SIZE,FSTYPE,MOUNTPOINT,MODEL,ROTA"
MAPPER_TYPES = frozenset({"lvm", "crypt", "mpath", "dm", "raid0", "raid1", "raid5", "raid6", "raid10"})
FINDMNT_COLUMNS = "TARGET,SOURCE,FSTYPE"
EFI_MARKER = "efi"  # printed by the firmware command when /sys/firmware/efi exists

# The read-only commands run on a source machine, by fact name. Nothing here writes anything.
COMMANDS: Mapping[str, str] = {
    "os_release": "cat /etc/os-release",
    "lsblk": f"lsblk -J -b -o {LSBLK_COLUMNS}",
    "ip_addr": "ip -j addr",
    "firmware": f"test -d /sys/firmware/efi && echo {EFI_MARKER} || echo bios",
    "findmnt": f"findmnt -J -o {FINDMNT_COLUMNS}",
    "nproc": "nproc",
    "meminfo": "cat /proc/meminfo",
    "arch": "uname -m",
    "hostname": "hostname",
}

# File systems that hold no replicable data (kernel and memory file systems), by findmnt's FSTYPE.
VIRTUAL_FILE_SYSTEMS = frozenset({
    "proc", "sysfs", "devtmpfs", "devpts", "tmpfs", "securityfs", "cgroup", "cgroup2", "pstore", "bpf",
    "debugfs", "tracefs", "mqueue", "hugetlbfs", "configfs", "fusectl", "autofs", "binfmt_misc", "efivarfs",
    "ramfs", "rpc_pipefs", "nsfs", "overlay", "squashfs", "fuse.lxcfs", "fuse", "fuse.portal", "selinuxfs",
})


class FactError(ValueError):
    """A command's output cannot be parsed. The message names the command and what was wrong."""


@dataclass(frozen=True)
class OsRelease:
    id: str
    name: str
    version_id: str
    pretty_name: str

    @property
    def display(self) -> str:
        """A human OS name a support matrix can parse: 'CentOS 6.5', 'Ubuntu 22.04', 'SLES 11 SP3'."""
        name = self.name or self.id
        if self.id == "sles" or name.lower().startswith("sles"):
            major, _, sp = self.version_id.partition(".")
            return f"SLES {major} SP{sp}" if sp else f"SLES {major}"
        return f"{name} {self.version_id}".strip()


@dataclass(frozen=True)
class BlockDevice:
    name: str
    path: str
    type: str                  # disk, part, lvm, crypt, mpath, rom, loop
    size_bytes: int
    fstype: str | None = None
    mountpoint: str | None = None
    model: str | None = None
    rotational: bool | None = None
    children: tuple[BlockDevice, ...] = ()

    def walk(self) -> Iterator[BlockDevice]:
        yield self
        for child in self.children:
            yield from child.walk()


@dataclass(frozen=True)
class Address:
    family: Literal["inet", "inet6"]
    address: str
    prefixlen: int


@dataclass(frozen=True)
class Interface:
    name: str
    mac: str | None
    loopback: bool
    addresses: tuple[Address, ...] = ()


@dataclass(frozen=True)
class Mount:
    target: str
    source: str
    fstype: str


@dataclass(frozen=True)
class LinuxFacts:
    hostname: str
    os: OsRelease
    arch: str                  # uname -m: x86_64, i686, aarch64
    cpus: int
    memory_bytes: int
    firmware: Firmware
    block_devices: tuple[BlockDevice, ...] = ()
    interfaces: tuple[Interface, ...] = ()
    mounts: tuple[Mount, ...] = ()
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def disks(self) -> list[BlockDevice]:
        """Whole disks that can hold data: type disk, not empty (zram/ram disks of size 0 are left out)."""
        return [d for d in self.block_devices if d.type == "disk" and d.size_bytes > 0
                and not d.name.startswith(("zram", "ram", "loop"))]

    @property
    def nics(self) -> list[Interface]:
        return [i for i in self.interfaces if not i.loopback]

    @property
    def ip_addresses(self) -> list[str]:
        return [a.address for i in self.nics for a in i.addresses]

    @property
    def data_mounts(self) -> list[Mount]:
        return [m for m in self.mounts if m.fstype not in VIRTUAL_FILE_SYSTEMS]

    def mounts_on(self, disk: BlockDevice) -> list[Mount]:
        """Data mounts whose source is the disk, one of its partitions, or a volume on them."""
        paths = {d.path for d in disk.walk()}
        return [m for m in self.data_mounts if m.source in paths]

    @property
    def volume_manager(self) -> str | None:
        if any(d.type == "lvm" for top in self.block_devices for d in top.walk()):
            return "lvm2"
        return None

    @property
    def multipath(self) -> str | None:
        if any(d.type == "mpath" for top in self.block_devices for d in top.walk()):
            return "device-mapper-multipath"
        return None


# ---------------------------------------------------------------------------------------------
# Parsers: one per command, each raising FactError with the command named.


def parse_os_release(text: str) -> OsRelease:
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, raw = line.partition("=")
        try:
            parts = shlex.split(raw)
        except ValueError:
            raise FactError(f"/etc/os-release: cannot parse {line!r}") from None
        values[key.strip()] = parts[0] if parts else ""
    if "ID" not in values and "NAME" not in values:
        raise FactError("/etc/os-release: neither ID nor NAME is set")
    return OsRelease(
        id=values.get("ID", "").lower(),
        name=values.get("NAME", values.get("ID", "")),
        version_id=values.get("VERSION_ID", ""),
        pretty_name=values.get("PRETTY_NAME", values.get("NAME", "")),
    )


def _json(command: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise FactError(f"{command}: expected JSON output, found {text[:40]!r} ({err.msg})") from None


def _block(item: Mapping[str, Any]) -> BlockDevice:
    size = item.get("size") or 0
    rota = item.get("rota")
    name = str(item.get("name", ""))
    kind = str(item.get("type", ""))
    default_path = f"/dev/mapper/{name}" if kind in MAPPER_TYPES and not kind.startswith("raid") else f"/dev/{name}"
    return BlockDevice(
        name=name,
        path=str(item.get("path") or default_path),
        type=kind,
        size_bytes=int(size),
        fstype=item.get("fstype"),
        mountpoint=item.get("mountpoint"),
        model=(item.get("model") or None),
        rotational=None if rota is None else rota in (True, "1", 1),
        children=tuple(_block(child) for child in item.get("children", ())),
    )


def parse_lsblk(text: str) -> tuple[BlockDevice, ...]:
    data = _json("lsblk -J -b", text)
    if not isinstance(data, dict) or not isinstance(data.get("blockdevices"), list):
        raise FactError("lsblk -J -b: expected {\"blockdevices\": [...]}")
    return tuple(_block(item) for item in data["blockdevices"])


def parse_ip_addr(text: str) -> tuple[Interface, ...]:
    data = _json("ip -j addr", text)
    if not isinstance(data, list):
        raise FactError("ip -j addr: expected a JSON list of interfaces")
    interfaces = []
    for item in data:
        if not isinstance(item, dict) or "ifname" not in item:
            continue
        addresses = tuple(
            Address(family=a["family"], address=a["local"], prefixlen=int(a.get("prefixlen", 0)))
            for a in item.get("addr_info", ())
            if a.get("family") in ("inet", "inet6") and "local" in a
        )
        interfaces.append(Interface(
            name=item["ifname"],
            mac=item.get("address"),
            loopback=item.get("link_type") == "loopback" or "LOOPBACK" in item.get("flags", ()),
            addresses=addresses,
        ))
    return tuple(interfaces)


def parse_findmnt(text: str) -> tuple[Mount, ...]:
    data = _json("findmnt -J", text)
    if not isinstance(data, dict) or not isinstance(data.get("filesystems"), list):
        raise FactError("findmnt -J: expected {\"filesystems\": [...]}")
    out: list[Mount] = []

    def visit(items: list[Any]) -> None:
        for item in items:
            # findmnt shows bind mounts as /dev/sda1[/sub]; the device is what matters.
            source = str(item.get("source", "")).split("[", 1)[0]
            out.append(Mount(target=str(item.get("target", "")), source=source, fstype=str(item.get("fstype", ""))))
            visit(item.get("children", []))

    visit(data["filesystems"])
    return tuple(out)


def parse_meminfo(text: str) -> int:
    """MemTotal from /proc/meminfo, in bytes (the kernel writes kB meaning KiB)."""
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            try:
                return int(parts[1]) * 1024
            except (IndexError, ValueError):
                break
    raise FactError("/proc/meminfo: no MemTotal line")


def parse_int(command: str, text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise FactError(f"{command}: expected a number, found {text.strip()[:40]!r}") from None


def facts_from_outputs(outputs: Mapping[str, str]) -> LinuxFacts:
    """Build the facts from each command's stdout, keyed as in `COMMANDS`."""
    missing = [name for name in COMMANDS if name not in outputs]
    if missing:
        raise FactError(f"missing output of: {', '.join(missing)}")
    return LinuxFacts(
        hostname=outputs["hostname"].strip(),
        os=parse_os_release(outputs["os_release"]),
        arch=outputs["arch"].strip(),
        cpus=parse_int(COMMANDS["nproc"], outputs["nproc"]),
        memory_bytes=parse_meminfo(outputs["meminfo"]),
        firmware="uefi" if outputs["firmware"].strip() == EFI_MARKER else "bios",
        block_devices=parse_lsblk(outputs["lsblk"]),
        interfaces=parse_ip_addr(outputs["ip_addr"]),
        mounts=parse_findmnt(outputs["findmnt"]),
    )


def collect_local(timeout: float = 30.0) -> LinuxFacts:
    """The facts of this machine (the agent's registration): the same commands, run locally."""
    outputs: dict[str, str] = {}
    for name, command in COMMANDS.items():
        done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise FactError(f"{command}: exit status {done.returncode}: {done.stderr.strip()[:200]}")
        outputs[name] = done.stdout
    return facts_from_outputs(outputs)
