"""Where each part of an estate lives in the lab: namespaces, interfaces, addresses, directories.

A pure function of the spec and the plan (nothing here touches the host), so `up`, `status`, `down`
and the drill all derive the same names from the same spec. Every name the lab creates on the host
starts with a prefix derived from the estate's name (`drlab-<key>-...` namespaces, `dl<key>...`
interfaces), so `down` can find what a crashed `up` left even without its state file.

Nodes (one network namespace each, one veth pair to the lab's bridge):
    source         a source machine of the spec: sshd, its disks' workload, the pushed agent
    process_server a process server of the plan (its site's addresses are replaced by the lab's)
    master_target  a master target of the plan
    azure          the estate's Azure: Azurite (the storage accounts) and the configuration server

A node per server, not per site: the rendered configs bind fixed ports (metrics on 127.0.0.1:9101,
a master target on 0.0.0.0:9444), so two servers cannot share one namespace.
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dr.lab.errors import LabError

# The lab's subnets: 10.213.N.0/24, N derived from the estate name, so two estates' labs can be up
# at once. Only the lab's own namespaces live there; nothing is routed anywhere else.
SUBNET_PREFIX = "10.213"
SUBNET_THIRD_OCTETS = range(16, 240)      # N: a hash of the estate name into this range
GATEWAY_HOST = 1                          # the host's address on the bridge: 10.213.N.1
AZURE_HOST = 2                            # Azurite and the configuration server
FIRST_NODE_HOST = 10                      # servers and machines from 10.213.N.10 on
MAX_NODES = 240 - FIRST_NODE_HOST
AZURITE_PORT = 10000                      # Azurite's documented default blob port
LAB_ROOT = Path("/var/lib/dr-lab")        # one directory per estate below it
NETNS_PREFIX = "drlab-"
IFACE_PREFIX = "dl"                       # Linux interface names: at most 15 characters (IFNAMSIZ - 1)


class NodeKind(enum.StrEnum):
    SOURCE = "source"
    PROCESS_SERVER = "process_server"
    MASTER_TARGET = "master_target"
    AZURE = "azure"


@dataclass(frozen=True)
class LabDisk:
    """A spec disk of a source machine, as the lab makes it."""

    name: str
    label: str          # the ext4 label (at most 16 bytes)


@dataclass(frozen=True)
class Node:
    name: str           # the spec's (or plan's) name; also its host name in every namespace's /etc/hosts
    kind: NodeKind
    netns: str
    ip: str
    veth: str           # the host end, enslaved to the bridge
    peer: str           # the namespace end (renamed eth0 inside)
    site: str | None = None
    disks: tuple[LabDisk, ...] = ()


@dataclass(frozen=True)
class Topology:
    estate: str
    key: str            # 6 hex digits of the estate name's sha256: in every name the lab creates
    third_octet: int
    directory: Path     # LAB_ROOT/<estate>
    nodes: tuple[Node, ...]
    config_server: str  # the plan's configuration server name (its /etc/hosts name)

    @property
    def subnet(self) -> str:
        return f"{SUBNET_PREFIX}.{self.third_octet}.0/24"

    @property
    def gateway(self) -> str:
        return f"{SUBNET_PREFIX}.{self.third_octet}.{GATEWAY_HOST}"

    @property
    def bridge(self) -> str:
        return f"{IFACE_PREFIX}{self.key}br"

    @property
    def netns_prefix(self) -> str:
        return f"{NETNS_PREFIX}{self.key}-"

    @property
    def azure(self) -> Node:
        return next(n for n in self.nodes if n.kind is NodeKind.AZURE)

    @property
    def sources(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.kind is NodeKind.SOURCE)

    @property
    def servers(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.kind in (NodeKind.PROCESS_SERVER, NodeKind.MASTER_TARGET))

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        known = ", ".join(n.name for n in self.nodes)
        raise LabError(f"no machine or server named {name!r} in the lab of {self.estate} (known: {known})")

    def hosts(self) -> dict[str, str]:
        """Name -> address, as every namespace's /etc/hosts says."""
        names = {n.name: n.ip for n in self.nodes if n.kind is not NodeKind.AZURE}
        names[self.config_server] = self.azure.ip
        names["azurite"] = self.azure.ip
        return names

    def addresses(self) -> dict[str, str]:
        """`dr replica configs --address NAME=IP`: every server's and machine's lab address."""
        return {n.name: n.ip for n in self.nodes if n.kind is not NodeKind.AZURE}

    def machine_dir(self, name: str) -> Path:
        """The node's own directory: its Layout root, logs, disk images, workload control."""
        return self.directory / "machines" / name

    @property
    def storage_connection_string(self) -> str:
        # Azurite's well-known development account (public, documented by Microsoft for Azurite).
        return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
                f"BlobEndpoint=http://{self.azure.ip}:{AZURITE_PORT}/{AZURITE_ACCOUNT};")

    @property
    def config_server_url(self) -> str:
        from dr_agent.contract import CS_PORT

        return f"https://{self.config_server}:{CS_PORT}"


AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def estate_key(estate: str, root: Path = LAB_ROOT) -> str:
    """Six hex digits naming the lab of `estate` under `root` (another root: another lab, other names)."""
    text = estate if root == LAB_ROOT else f"{estate}\0{root}"
    return hashlib.sha256(text.encode()).hexdigest()[:6]


def _label(disk: str) -> str:
    return disk.encode()[:16].decode(errors="ignore") or "disk"


def topology(estate: Any, plan: Any, *, root: Path = LAB_ROOT) -> Topology:
    """The lab of a loaded estate and its plan."""
    key = estate_key(estate.estate, root)
    octet = SUBNET_THIRD_OCTETS[int(key, 16) % len(SUBNET_THIRD_OCTETS)]
    nodes: list[Node] = []
    base = ipaddress.ip_address(f"{SUBNET_PREFIX}.{octet}.0")

    def add(name: str, kind: NodeKind, host: int, **kw: Any) -> None:
        index = len(nodes)
        nodes.append(Node(name=name, kind=kind, netns=f"{NETNS_PREFIX}{key}-{name}", ip=str(base + host),
                          veth=f"{IFACE_PREFIX}{key}{index:03d}h", peer=f"{IFACE_PREFIX}{key}{index:03d}n", **kw))

    servers = [(ps.name, NodeKind.PROCESS_SERVER, ps.site) for ps in plan.process_servers]
    servers += [(mt.name, NodeKind.MASTER_TARGET, None) for mt in plan.master_targets]
    machines = [(m.name, NodeKind.SOURCE, m.site) for m in estate.machines]
    taken = {name for name, _, _ in servers + machines}
    add(next(n for n in ("azure", "lab-azure", f"azure-{key}") if n not in taken), NodeKind.AZURE, AZURE_HOST)
    if len(servers) + len(machines) > MAX_NODES:
        raise LabError(f"the lab holds at most {MAX_NODES} machines and servers, {estate.estate} has "
                       f"{len(servers) + len(machines)}: run a smaller spec in the lab")
    for i, (name, kind, site) in enumerate(servers + machines):
        disks: tuple[LabDisk, ...] = ()
        if kind is NodeKind.SOURCE:
            disks = tuple(LabDisk(d.name, _label(d.name)) for d in estate.machine(name).disks)
        add(name, kind, FIRST_NODE_HOST + i, site=site, disks=disks)
    cs = plan.config_servers[0].name if plan.config_servers else f"{estate.estate}-cs01"
    return Topology(estate=estate.estate, key=key, third_octet=octet, directory=root / estate.estate,
                    nodes=tuple(nodes), config_server=cs)
