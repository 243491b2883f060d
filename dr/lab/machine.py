"""Running a process "on" a lab machine: in its network namespace, and in a private mount namespace
where the product's paths (contract.Layout: /etc/dr-agent, /var/lib/dr-agent, /opt/dr-agent) and
/run/dr-agent and /usr/local/bin are the machine's own directories. What runs there is what runs on
a real machine; only these bind mounts say which machine it is.

    ip netns exec NS unshare --mount --propagation private sh -c 'mount --bind ...; exec "$@"' -- ARGV

The mount targets must exist on the host: the lab creates the empty directories it needs and
records them, so `down` removes exactly those.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path

from dr_agent.contract import Layout

from dr.lab.host import tool
from dr.lab.topology import Node, Topology

HOST_LAYOUT = Layout()
# Paths a lab machine has of its own: (the machine directory's subdirectory, the path on a real machine)
PRIVATE_PATHS: tuple[tuple[str, str], ...] = (
    ("etc", str(HOST_LAYOUT.config_dir)),
    ("var", str(HOST_LAYOUT.state_dir)),
    ("opt", str(HOST_LAYOUT.venv)),
    ("run", "/run/dr-agent"),
    ("log", "/var/log/dr-agent"),  # where `dr agent push` has the supervisor log
    ("bin", "/usr/local/bin"),     # the units' ExecStart=/usr/local/bin/dr-agent: each machine's own
)


def root_of(topo: Topology, node: Node) -> Path:
    """The machine directory whose subdirectories the machine sees at the product's paths."""
    return topo.machine_dir(node.name) / "root"


def prepare(topo: Topology, node: Node) -> list[str]:
    """Create the machine's directories and the host's mount targets; the host directories created."""
    created: list[str] = []
    root = root_of(topo, node)
    for sub, target in PRIVATE_PATHS:
        (root / sub).mkdir(parents=True, exist_ok=True)
        if not os.path.isdir(target):
            os.makedirs(target, exist_ok=True)
            created.append(target)
    return created


def argv(topo: Topology, node: Node, command: Sequence[str], *, private: bool = True) -> list[str]:
    """The host command line that runs `command` on the node (private=False: the namespace only)."""
    base = [tool("ip"), "netns", "exec", node.netns]
    if not private:
        return [*base, *command]
    root = root_of(topo, node)
    binds = "; ".join(f"mount --bind {shlex.quote(str(root / sub))} {shlex.quote(target)}"
                      for sub, target in PRIVATE_PATHS)
    script = f"set -e; {binds}; exec \"$@\""
    return [*base, tool("unshare"), "--mount", "--propagation", "private", "sh", "-c", script, f"lab:{node.name}",
            *command]


def start(topo: Topology, node: Node, command: Sequence[str], *, log: Path, env: dict[str, str] | None = None,
          private: bool = True) -> int:
    """Start a long-running process on the node, detached (its own session), output to `log`; its pid
    (the process itself: ip, unshare and sh exec into it)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv(topo, node, command, private=private), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **(env or {})}, close_fds=True)
    return proc.pid


def run_on(topo: Topology, node: Node, command: Sequence[str], *, env: dict[str, str] | None = None,
           timeout: float = 300.0, private: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command on the node to completion (output captured)."""
    return subprocess.run(argv(topo, node, command, private=private), capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, check=False)
