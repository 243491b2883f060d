"""The lab's network: one bridge on the host, a namespace per node, a veth pair to the bridge each,
and each namespace's /etc/hosts (`/etc/netns/<ns>/hosts`, which `ip netns exec` bind-mounts over
/etc/hosts) naming every node, so services dial each other by the names the rendered configs use.

The bridge carries only the lab's subnet: no forwarding, no NAT, no route out of the lab.
"""

from __future__ import annotations

import os
from pathlib import Path

from dr.lab.errors import LabError
from dr.lab.host import quiet, run
from dr.lab.topology import NETNS_PREFIX, Node, Topology

NETNS_ETC = Path("/etc/netns")
NETNS_RUN = Path("/run/netns")


def bring_up(topo: Topology) -> None:
    """Create what is missing (idempotent: a second `up` finds everything in place)."""
    prefix = topo.gateway.rsplit(".", 1)[0] + "."
    for line in run(["ip", "-o", "-4", "addr", "show"], what="list the host's addresses").stdout.splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[3].startswith(prefix) and fields[1] != topo.bridge:
            raise LabError(f"{topo.subnet} is already used by {fields[1]} (another lab?): run `dr lab down` for "
                           "that estate, or use another --root")
    if not Path(f"/sys/class/net/{topo.bridge}").exists():
        run(["ip", "link", "add", topo.bridge, "type", "bridge"], what=f"create the lab bridge {topo.bridge}")
        run(["ip", "addr", "add", f"{topo.gateway}/24", "dev", topo.bridge], what="address the lab bridge")
    run(["ip", "link", "set", topo.bridge, "up"], what="bring the lab bridge up")
    hosts = _hosts_file(topo)
    for node in topo.nodes:
        _namespace(topo, node, hosts)


def _hosts_file(topo: Topology) -> str:
    lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback",
             f"# the lab of estate {topo.estate} (dr lab): every node by the name the rendered configs use"]
    lines += [f"{ip} {name}" for name, ip in sorted(topo.hosts().items(), key=lambda kv: kv[1])]
    return "\n".join(lines) + "\n"


def _namespace(topo: Topology, node: Node, hosts: str) -> None:
    etc = NETNS_ETC / node.netns
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "hosts").write_text(hosts)
    if not (NETNS_RUN / node.netns).exists():
        run(["ip", "netns", "add", node.netns], what=f"create the network namespace of {node.name}")
    inside = ["ip", "netns", "exec", node.netns]
    run([*inside, "ip", "link", "set", "lo", "up"], what=f"bring up loopback in {node.netns}")
    if run([*inside, "ip", "link", "show", "eth0"], what="", check=False).returncode == 0:
        return
    if not Path(f"/sys/class/net/{node.veth}").exists():
        run(["ip", "link", "add", node.veth, "type", "veth", "peer", "name", node.peer],
            what=f"create the veth pair of {node.name}")
    run(["ip", "link", "set", node.veth, "master", topo.bridge], what=f"attach {node.name} to the lab bridge")
    run(["ip", "link", "set", node.veth, "up"], what=f"bring up {node.veth}")
    run(["ip", "link", "set", node.peer, "netns", node.netns], what=f"move {node.peer} into {node.netns}")
    run([*inside, "ip", "link", "set", node.peer, "name", "eth0"], what=f"name eth0 in {node.netns}")
    run([*inside, "ip", "addr", "add", f"{node.ip}/24", "dev", "eth0"], what=f"address {node.name}")
    run([*inside, "ip", "link", "set", "eth0", "up"], what=f"bring up eth0 of {node.name}")


def all_lab_namespaces() -> list[str]:
    """Every lab's namespaces on the host (any estate, any root)."""
    names = set(os.listdir(NETNS_RUN)) if NETNS_RUN.is_dir() else set()
    names |= set(os.listdir(NETNS_ETC)) if NETNS_ETC.is_dir() else set()
    return sorted(n for n in names if n.startswith(NETNS_PREFIX))


def owned_namespaces(topo: Topology) -> list[str]:
    """Every namespace of this estate's lab on the host (by name: also what a crashed `up` left)."""
    return [n for n in all_lab_namespaces() if n.startswith(topo.netns_prefix)]


def namespace_pids(netns: str) -> list[int]:
    done = run(["ip", "netns", "pids", netns], what="", check=False)
    return [int(p) for p in done.stdout.split() if p.isdigit()] if done.returncode == 0 else []


def tear_down(topo: Topology) -> list[str]:
    """Delete namespaces, veths and the bridge (processes must be gone first); what was removed."""
    removed: list[str] = []
    for ns in owned_namespaces(topo):
        if quiet(["ip", "netns", "delete", ns]):
            removed.append(f"namespace {ns}")
        etc = NETNS_ETC / ns
        if etc.is_dir():
            for f in etc.iterdir():
                f.unlink()
            etc.rmdir()
    if NETNS_ETC.is_dir() and not any(NETNS_ETC.iterdir()):
        NETNS_ETC.rmdir()   # made by the first lab (`ip netns` needs none): the last one removes it
    for iface in sorted(os.listdir("/sys/class/net")):
        if iface.startswith(f"dl{topo.key}") and quiet(["ip", "link", "delete", iface]):
            removed.append(f"interface {iface}")
    return removed
