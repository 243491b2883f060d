"""`Lab`: a whole estate on one Linux machine, from the product's own artifacts.

    lab = Lab.load(Path("examples/sharepoint/dr.yaml"))
    lab.up(progress=print)            # build wheels, network, disks, Azurite, config server, servers, push
    lab.status()                      # what runs where (LabStatus; .to_json())
    lab.down()                        # nothing left: no namespace, loop, mount, bridge or process

The drill (and anything else that drives a lab that is up) uses:
    lab.machines                      source machine names (spec order)
    lab.servers                       process server and master target names (plan order)
    lab.workload(machine)             Workload: pause() / resume() / manifest() / status()
    lab.seed_manifest(machine)        {disk: {path: sha256}} of the data on its disks before any agent
    lab.disk(machine, disk)           DiskRecord: image, loop device, mount point (inside the machine)
    lab.disk_path(machine, disk)      where the host reads that disk's files (/proc/<init>/root/...)
    lab.kill(component)               SIGKILL a component's process (its supervisor restarts it):
                                      a machine name (its agent), a server name, "config-server", "azurite"
    lab.run_on(node, argv, env=...)   run a command on a node (every node resolves every name of the estate;
                                      lab.topology.azure.name is the configuration server's node)
    lab.config_server_url             https://<cs name>:8443 (resolvable on every node)
    lab.ca_file, lab.passphrase_file, lab.state_url   the configuration server's CA, vault passphrase, store
    lab.storage_connection_string     Azurite, the estate's storage accounts
    lab.artifacts                     the built wheels and the venv (lab.artifacts.dr is the `dr` to run)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dr.lab import build, configs, disks, machine, network, services
from dr.lab import state as lab_state
from dr.lab.errors import LabError
from dr.lab.host import require_root, require_tools
from dr.lab.state import DiskRecord, LabState, Process
from dr.lab.topology import LAB_ROOT, Node, NodeKind, Topology, topology
from dr.lab.workload import Manifest, Workload

Progress = Callable[[str], None]
ROOT_ENV = "DR_LAB_ROOT"   # where labs live (default LAB_ROOT, /var/lib/dr-lab): one directory per estate
PUSH_TIMEOUT_S = 900.0     # seconds `dr agent push` gets for the whole estate
SETTLE_S = 5.0             # seconds every component must run without a gap before `up` says it is up
SETTLE_TIMEOUT_S = 60.0    # seconds `up` waits for that


@dataclass(frozen=True)
class Component:
    name: str               # "azurite", "config-server", a server name, "sshd:<m>", "workload:<m>", "agent:<m>"
    kind: str               # azurite, config_server, process_server, master_target, sshd, workload, agent
    node: str
    address: str
    running: bool
    pids: tuple[int, ...]
    detail: str = ""


@dataclass(frozen=True)
class LabStatus:
    estate: str
    directory: str
    up: bool
    subnet: str
    components: tuple[Component, ...]
    disks: tuple[dict[str, Any], ...]
    config_server: str = ""     # its URL (names resolve on the lab's nodes)
    state: str = ""             # its store: `dr status --state STATE` shows the estate's health

    @property
    def all_running(self) -> bool:
        return self.up and all(c.running for c in self.components)

    def to_json(self) -> dict[str, Any]:
        return {
            "estate": self.estate, "directory": self.directory, "up": self.up, "subnet": self.subnet,
            "all_running": self.all_running,
            "components": [{"name": c.name, "kind": c.kind, "node": c.node, "address": c.address,
                            "running": c.running, "pids": list(c.pids), "detail": c.detail}
                           for c in self.components],
            "disks": list(self.disks), "config_server": self.config_server, "state": self.state,
        }


def _quiet(_: str) -> None:
    return None


class Lab:
    """The lab of one estate (see the module docstring). Build it with `Lab.load(spec)`."""

    def __init__(self, spec: Path, estate: Any, plan: Any, topo: Topology) -> None:
        self.spec = spec
        self.estate = estate
        self.plan = plan
        self.topology = topo

    @classmethod
    def load(cls, spec: Path, *, root: Path | None = None) -> Lab:
        """The lab of `spec` under `root` (default $DR_LAB_ROOT, else /var/lib/dr-lab)."""
        from dr.plan import make_plan
        from dr.validate import load_valid

        root = root or Path(os.environ.get(ROOT_ENV) or LAB_ROOT)

        estate, _warnings = load_valid(spec)
        plan = make_plan(estate)
        return cls(spec.resolve(), estate, plan, topology(estate, plan, root=root))

    # -- facts -------------------------------------------------------------------------------------
    @property
    def directory(self) -> Path:
        return self.topology.directory

    @property
    def state(self) -> LabState | None:
        return lab_state.load(self.directory)

    @property
    def is_up(self) -> bool:
        st = self.state
        return st is not None and "up" in st.steps

    @property
    def machines(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.topology.sources)

    @property
    def servers(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.topology.servers)

    @property
    def config_server_url(self) -> str:
        return self.topology.config_server_url

    @property
    def storage_connection_string(self) -> str:
        return self.topology.storage_connection_string

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def passphrase_file(self) -> Path:
        return services.passphrase_file(self.topology)

    @property
    def state_url(self) -> str:
        return str(services.state_db(self.topology))

    @property
    def artifacts(self) -> build.Artifacts:
        return build.artifacts(self.directory)

    @property
    def configs_dir(self) -> Path:
        """The rendered configs (`dr replica configs` with the lab's addresses and disks)."""
        return self.directory / "configs"

    @property
    def ssh_key(self) -> Path:
        return self.directory / "ssh" / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return services.known_hosts(self.topology)

    def workload(self, name: str) -> Workload:
        node = self._source(name)
        return Workload(self.topology.machine_dir(node.name) / "workload", machine=node.name)

    def seed_manifest(self, name: str) -> Manifest:
        path = self.topology.machine_dir(self._source(name).name) / disks.MANIFEST
        if not path.exists():
            raise LabError(f"{name} has no seed manifest: is the lab up? (dr lab up {self.spec})")
        manifest: Manifest = json.loads(path.read_text())
        return manifest

    def disk(self, name: str, disk: str) -> DiskRecord:
        st = self.state
        for d in st.disks if st else ():
            if d.machine == name and d.disk == disk:
                return d
        raise LabError(f"no disk {name}/{disk} in the lab of {self.topology.estate}: is it up?")

    def disk_path(self, name: str, disk: str) -> Path:
        """Where the host reads a disk's files: the machine's mount, through its init's root."""
        return machine.host_path(self.topology, self._source(name), self.disk(name, disk).mount)

    def _mounted(self, d: DiskRecord) -> bool:
        pid = machine.init_pid(self.topology, self.node(d.machine))
        if pid is None:
            return False
        try:
            table = Path(f"/proc/{pid}/mounts").read_text()
        except OSError:
            return False
        return any(line.split()[:2] == [d.device, d.mount] for line in table.splitlines())

    def node(self, name: str) -> Node:
        return self.topology.node(name)

    def run_on(self, name: str, argv: Sequence[str], *, env: dict[str, str] | None = None,
               timeout: float = 600.0) -> Any:
        """Run a command to completion on a node (CompletedProcess, output captured)."""
        return machine.run_on(self.topology, self.node(name), argv, env=env, timeout=timeout)

    def _source(self, name: str) -> Node:
        node = self.node(name)
        if node.kind is not NodeKind.SOURCE:
            raise LabError(f"{name} is a {node.kind.value}, not a source machine: one of {', '.join(self.machines)}")
        return node

    # -- components --------------------------------------------------------------------------------
    def _expected(self) -> list[tuple[str, str, Node]]:
        """(component, kind, node) of everything that runs when the lab is up."""
        topo = self.topology
        out = [("azurite", "azurite", topo.azure), ("config-server", "config_server", topo.azure)]
        out += [(n.name, n.kind.value, n) for n in topo.servers]
        for n in topo.sources:
            out += [(f"{kind}:{n.name}", kind, n) for kind in ("sshd", "workload", "agent")]
        return out

    def status(self) -> LabStatus:
        st = self.state
        live = set(network.owned_namespaces(self.topology))
        running = {n.netns: services.processes(n, lambda _: True) for n in self.topology.nodes if n.netns in live}
        components = []
        for name, kind, node in self._expected():
            found = [f for f in running.get(node.netns, []) if services.MATCHERS[kind](f.argv)]
            detail = ""
            if kind == "agent" and st is not None and not found:
                detail = st.agents.get(node.name, "")
            components.append(Component(name=name, kind=kind, node=node.name, address=node.ip, running=bool(found),
                                        pids=tuple(f.pid for f in found), detail=detail))
        disk_rows = tuple({"machine": d.machine, "disk": d.disk, "device": d.device, "mount": d.mount,
                           "mounted": self._mounted(d)} for d in (st.disks if st else ()))
        return LabStatus(estate=self.topology.estate, directory=str(self.directory),
                         up=st is not None and "up" in st.steps and bool(live), subnet=self.topology.subnet,
                         components=tuple(components), disks=disk_rows, config_server=self.config_server_url,
                         state=self.state_url)

    def kill(self, component: str, sig: int = signal.SIGKILL) -> list[int]:
        """Send `sig` (SIGKILL) to a component's service process, not to its supervisor: a machine name
        or `agent:<machine>` (its agent), a server name, "config-server", "azurite"."""
        target = component
        if component in self.machines:
            target = f"agent:{component}"
        for name, kind, node in self._expected():
            if name == target:
                found = services.processes(node, services.MATCHERS[kind])
                for f in found:
                    try:
                        os.kill(f.pid, sig)
                    except ProcessLookupError:
                        pass
                return [f.pid for f in found]
        known = ", ".join(n for n, _, _ in self._expected())
        raise LabError(f"no component {component!r} in the lab (known: {known})")

    # -- up ----------------------------------------------------------------------------------------
    def up(self, *, disk_size: int = disks.DEFAULT_DISK_SIZE, progress: Progress = _quiet,
           push: bool = True) -> LabStatus:
        """Bring the whole estate up (idempotent: what already runs is kept)."""
        require_root("up")
        require_tools()
        services.azurite_binary()
        with self._lock("up"):
            return self._up(disk_size=disk_size, progress=progress, push=push)

    @contextlib.contextmanager
    def _lock(self, action: str) -> Iterator[None]:
        """One `up` or `down` of a lab at a time (a lock file in the lab's directory)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / ".lock", "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                raise LabError(f"another `dr lab up` or `down` of {self.topology.estate} is running "
                               f"({f.read().strip() or 'pid unknown'}): wait for it") from None
            f.truncate(0)
            f.write(f"{action}, pid {os.getpid()}")
            f.flush()
            yield

    def _up(self, *, disk_size: int, progress: Progress, push: bool) -> LabStatus:
        topo = self.topology
        st = self.state or LabState(estate=topo.estate, spec=str(self.spec), directory=str(self.directory),
                                    disk_size=disk_size, started=time.time())
        st = dataclass_replace_steps(st)
        lab_state.save(self.directory, st)
        logs = self.directory / "logs"
        logs.mkdir(parents=True, exist_ok=True)

        progress("building the agent and dr wheels from the source tree")
        art = build.build(self.directory, log=logs / "build.log")
        st = self._save(st.with_step("built"))

        progress(f"network: bridge {topo.bridge} {topo.subnet}, {len(topo.nodes)} namespaces")
        network.bring_up(topo)
        for node in topo.nodes:
            st = self._save(st.with_host_dirs(machine.prepare(topo, node)))
        st = self._save(st.with_step("network"))

        for node in topo.sources:
            progress(f"disks of {node.name}: {len(node.disks)} x {st.disk_size // disks.MIB} MiB ext4 with seed data")
            d_dir = topo.machine_dir(node.name)
            for d in node.disks:
                made = disks.make(topo.estate, node.name, d.name, d.label, d_dir, st.disk_size)
                st = self._save(st.with_disk(DiskRecord(machine=node.name, disk=d.name, image=str(made.image),
                                                         device=made.device, mount=str(made.mount))))
            disks.write_manifest(d_dir, topo.estate, node.name, [d.name for d in node.disks])
        st = self._save(st.with_step("disks"))

        progress(f"booting {len(topo.nodes)} machines (their namespaces, own paths and mounted disks)")
        for node in topo.nodes:
            mounts = [(d.device, d.mount) for d in st.disks if d.machine == node.name]
            pid = machine.boot(topo, node, mounts)
            st = self._save(st.with_process(Process(component=f"init:{node.name}", node=node.name, pid=pid,
                                                    log=str(self.directory / "logs" / f"init-{node.name}.log"))))
        st = self._save(st.with_step("machines"))

        st = self._ensure(st, "azurite", topo.azure, lambda: services.start_azurite(topo), "Azurite",
                          progress)
        st = self._ensure(st, "config-server", topo.azure,
                          lambda: services.start_config_server(topo, art, self.spec),
                          f"the configuration server {topo.config_server_url}", progress)
        ca = services.export_ca(topo)

        progress("rendering the services' configs (dr replica configs) for the lab's addresses and disks")
        placements = {(d.machine, d.disk): (d.device, d.mount) for d in st.disks}
        configs.render(self.estate, self.plan, addresses=topo.addresses(), placements=placements, out=self.configs_dir)

        supervise = services.supervise_available(art)
        for node in topo.servers:
            kind = node.kind.value
            if services.processes(node, services.MATCHERS[kind]):
                progress(f"{kind.replace('_', ' ')} {node.name}: already running")
                continue
            progress(f"{kind.replace('_', ' ')} {node.name} ({node.ip}): register, start"
                     + (" under dr-agent supervise" if supervise else ""))
            services.install_server(topo, node, art, self.configs_dir, ca)
            services.register(topo, node, art)
            pid, log = services.start_server(topo, node, art, supervise=supervise)
            st = self._save(st.with_process(Process(component=node.name, node=node.name, pid=pid, log=str(log))))

        for node in topo.sources:
            st = self._ensure(st, f"sshd:{node.name}", node, lambda n=node: services.start_sshd(topo, n),  # type: ignore[misc]
                              f"sshd on {node.name} ({node.ip})", progress)
            disk_mounts = {d.name: self.disk(node.name, d.name).mount for d in node.disks}
            seed = topo.nodes.index(node)
            st = self._ensure(st, f"workload:{node.name}", node,
                              lambda n=node, m=disk_mounts, s=seed: services.start_workload(topo, n, art, m, s),  # type: ignore[misc]
                              f"workload on {node.name}", progress)
        st = self._save(st.with_step("services"))

        if push:
            st = self._push(st, art, progress)
        st = self._save(st.with_step("up"))
        return self._settled(progress, expect_agents=push)

    def _settled(self, progress: Progress, *, expect_agents: bool) -> LabStatus:
        """The status once every component has run for SETTLE_S (a service that crash-loops under its
        supervisor is caught here, not by the first user): LabError naming what does not run, and its log."""
        progress(f"waiting until every component has run for {SETTLE_S:.0f} s")
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        steady_since: float | None = None
        down: list[Component] = []
        while time.monotonic() < deadline:
            status = self.status()
            down = [c for c in status.components if not c.running and (expect_agents or c.kind != "agent")]
            if down:
                steady_since = None
            elif steady_since is None:
                steady_since = time.monotonic()
            elif time.monotonic() - steady_since >= SETTLE_S:
                return status
            time.sleep(0.5)
        names = ", ".join(f"{c.name} (log: {self.log_of(c.name)})" for c in down)
        raise LabError(f"not running after {SETTLE_TIMEOUT_S:.0f} s: {names}; `dr lab status` shows the rest")

    def log_of(self, component: str) -> Path:
        """Where a component's output goes (on the host)."""
        logs = self.directory / "logs"
        kind, _, name = component.partition(":")
        if kind == "agent":   # where `dr agent push` has the supervisor write it (Layout.state_dir/log)
            root = machine.root_of(self.topology, self.node(name))
            return next((p for p in (root / "var/log/dr-agent.log", root / "log/dr-agent.log") if p.exists()),
                        root / "var/log/dr-agent.log")
        if kind in ("sshd", "workload"):
            return logs / f"{kind}-{name}.log"
        if component in self.servers:
            unit = services.UNIT_FILES[self.node(component).kind]
            return machine.root_of(self.topology, self.node(component)) / "var" / f"{unit}.log"
        return logs / f"{component}.log"

    def _save(self, st: LabState) -> LabState:
        return lab_state.save(self.directory, st)

    def _ensure(self, st: LabState, component: str, node: Node, start: Callable[[], tuple[int, Path]],
                what: str, progress: Progress) -> LabState:
        kind = component.split(":")[0].replace("-", "_")
        if services.processes(node, services.MATCHERS[kind]):
            progress(f"{what}: already running")
            return st
        progress(f"starting {what}")
        pid, log = start()
        return self._save(st.with_process(Process(component=component, node=node.name, pid=pid, log=str(log))))

    def _push(self, st: LabState, art: build.Artifacts, progress: Progress) -> LabState:
        """`dr agent push` of every source machine, run from the configuration server's node (as ASR's
        configuration server pushes the Mobility Service): over SSH, host keys checked."""
        import dataclasses

        targets = [n.name for n in self.topology.sources
                   if not services.processes(n, services.MATCHERS["agent"])]
        if not targets:
            progress("agents: already running on every machine")
            return st
        help_text = self.run_on(self.topology.azure.name, [str(art.dr), "agent", "push", "--help"], timeout=120)
        if help_text.returncode != 0:
            why = "not installed: this build has no `dr agent push`"
            progress(f"agents: {why}")
            return self._save(dataclasses.replace(st, agents={**st.agents, **{m: why for m in targets}}))
        argv = [str(art.dr), "agent", "push", *targets, "--spec", str(self.spec), "--configs", str(self.configs_dir),
                "--wheel", str(art.agent_wheelhouse)]
        optional = {"--user": "root", "--key-file": str(self.ssh_key), "--known-hosts": str(self.known_hosts),
                    "--server": self.config_server_url, "--ca-file": str(self.ca_file),
                    "--passphrase-env": services.PASSPHRASE_ENV}
        argv += [x for opt, value in optional.items() if opt in help_text.stdout for x in (opt, value)]
        argv += [x for m in targets for x in ("--address", f"{m}={self.node(m).ip}")]
        progress(f"agents: dr agent push {' '.join(targets)}")
        log = self.directory / "logs" / "push.log"
        env = {services.PASSPHRASE_ENV: self.passphrase_file.read_text().strip()}
        done = self.run_on(self.topology.azure.name, argv, env=env, timeout=PUSH_TIMEOUT_S)
        log.write_text(f"$ {' '.join(argv)}\n{done.stdout}{done.stderr}")
        said = {m: "" for m in targets}
        for line in done.stdout.splitlines():
            progress(f"  {line}")
            for m in targets:
                if line.startswith(f"{m}:") or line.startswith(f"{m} "):
                    said[m] = line
        if done.returncode != 0:
            last = (done.stderr or done.stdout).strip().splitlines()
            raise LabError(f"dr agent push failed: {last[-1] if last else done.returncode} (log: {log})")
        return self._save(dataclasses.replace(st, agents={**st.agents, **said}))

    # -- down --------------------------------------------------------------------------------------
    def down(self, *, progress: Progress = _quiet) -> list[str]:
        """Stop and remove everything of this estate's lab; what was removed (idempotent)."""
        require_root("down")
        if not self.directory.exists():
            return self._down(progress)
        with self._lock("down"):
            return self._down(progress)

    def _down(self, progress: Progress) -> list[str]:
        topo = self.topology
        recorded = self.state.host_dirs if self.state else ()
        removed: list[str] = []
        live = set(network.owned_namespaces(topo))
        order = [n for n in topo.sources] + [n for n in topo.servers] + [topo.azure]
        for node in order:
            if node.netns in live:
                count = services.stop_namespace(node.netns)
                if count:
                    progress(f"stopped {count} process(es) on {node.name}")
                    removed.append(f"{count} process(es) on {node.name}")
        for ns in sorted(live - {n.netns for n in order}):   # a namespace of an older spec of this estate
            services.stop_namespace(ns)
        for item in disks.release(self.directory):
            progress(f"released {item}")
            removed.append(item)
        for item in network.tear_down(topo):
            progress(f"removed {item}")
            removed.append(item)
        others = [ns for ns in network.all_lab_namespaces() if not ns.startswith(topo.netns_prefix)]
        removed += machine.remove_host_dirs(other_labs_up=bool(others), recorded=recorded)
        if self.directory.exists():
            import shutil

            if disks.mounts_under(self.directory) or disks.loops_of(self.directory):
                raise LabError(f"{self.directory} still has mounts or loop devices: see `losetup -a` and "
                               "/proc/mounts, then run `dr lab down` again")
            shutil.rmtree(self.directory)
            removed.append(f"directory {self.directory}")
            with contextlib.suppress(OSError):   # the labs' root, when this was its last lab
                self.directory.parent.rmdir()
        return removed


def dataclass_replace_steps(st: LabState) -> LabState:
    """A new `up` over an old state: keep what exists, forget that it was complete."""
    import dataclasses

    return dataclasses.replace(st, steps=tuple(s for s in st.steps if s != "up"))
