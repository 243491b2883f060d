"""The estate's services as the lab starts them, each on its node:

    azure node      Azurite (the storage accounts), the configuration server (`dr config-server start`)
    servers         `dr-agent register --server` then the rendered unit under `dr-agent supervise`
    source machine  sshd (push installation), the workload, and the agent `dr agent push` installs

Every service runs from the lab's build (its venv's entry points); configs are `dr replica configs`
with the lab's addresses. Each process is found again by its namespace and command line, so
`status` and `kill` work whoever started it (the lab, a supervisor, or a push over SSH).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dr_agent.contract import CS_PORT, MT_PORT, PS_PORT, Layout

from dr.lab import machine
from dr.lab.build import Artifacts, source_tree
from dr.lab.errors import LabError
from dr.lab.host import run, tool
from dr.lab.network import namespace_pids
from dr.lab.topology import AZURITE_PORT, Node, NodeKind, Topology

LAYOUT = Layout()
SSH_PORT = 22
START_TIMEOUT_S = 90.0          # seconds a service gets to listen before `up` gives up on it
PASSPHRASE_ENV = "DR_VAULT_PASSPHRASE"   # dr.server.settings reads the vault passphrase from it
UNIT_FILES = {NodeKind.PROCESS_SERVER: "dr-process-server.service", NodeKind.MASTER_TARGET: "dr-master-target.service"}
SERVICE_ARG = {NodeKind.PROCESS_SERVER: "process-server", NodeKind.MASTER_TARGET: "master-target"}
ROLE = {NodeKind.PROCESS_SERVER: "process-server", NodeKind.MASTER_TARGET: "master-target"}   # the CLI spelling
PORT = {NodeKind.PROCESS_SERVER: PS_PORT, NodeKind.MASTER_TARGET: MT_PORT}


# -- finding processes --------------------------------------------------------------------------
@dataclass(frozen=True)
class Found:
    pid: int
    argv: tuple[str, ...]


def cmdline(pid: int) -> tuple[str, ...]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ()
    return tuple(a.decode(errors="replace") for a in raw.split(b"\0") if a)


def processes(node: Node, match: Callable[[tuple[str, ...]], bool]) -> list[Found]:
    found = [Found(pid, cmdline(pid)) for pid in namespace_pids(node.netns)]
    return [f for f in found if f.argv and match(f.argv)]


def _is(*words: str) -> Callable[[tuple[str, ...]], bool]:
    """A matcher: the command line runs a dr/dr-agent program with these words, and is not a supervisor."""
    def match(argv: tuple[str, ...]) -> bool:
        text = " ".join(argv)
        return all(f" {w} " in f" {text} " for w in words) and "supervise" not in argv
    return match


MATCHERS: dict[str, Callable[[tuple[str, ...]], bool]] = {
    "azurite": lambda a: any("azurite" in x for x in a[:2]),
    "config_server": _is("config-server", "start"),
    "process_server": _is("process-server", "--config"),
    "master_target": _is("master-target", "--config"),
    "agent": _is("agent", "--config"),
    # sshd rewrites its title ("sshd: /usr/sbin/sshd -D -e -f CONFIG [listener] ..."); sessions lack CONFIG
    "sshd": lambda a: "sshd" in a[0] and "sshd_config" in " ".join(a),
    "workload": _is("dr.lab.workload"),
    "supervisor": lambda a: "supervise" in a,
}


def wait_port(host: str, port: int, *, what: str, log: Path | None, alive: Callable[[], bool],
              timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            if not alive():
                break
            time.sleep(0.2)
    tail = ""
    if log is not None and log.exists():
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        tail = f": {lines[-1][:300]}" if lines else ""
    state = "stopped" if not alive() else f"does not listen on {host}:{port} after {timeout:.0f} s"
    raise LabError(f"{what} {state}{tail} (log: {log})")


def _alive(pid: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        try:  # a zombie (our child, not yet reaped) is not alive
            return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
        except (OSError, IndexError):
            return False
    return check


# -- azure: Azurite and the configuration server -------------------------------------------------
def azurite_binary() -> str:
    candidates = [os.environ.get("AZURITE_BLOB", ""), shutil.which("azurite-blob") or ""]
    try:
        candidates.append(str(source_tree() / ".ci/cache/node_modules/.bin/azurite-blob"))
    except LabError:
        pass
    found = next((c for c in candidates if c and os.access(c, os.X_OK)), None)
    if found is None:
        raise LabError("Azurite (the estate's Azure Storage in the lab) is not installed: "
                       "bash .ci/setup.d/50-azurite.sh (npm install azurite@3), or set AZURITE_BLOB")
    return found


def start_azurite(topo: Topology) -> tuple[int, Path]:
    node = topo.azure
    data = topo.machine_dir(node.name) / "azurite"
    data.mkdir(parents=True, exist_ok=True)
    log = topo.directory / "logs" / "azurite.log"
    pid = machine.start(topo, node, [azurite_binary(), "--blobHost", node.ip, "--blobPort", str(AZURITE_PORT),
                                     "--location", str(data), "--loose", "--skipApiVersionCheck",
                                     "--disableTelemetry"], log=log)
    wait_port(node.ip, AZURITE_PORT, what="Azurite", log=log, alive=_alive(pid))
    return pid, log


def passphrase_file(topo: Topology) -> Path:
    path = topo.directory / "secrets" / "vault-passphrase"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o700)
        path.touch(mode=0o600)
        path.write_text(os.urandom(18).hex() + "\n")
    return path


def state_db(topo: Topology) -> Path:
    return topo.machine_dir(topo.azure.name) / "config-server" / "state.db"


def start_config_server(topo: Topology, art: Artifacts, spec: Path) -> tuple[int, Path]:
    node = topo.azure
    state_db(topo).parent.mkdir(parents=True, exist_ok=True)
    log = topo.directory / "logs" / "config-server.log"
    pid = machine.start(topo, node, [str(art.dr), "config-server", "start", str(spec),
                                     "--listen", f"{topo.config_server}:{CS_PORT}", "--state", str(state_db(topo)),
                                     "--passphrase-file", str(passphrase_file(topo))], log=log)
    wait_port(node.ip, CS_PORT, what="the configuration server", log=log, alive=_alive(pid))
    return pid, log


def export_ca(topo: Topology) -> Path:
    """The vault CA's certificate (public), as every component is given it to trust the server."""
    from dr.server.store import Store

    store = Store.open(str(state_db(topo)))
    try:
        pem = store.get_meta("ca_certificate")
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            close()
    if not pem:
        raise LabError(f"the configuration server has no CA yet (state {state_db(topo)}): see its log")
    path = topo.directory / "ca.pem"
    path.write_text(pem)
    return path


# -- servers ---------------------------------------------------------------------------------------
def supervise_available(art: Artifacts) -> bool:
    done = subprocess.run([str(art.dr_agent), "supervise", "--help"], capture_output=True, check=False, timeout=60)
    return done.returncode == 0


def _wrapper(topo: Topology, node: Node, target: str) -> None:
    """/usr/local/bin/dr-agent on the machine (the units' ExecStart): the installed entry point."""
    path = machine.root_of(topo, node) / "bin" / "dr-agent"
    path.write_text(f"#!/bin/sh\nexec {target} \"$@\"\n")
    path.chmod(0o755)


def install_server(topo: Topology, node: Node, art: Artifacts, configs: Path, ca: Path) -> None:
    """Put the rendered config, unit, env file and CA on the server, as its installer would."""
    etc = machine.root_of(topo, node) / "etc"
    for f in (configs / node.name).iterdir():
        shutil.copy2(f, etc / f.name)
    shutil.copy2(ca, etc / "ca.pem")
    _wrapper(topo, node, str(art.dr_agent))
    env = {PASSPHRASE_ENV: passphrase_file(topo).read_text().strip()}
    if node.kind is NodeKind.MASTER_TARGET:
        cfg = tomllib.loads((etc / "master-target.toml").read_text()).get("master_target", {})
        names = {str(cfg.get("connection_string_env", "AZURE_STORAGE_CONNECTION_STRING")),
                 *map(str, dict(cfg.get("disk_connection_string_env", {})).values())}
        env.update({n: topo.storage_connection_string for n in sorted(names)})
    env_file = etc / "env"
    env_file.touch(mode=0o600)
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))


def register(topo: Topology, node: Node, art: Artifacts) -> None:
    """`dr-agent register --server` on the server itself: its identity from the configuration server."""
    identity = LAYOUT.identity_dir
    argv = ["/usr/local/bin/dr-agent", "register", "--server", topo.config_server_url, "--name", node.name,
            "--role", ROLE[node.kind], "--out", str(identity), "--passphrase-env", PASSPHRASE_ENV,
            "--ca-file", str(LAYOUT.config_dir / "ca.pem"), "--address", node.name, "--address", node.ip,
            "--deadline", "2m"]
    done = machine.run_on(topo, node, argv, env={PASSPHRASE_ENV: passphrase_file(topo).read_text().strip()})
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise LabError(f"registering {node.name} with the configuration server failed: "
                       f"{lines[-1] if lines else done.returncode}")


def _exec_start(unit: Path) -> tuple[list[str], list[str]]:
    """(ExecStart argv, EnvironmentFiles) of a rendered unit."""
    argv: list[str] = []
    env_files: list[str] = []
    for line in unit.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "ExecStart":
            argv = value.split()
        elif sep and key.strip() == "EnvironmentFile":
            env_files.append(value.strip().lstrip("-"))
    return argv, env_files


def start_unit(topo: Topology, node: Node, art: Artifacts, unit_name: str, *, supervise: bool) -> tuple[int, Path]:
    """Start a rendered unit on the node: under `dr-agent supervise` when the build has it, else its
    ExecStart directly (with its EnvironmentFile). The one place that decides how a unit runs."""
    log = topo.directory / "logs" / f"{node.name}.log"
    unit = LAYOUT.config_dir / unit_name
    if supervise:
        pidfile = LAYOUT.state_dir / f"{unit_name}.pid"
        argv = ["/usr/local/bin/dr-agent", "supervise", "--unit", str(unit), "--pidfile", str(pidfile),
                "--log", str(LAYOUT.state_dir / f"{unit_name}.log"), "--detach"]
        done = machine.run_on(topo, node, argv, timeout=120)
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            raise LabError(f"starting {unit_name} on {node.name} failed: {lines[-1] if lines else done.returncode}")
        host_pidfile = machine.root_of(topo, node) / "var" / f"{unit_name}.pid"
        pid = int(host_pidfile.read_text().split()[0]) if host_pidfile.exists() else 0
        return pid, machine.root_of(topo, node) / "var" / f"{unit_name}.log"
    argv, env_files = _exec_start(machine.root_of(topo, node) / "etc" / unit_name)
    env: dict[str, str] = {}
    for f in env_files:
        host = machine.root_of(topo, node) / "etc" / Path(f).relative_to(LAYOUT.config_dir)
        if host.exists():
            for line in host.read_text().splitlines():
                k, sep, v = line.partition("=")
                if sep and not k.startswith("#"):
                    env[k.strip()] = v.strip()
    return machine.start(topo, node, argv, log=log, env=env), log


def start_server(topo: Topology, node: Node, art: Artifacts, *, supervise: bool) -> tuple[int, Path]:
    pid, log = start_unit(topo, node, art, UNIT_FILES[node.kind], supervise=supervise)

    def alive() -> bool:
        return bool(processes(node, MATCHERS[node.kind.value])) or (pid > 0 and _alive(pid)())

    wait_port(node.ip, PORT[node.kind], what=f"{SERVICE_ARG[node.kind]} {node.name}", log=log, alive=alive)
    return pid, log


# -- source machines: sshd and the workload --------------------------------------------------------
def lab_ssh_key(topo: Topology) -> Path:
    key = topo.directory / "ssh" / "id_ed25519"
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        key.parent.chmod(0o700)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"dr-lab@{topo.estate}", "-f", str(key)],
            what="make the lab's SSH key")
        (key.parent / "authorized_keys").write_text(key.with_suffix(".pub").read_text())
        (key.parent / "authorized_keys").chmod(0o600)
    return key


def known_hosts(topo: Topology) -> Path:
    return topo.directory / "ssh" / "known_hosts"


def start_sshd(topo: Topology, node: Node) -> tuple[int, Path]:
    d = topo.machine_dir(node.name) / "sshd"
    d.mkdir(parents=True, exist_ok=True)
    host_key = d / "ssh_host_ed25519_key"
    if not host_key.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", node.name, "-f", str(host_key)],
            what=f"make the SSH host key of {node.name}")
    lab_ssh_key(topo)
    config = d / "sshd_config"
    config.write_text("\n".join([
        f"# sshd of lab machine {node.name} (dr lab): push installation reaches it here",
        f"ListenAddress {node.ip}", f"Port {SSH_PORT}", f"HostKey {host_key}", f"PidFile {d / 'sshd.pid'}",
        f"AuthorizedKeysFile {topo.directory / 'ssh' / 'authorized_keys'}",
        "PermitRootLogin prohibit-password", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "UsePAM no", "StrictModes no", "UseDNS no", "Subsystem sftp internal-sftp", ""]))
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)   # sshd's privilege separation directory
    log = topo.directory / "logs" / f"sshd-{node.name}.log"
    pid = machine.start(topo, node, [tool("sshd"), "-D", "-e", "-f", str(config)],
                        log=log)
    wait_port(node.ip, SSH_PORT, what=f"sshd on {node.name}", log=log, alive=_alive(pid))
    pub = host_key.with_suffix(".pub").read_text().split()
    entries = {}
    kh = known_hosts(topo)
    if kh.exists():
        entries = {ln.split()[0]: ln for ln in kh.read_text().splitlines() if ln.strip()}
    entries[f"{node.name},{node.ip}"] = f"{node.name},{node.ip} {pub[0]} {pub[1]}"
    kh.write_text("".join(f"{v}\n" for _, v in sorted(entries.items())))
    return pid, log


def start_workload(topo: Topology, node: Node, art: Artifacts, mounts: dict[str, str], seed: int) -> tuple[int, Path]:
    control = topo.machine_dir(node.name) / "workload"
    argv = [str(art.python), "-m", "dr.lab.workload", "--control", str(control), "--seed", str(seed)]
    for disk, mount in sorted(mounts.items()):
        argv += ["--disk", f"{disk}={mount}"]
    log = topo.directory / "logs" / f"workload-{node.name}.log"
    return machine.start(topo, node, argv, log=log), log


# -- stopping --------------------------------------------------------------------------------------
def stop_namespace(netns: str, *, grace_s: float = 10.0) -> int:
    """SIGTERM every process in the namespace, SIGKILL what is left after `grace_s`; how many there were."""
    pids = namespace_pids(netns)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(p)() for p in namespace_pids(netns)):
        time.sleep(0.1)
    for _ in range(50):
        left = [p for p in namespace_pids(netns) if _alive(p)()]
        if not left:
            break
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    return len(pids)
