"""A lab machine: one network namespace and one mount namespace, held by the machine's init process,
which every process of the machine joins. In the mount namespace, the product's paths
(contract.Layout: /etc/dr-agent, /var/lib/dr-agent, /opt/dr-agent), /run/dr-agent, /var/log/dr-agent
and /usr/local/bin are the machine's own directories, /etc/hosts names every node, and the machine's
disks are mounted. What runs there is what runs on a real machine; only these mounts say which
machine it is.

    init:   ip netns exec NS unshare --mount --propagation private sh -c 'mount ...; exec sleep infinity'
    others: nsenter --target INIT --mount --net -- ARGV

The disks are mounted only inside the machine (never on the host), so no other process's mount
namespace holds a copy of them, and they are gone when the machine's last process is. The host
reads a machine's files through /proc/INIT/root (`host_path`). The mount targets must exist on
the host: the lab creates the empty directories it needs and records them for `down`.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from dr_agent.contract import Layout

from dr.lab.errors import LabError
from dr.lab.host import tool
from dr.lab.topology import Node, Topology

HOST_LAYOUT = Layout()
# Paths a lab machine has of its own: (the machine directory's subdirectory, the path on a real machine)
PRIVATE_PATHS: tuple[tuple[str, str], ...] = (
    ("etc", str(HOST_LAYOUT.config_dir)),
    ("var", str(HOST_LAYOUT.state_dir)),
    ("opt", str(HOST_LAYOUT.venv)),
    ("run", "/run/dr-agent"),
    ("log", "/var/log/dr-agent"),
    ("bin", "/usr/local/bin"),     # the units' ExecStart=/usr/local/bin/dr-agent: each machine's own
)
INIT_TIMEOUT_S = 30.0              # seconds a machine's init gets to mount its file systems


def root_of(topo: Topology, node: Node) -> Path:
    """The machine directory whose subdirectories the machine sees at the product's paths."""
    return topo.machine_dir(node.name) / "root"


# The empty host directories labs created as mount targets, shared by every lab on the host: the
# last lab to go down removes them (removing one while another lab's machines have it bind-mounted
# would detach their mounts).
HOST_DIRS_FILE = Path("/run/dr-lab/host-dirs")


def prepare(topo: Topology, node: Node) -> list[str]:
    """Create the machine's directories and the host's mount targets; the host directories created."""
    created: list[str] = []
    root = root_of(topo, node)
    for sub, target in PRIVATE_PATHS:
        (root / sub).mkdir(parents=True, exist_ok=True)
        if not os.path.isdir(target):
            os.makedirs(target, exist_ok=True)
            created.append(target)
    if created:
        HOST_DIRS_FILE.parent.mkdir(parents=True, exist_ok=True)
        with open(HOST_DIRS_FILE, "a") as f:
            f.write("".join(f"{d}\n" for d in created))
    return created


def remove_host_dirs(*, other_labs_up: bool, recorded: Sequence[str] = ()) -> list[str]:
    """The host directories labs created (the shared record, and this lab's `recorded`), once no
    other lab is up (each only if still empty)."""
    if other_labs_up:
        return []
    shared = HOST_DIRS_FILE.read_text().split() if HOST_DIRS_FILE.exists() else []
    removed = []
    for d in dict.fromkeys([*shared, *recorded]):
        try:
            os.rmdir(d)
            removed.append(f"directory {d}")
        except OSError:
            pass
    HOST_DIRS_FILE.unlink(missing_ok=True)
    try:
        HOST_DIRS_FILE.parent.rmdir()
    except OSError:
        pass
    return removed


def _pidfile(topo: Topology, node: Node) -> Path:
    return topo.machine_dir(node.name) / "init.pid"


def init_pid(topo: Topology, node: Node) -> int | None:
    """The machine's init, when it runs."""
    try:
        pid = int(_pidfile(topo, node).read_text().split()[0])
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        same_net = os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{node.netns}").st_ino
    except (OSError, ValueError, IndexError):
        return None
    return pid if same_net and argv[:2] == [b"sleep", b"infinity"] else None


def boot(topo: Topology, node: Node, mounts: Sequence[tuple[str, str]] = ()) -> int:
    """Start the machine's init (idempotent): its namespaces, private paths, hosts file and disks
    (`mounts`: (device, mount point) pairs); its pid once everything is mounted."""
    running = init_pid(topo, node)
    if running is not None:
        return running
    root = root_of(topo, node)
    ready = topo.machine_dir(node.name) / "init.ready"
    ready.unlink(missing_ok=True)
    steps = [f"mount --bind {shlex.quote(str(root / sub))} {shlex.quote(target)}" for sub, target in PRIVATE_PATHS]
    for device, mount in mounts:
        Path(mount).mkdir(parents=True, exist_ok=True)
        steps.append(f"mount {shlex.quote(device)} {shlex.quote(mount)}")
    steps.append(f": > {shlex.quote(str(ready))}")
    script = "set -e; " + "; ".join(steps) + "; exec sleep infinity"
    argv = [tool("ip"), "netns", "exec", node.netns, tool("unshare"), "--mount", "--propagation", "private",
            "sh", "-c", script, f"lab:{node.name}"]
    log = topo.directory / "logs" / f"init-{node.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
    deadline = time.monotonic() + INIT_TIMEOUT_S
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
            lines = log.read_text(errors="replace").strip().splitlines()
            raise LabError(f"machine {node.name} did not start: {lines[-1] if lines else 'no output'} (log: {log})")
        time.sleep(0.05)
    _pidfile(topo, node).write_text(f"{proc.pid}\n")
    return proc.pid


def argv(topo: Topology, node: Node, command: Sequence[str]) -> list[str]:
    """The host command line that runs `command` on the machine."""
    pid = init_pid(topo, node)
    if pid is None:
        raise LabError(f"machine {node.name} is not running: run `dr lab up` for its estate")
    return [tool("nsenter"), "--target", str(pid), "--mount", "--net", "--", *command]


def host_path(topo: Topology, node: Node, path: str | Path) -> Path:
    """Where the host reads the machine's `path` (through its init's root)."""
    pid = init_pid(topo, node)
    if pid is None:
        raise LabError(f"machine {node.name} is not running: run `dr lab up` for its estate")
    return Path(f"/proc/{pid}/root") / str(path).lstrip("/")


def start(topo: Topology, node: Node, command: Sequence[str], *, log: Path, env: dict[str, str] | None = None) -> int:
    """Start a long-running process on the machine, detached (its own session), output to `log`;
    its pid (the process itself: nsenter execs into it)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv(topo, node, command), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **(env or {})}, close_fds=True)
    return proc.pid


def run_on(topo: Topology, node: Node, command: Sequence[str], *, env: dict[str, str] | None = None,
           timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    """Run a command on the machine to completion (output captured)."""
    return subprocess.run(argv(topo, node, command), capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, check=False)
