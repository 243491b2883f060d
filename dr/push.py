"""Push installation of the agent over SSH (the seed: "push the Mobility Service to the VMs' guest OSs").

`dr agent push MACHINE...` does, per machine, over one SSH connection (paramiko, the host key checked
against a known_hosts file, a password only by reference):

    probe      what the machine has: the last push's record, an identity, systemd, a running agent
    copy       the wheelhouse (the agent's wheel and every dependency's: the machine may have no index)
               and the rendered agent.toml and unit (`dr replica configs`, or rendered here)
    install    into the agent's own virtual environment (contract Layout.venv) with `pip --no-index`;
               `<root>/usr/local/bin/dr-agent` links to it (the path the rendered units start)
    configure  agent.toml, the unit and the env file (0600) under the machine's Layout
    register   `dr-agent register --server URL` once (the vault passphrase goes over the SSH channel's
               stdin, never into a file or a command line on the machine)
    start      systemctl where the machine runs systemd, else `dr-agent supervise --detach`; a running
               agent is restarted only when something it reads changed

A machine whose record matches (the same wheel sha256, agent.toml, unit and env file), that holds an
identity and whose agent runs is left alone: "unchanged". Only the record of a push that finished is
written, so an interrupted push is redone next time.

`root` is the machine's Layout root: "/" on a real machine; the lab and the tests give each simulated
machine a directory of its own, and the rendered files' paths move with it (`relocate`).
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from dr.discover.errors import CertificateUntrusted, SourceError
from dr.discover.physical import SshTarget, connect
from dr.errors import DrError, NotFound, UsageError

UNIT = "dr-agent.service"
CONFIG = "agent.toml"
RECORD = "push.json"                       # in Layout.state_dir: what the last finished push installed
STAGE = "push"                             # Layout.state_dir/push: the copied wheelhouse
EXTRAS = "capture,metrics"                 # the agent package's extras on a source machine (FUSE, metrics)
PASSPHRASE_VAR = "DR_REGISTRATION_PASSPHRASE"  # the name the passphrase has inside the register command
REGISTER_DEADLINE = "5m"                   # how long `dr-agent register` waits for the server (our choice)
# Seconds one remote step may take: a venv and pip install of seven wheels takes ~15 s on this
# project's 2-core VM; a slow disk or CPU gets ten times that.
STEP_TIMEOUT_S = 300.0
# Directories of the default Layout that rendered files name, and the executable the units start.
RELOCATED = ("/etc/dr-agent", "/var/lib/dr-agent", "/opt/dr-agent", "/run/dr-agent", "/var/log/dr-agent",
             "/usr/local/bin/dr-agent")


def relocate(text: str, root: str) -> str:
    """A file rendered for a machine whose Layout root is "/", for one whose root is `root`: every
    path under the default layout (RELOCATED) moved below `root`."""
    if root in ("", "/"):
        return text
    base = root.rstrip("/")
    alternatives = "|".join(re.escape(p) for p in RELOCATED)
    return re.sub(rf"(?<![\w/.])({alternatives})(?=[/\"'\s]|$)", lambda m: base + m.group(1), text, flags=re.M)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the wheelhouse --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Wheelhouse:
    """The agent's wheel and its dependencies' wheels, in one directory."""

    directory: Path
    agent_wheel: Path

    @property
    def wheels(self) -> tuple[Path, ...]:
        return tuple(sorted(self.directory.glob("*.whl")))

    @property
    def version(self) -> str:
        return self.agent_wheel.name.split("-")[1]


def agent_source() -> Path:
    """The agent package's source (`./agent` of a checkout or an editable install)."""
    for candidate in (Path.cwd() / "agent", Path(__file__).resolve().parent.parent / "agent"):
        if (candidate / "pyproject.toml").is_file() and (candidate / "dr_agent").is_dir():
            return candidate
    raise NotFound("the agent package's source (./agent) is not here: run from a checkout of dr, or pass "
                   "--wheel dr_agent-X.whl (or a directory of wheels)")


def _source_hash(source: Path) -> str:
    h = hashlib.sha256()
    files = [source / "pyproject.toml", *sorted((source / "dr_agent").rglob("*.py"))]
    for f in files:
        h.update(str(f.relative_to(source)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _pip_wheel(requirement: str, dest: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "-w",
                           str(dest), requirement], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = [ln for ln in (done.stderr or done.stdout).splitlines() if ln.strip() and "WARNING" not in ln]
        raise UsageError(f"building the agent's wheels failed ({lines[-1].strip() if lines else 'pip wheel'}); "
                         "check pip's index access, or pass --wheel DIR holding every wheel")


def wheelhouse(wheel: Path | None = None, *, cache: Path | None = None) -> Wheelhouse:
    """`wheel`: a directory of wheels (used as it is) or the agent's wheel (its dependencies are
    added with `pip wheel`); None: built from ./agent, kept in `cache` under the source's hash so an
    unchanged source gives the same wheel bytes (and an unchanged push)."""
    if wheel is not None and wheel.is_dir():
        agents = sorted(wheel.glob("dr_agent-*.whl"))
        if not agents:
            raise NotFound(f"--wheel {wheel}: no dr_agent-*.whl in it; build one with `pip wheel ./agent -w {wheel}`")
        return Wheelhouse(wheel, agents[-1])
    if wheel is not None:
        if not wheel.is_file() or not wheel.name.startswith("dr_agent-") or wheel.suffix != ".whl":
            raise NotFound(f"--wheel {wheel}: expected the agent's wheel (dr_agent-X-py3-none-any.whl) or a "
                           "directory of wheels")
        key = sha256(wheel.read_bytes())[:16]
    else:
        source = agent_source()
        key = _source_hash(source)
    root = cache or Path.home() / ".cache" / "dr" / "wheelhouse"
    done = root / key
    if done.is_dir() and any(done.glob("dr_agent-*.whl")):
        return Wheelhouse(done, sorted(done.glob("dr_agent-*.whl"))[-1])
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".build-") as tmp:
        out = Path(tmp) / "wheels"
        out.mkdir()
        if wheel is not None:
            shutil.copy2(wheel, out / wheel.name)
            _pip_wheel(f"{out / wheel.name}[{EXTRAS}]", out)
        else:
            copy = Path(tmp) / "agent"  # build from a copy: pip leaves build/ and egg-info in the tree
            shutil.copytree(agent_source(), copy, ignore=shutil.ignore_patterns(
                "__pycache__", "*.egg-info", "build", "dist"))
            _pip_wheel(f"{copy}[{EXTRAS}]", out)
        try:
            out.rename(done)
        except OSError:  # another push built it meanwhile
            pass
    return Wheelhouse(done, sorted(done.glob("dr_agent-*.whl"))[-1])


# -- what goes to a machine ------------------------------------------------------------------------
@dataclass(frozen=True)
class Bundle:
    """Everything one machine receives; `digest` is the record that makes a repeated push a no-op."""

    machine: str
    address: str
    root: str
    config: str
    unit: str
    env: str
    server: str

    def digest(self, house: Wheelhouse) -> dict[str, str]:
        return {"wheel": sha256(house.agent_wheel.read_bytes()), "version": house.version,
                "config": sha256(self.config.encode()), "unit": sha256(self.unit.encode()),
                "env": sha256(self.env.encode()), "server": self.server}


@dataclass(frozen=True)
class PushOptions:
    ssh: SshTarget                      # address, port, user, key, password, known_hosts
    root: str = "/"
    server: str = ""
    passphrase: str = field(default="", repr=False)
    ca_file: Path | None = None
    python: str = "python3"
    sudo: bool = False
    register_deadline: str = REGISTER_DEADLINE


@dataclass(frozen=True)
class PushResult:
    machine: str
    address: str
    status: str                         # "changed", "unchanged" or "failed"
    actions: tuple[str, ...] = ()
    version: str = ""
    wheel: str = ""
    pid: int | None = None
    manager: str = ""                   # "systemd" or "supervise"
    error: str = ""

    @property
    def line(self) -> str:
        head = f"{self.machine} ({self.address})"
        if self.status == "failed":
            return f"{head}: failed: {self.error}"
        running = f"running under {self.manager}" + (f" (pid {self.pid})" if self.pid else "")
        what = f"dr-agent {self.version} (wheel {self.wheel[:12]})"
        if self.status == "unchanged":
            return f"{head}: unchanged: {what} {running}"
        return f"{head}: {', '.join(self.actions)}; {what} {running}"

    def as_dict(self) -> dict[str, Any]:
        return {"machine": self.machine, "address": self.address, "status": self.status,
                "actions": list(self.actions), "version": self.version, "wheel": self.wheel, "pid": self.pid,
                "manager": self.manager, "error": self.error or None}


# -- the remote side -------------------------------------------------------------------------------
class Remote:
    """One SSH connection to a machine; every command through `sh -c` (with `sudo -n` when asked)."""

    def __init__(self, client: Any, *, where: str, sudo: bool) -> None:
        self.client = client
        self.where = where
        self.sudo = sudo

    def run(self, script: str, *, what: str, stdin: bytes | None = None, check: bool = True,
            timeout: float = STEP_TIMEOUT_S) -> tuple[int, str]:
        command = ("sudo -n " if self.sudo else "") + "sh -c " + shlex.quote(script)
        try:
            chan_in, chan_out, chan_err = self.client.exec_command(command, timeout=timeout)
            if stdin is not None:
                chan_in.write(stdin)
            chan_in.channel.shutdown_write()
            out = chan_out.read().decode("utf-8", "replace")
            err = chan_err.read().decode("utf-8", "replace")
            status = int(chan_out.channel.recv_exit_status())
        except TimeoutError:
            raise SourceError(f"{self.where}: {what} did not finish within {timeout:g} s") from None
        if check and status != 0:
            lines = [ln.strip() for ln in (err or out).splitlines() if ln.strip()]
            raise SourceError(f"{self.where}: {what} failed (exit {status}): {lines[-1][:300] if lines else ''}")
        return status, out

    def put(self, path: PurePosixPath, data: bytes, *, mode: int = 0o644) -> None:
        """Write a file atomically (a temporary name, then rename), without SFTP."""
        tmp = path.with_name(f".{path.name}.push")
        q, qt = shlex.quote(str(path)), shlex.quote(str(tmp))
        self.run(f"umask 077 && mkdir -p {shlex.quote(str(path.parent))} && cat > {qt} && chmod {mode:o} {qt} "
                 f"&& mv -f {qt} {q}", what=f"writing {path}", stdin=data)


def _probe_script(layout: Any, python: str, stage: PurePosixPath, pidfile: Path, use_systemd: bool) -> str:
    ident = layout.identity_dir
    q = shlex.quote
    running = (f"systemctl is-active --quiet {UNIT} && echo running=systemd" if use_systemd else
               f"pid=$(cat {q(str(pidfile))} 2>/dev/null) && kill -0 \"$pid\" 2>/dev/null && "
               f"! grep -qs '^State:.*zombie' /proc/$pid/status && echo running=$pid")
    return "\n".join([
        f"printf 'record=%s\\n' \"$(tr -d '\\n' < {q(str(layout.state_dir / RECORD))} 2>/dev/null)\"",
        f"test -s {q(str(ident / 'cert.pem'))} && test -s {q(str(ident / 'token'))} && echo identity=yes",
        "test -d /run/systemd/system && echo systemd=yes",
        f"{q(python)} -c 'import sys; print(\"python=%d.%d\" % sys.version_info[:2])' 2>/dev/null",
        f"test -x {q(str(layout.venv / 'bin/dr-agent'))} && echo venv=yes",
        f"{running} || true",
        f"cd {q(str(stage))} 2>/dev/null && sha256sum -- *.whl 2>/dev/null | sed 's/^/have=/'",
        "true",
    ])


def _parse_probe(text: str) -> dict[str, Any]:
    facts: dict[str, Any] = {"have": {}}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "have":
            digest, _, name = value.partition("  ")
            facts["have"][name.strip()] = digest.strip()
        elif key:
            facts[key] = value
    try:
        facts["record"] = json.loads(facts.get("record") or "{}")
    except ValueError:
        facts["record"] = {}
    return facts


def push_one(bundle: Bundle, house: Wheelhouse, options: PushOptions) -> PushResult:
    """Install, configure, register and start the agent on one machine; never raises a DrError
    (a failure is a result, so the other machines go on)."""
    from dr_agent.contract import Layout
    from dr_agent.supervise import run_files

    layout = Layout(options.root)
    digest = bundle.digest(house)
    result = PushResult(bundle.machine, bundle.address, "failed", version=house.version, wheel=digest["wheel"])
    try:
        client = connect(options.ssh)
    except CertificateUntrusted as err:
        known = options.ssh.known_hosts or Path.home() / ".ssh/known_hosts"
        host = options.ssh.address if options.ssh.port == 22 else f"[{options.ssh.address}]:{options.ssh.port}"
        if "not in" in str(err):
            return _fail(result, f"{options.ssh.where}: the host key is not in {known}; check its fingerprint and "
                                 f"add it: ssh-keyscan -p {options.ssh.port} {options.ssh.address} >> {known} "
                                 f"(the line starts with {host})")
        return _fail(result, str(err))
    except DrError as err:
        return _fail(result, str(err))
    try:
        remote = Remote(client, where=options.ssh.where, sudo=options.sudo)
        return _push(remote, bundle, house, options, layout, digest, result, run_files(layout, UNIT))
    except DrError as err:
        return _fail(result, str(err))
    finally:
        client.close()


def _fail(result: PushResult, error: str) -> PushResult:
    return PushResult(result.machine, result.address, "failed", version=result.version, wheel=result.wheel,
                      error=error)


def _push(remote: Remote, bundle: Bundle, house: Wheelhouse, options: PushOptions, layout: Any,
          digest: dict[str, str], result: PushResult, files: tuple[Path, Path]) -> PushResult:
    q = shlex.quote
    pidfile, logfile = files
    stage = layout.state_dir / STAGE
    use_systemd_probe = options.root in ("", "/")
    _, text = remote.run(_probe_script(layout, options.python, stage, pidfile, use_systemd_probe),
                         what="probing the machine")
    facts = _parse_probe(text)
    systemd = use_systemd_probe and facts.get("systemd") == "yes"
    manager = "systemd" if systemd else "supervise"
    python = facts.get("python", "")
    if not python:
        raise SourceError(f"{remote.where}: {options.python} does not run there; install Python 3.11 or later "
                          "(Debian: apt-get install python3 python3-venv) or pass --python PATH")
    if tuple(int(x) for x in python.split(".")) < (3, 11):
        raise SourceError(f"{remote.where}: {options.python} is Python {python}; the agent needs 3.11 or later: "
                          "install it or pass --python PATH")
    record = facts["record"]
    running = facts.get("running")
    identity = facts.get("identity") == "yes"
    if record == digest and identity and running and facts.get("venv") == "yes":
        known = int(running) if running.isdigit() else None
        return PushResult(bundle.machine, bundle.address, "unchanged", version=house.version, wheel=digest["wheel"],
                          pid=known, manager=manager)
    actions: list[str] = []
    restart = False
    venv = layout.venv
    bin_link = layout.base / "usr/local/bin/dr-agent"
    if record.get("wheel") != digest["wheel"] or facts.get("venv") != "yes":
        have: dict[str, str] = facts["have"]
        sent = 0
        for wheel in house.wheels:
            if have.get(wheel.name) != sha256(wheel.read_bytes()):
                remote.put(stage / "wheels" / wheel.name, wheel.read_bytes())
                sent += 1
        wheels = stage / "wheels"
        keep = " ".join(q(w.name) for w in house.wheels)
        remote.run(
            f"cd {q(str(wheels))} && for f in *.whl; do case \" {keep} \" in *\" $f \"*) ;; *) rm -f -- \"$f\";; "
            "esac; done", what="removing old wheels")
        agent_wheel = q(str(wheels / house.agent_wheel.name))
        created = facts.get("venv") != "yes"
        remote.run(
            f"set -e; test -x {q(str(venv / 'bin/python'))} || {q(options.python)} -m venv {q(str(venv))}; "
            f"{q(str(venv / 'bin/python'))} -m pip install -q --disable-pip-version-check --no-index "
            f"--find-links {q(str(wheels))} {agent_wheel}[{EXTRAS}]; "
            f"{q(str(venv / 'bin/python'))} -m pip install -q --disable-pip-version-check --no-index --no-deps "
            f"--force-reinstall {agent_wheel}; "
            f"mkdir -p {q(str(bin_link.parent))}; ln -sfn {q(str(venv / 'bin/dr-agent'))} {q(str(bin_link))}",
            what=f"installing the agent into {venv} (pip --no-index from the copied wheels; a missing wheel "
                 "for this machine's Python needs --wheel DIR built for it)")
        actions.append(f"{'installed' if created else 'upgraded'} into {venv} ({sent} wheel(s) copied)")
        restart = True
    written = []
    unit_path = layout.config_dir / UNIT
    for name, path, body, mode, key in (
            (CONFIG, layout.config(CONFIG.removesuffix(".toml")), bundle.config, 0o644, "config"),
            (UNIT, unit_path, bundle.unit, 0o644, "unit"),
            ("env", layout.env_file, bundle.env, 0o600, "env")):
        if record.get(key) != digest[key]:
            remote.put(path, body.encode(), mode=mode)
            written.append(name)
    if written:
        actions.append("wrote " + ", ".join(written))
        restart = True
    if systemd and (UNIT in written or not record):
        remote.put(PurePosixPath("/etc/systemd/system") / UNIT, bundle.unit.encode())
    if not identity:
        if not options.passphrase:
            raise UsageError("the machine has no identity yet and no vault passphrase was given: export "
                             "DR_VAULT_PASSPHRASE (or name the variable with --passphrase-env)")
        ca = ""
        if options.ca_file is not None:
            remote.put(stage / "ca.pem", options.ca_file.read_bytes())
            ca = f" --ca-file {q(str(stage / 'ca.pem'))}"
        remote.run(
            f"{PASSPHRASE_VAR}=\"$(cat)\"; export {PASSPHRASE_VAR}; exec {q(str(venv / 'bin/dr-agent'))} register "
            f"--server {q(options.server)} --name {q(bundle.machine)} --role agent "
            f"--out {q(str(layout.identity_dir))} --passphrase-env {PASSPHRASE_VAR}{ca} "
            f"--address {q(bundle.address)} --deadline {q(options.register_deadline)}",
            what=f"registering with {options.server}", stdin=options.passphrase.encode())
        actions.append(f"registered with {options.server}")
        restart = True
    pid: int | None = None
    if systemd:
        verb = "restart" if restart and running else "start"
        remote.run(f"systemctl daemon-reload && systemctl enable --quiet {UNIT} && systemctl {verb} {UNIT}",
                   what=f"systemctl {verb} {UNIT}")
        actions.append(f"{verb}ed" if verb == "restart" else "started")
    else:
        if running and not restart:
            pid = int(running)
        else:
            if running:
                remote.run(
                    f"pid={int(running)}; kill -TERM $pid 2>/dev/null; i=0; "
                    f"while kill -0 $pid 2>/dev/null && ! grep -qs '^State:.*zombie' /proc/$pid/status; do "
                    f"i=$((i+1)); test $i -gt {int(_stop_timeout(bundle.unit) * 10) + 50} && exit 1; sleep 0.1; done",
                    what=f"stopping the running agent (supervisor pid {running})")
            _, out = remote.run(
                f"exec {q(str(venv / 'bin/dr-agent'))} supervise --unit {q(str(unit_path))} "
                f"--pidfile {q(str(pidfile))} --log {q(str(logfile))} --detach",
                what="starting the agent under dr-agent supervise")
            try:
                pid = int(json.loads(out.strip().splitlines()[-1])["pid"])
            except (ValueError, KeyError, IndexError):
                said = out.strip()[:200]
                raise SourceError(f"{remote.where}: dr-agent supervise said {said!r}, not its pid") from None
            actions.append(("restarted" if running else "started") + f" under dr-agent supervise (log {logfile})")
    remote.put(layout.state_dir / RECORD, json.dumps(digest, sort_keys=True).encode())
    return PushResult(bundle.machine, bundle.address, "changed", tuple(actions), version=house.version,
                      wheel=digest["wheel"], pid=pid, manager=manager)


def _stop_timeout(unit: str) -> float:
    for line in unit.splitlines():
        if line.strip().startswith("TimeoutStopSec="):
            from dr_agent.errors import ConfigError
            from dr_agent.supervise import parse_time_span

            try:
                seconds: float = parse_time_span(line.split("=", 1)[1], what="TimeoutStopSec")
                return min(seconds, 600.0)
            except ConfigError:  # a unit systemd would also refuse: the default
                break
    return 90.0


# -- the command's library half --------------------------------------------------------------------
def bundles(spec: Path, machines: Sequence[str], *, configs: Path | None, root: str, server: str | None,
            addresses: dict[str, str], env: dict[str, str]) -> tuple[list[Bundle], str]:
    """Each named machine's files, and the configuration server URL (default: the plan's first
    configuration server on CS_PORT)."""
    from dr_agent.contract import CS_PORT

    from dr.cli.replica import render_configs
    from dr.plan import make_plan
    from dr.validate import load_valid

    estate, _ = load_valid(spec)
    plan = make_plan(estate)
    if server is None:
        if not plan.config_servers:
            raise UsageError("the plan has no configuration server: pass --server https://HOST:8443")
        server = f"https://{plan.config_servers[0].name}:{CS_PORT}"
    rendered = None if configs is not None else render_configs(estate, plan)
    env_text = "# dr-agent's environment, written by `dr agent push` (0600)\n" + "".join(
        f"{k}={v}\n" for k, v in sorted(env.items()))
    out = []
    names = {m.name for m in estate.machines}
    for name in machines:
        if name not in names:
            raise NotFound(f"no machine {name!r} in {spec}; known: {', '.join(sorted(names))}")
        machine = estate.machine(name)
        address = addresses.get(name) or machine.address or (
            machine.vmware.ip_addresses[0] if machine.vmware and machine.vmware.ip_addresses else None)
        if not address:
            raise UsageError(f"machine {name} has no address in the spec: add `address:` or pass --address {name}=HOST")
        files = []
        for leaf in (CONFIG, UNIT):
            if rendered is not None:
                text = rendered.get(f"{name}/{leaf}")
            else:
                assert configs is not None
                path = configs / name / leaf
                text = path.read_text() if path.is_file() else None
            if text is None:
                where = f"{configs}/{name}/{leaf}" if configs is not None else f"the rendered configs of {spec}"
                raise NotFound(f"{where}: no {leaf} for {name}; is it in a protection group? "
                               "(`dr replica configs` renders agents of protected machines only)")
            files.append(relocate(text, root))
        out.append(Bundle(machine=name, address=address, root=root, config=files[0], unit=files[1],
                          env=relocate(env_text, root), server=server))
    return out, server


def push(bundles_: Sequence[Bundle], house: Wheelhouse, options_for: Callable[[Bundle], PushOptions], *,
         parallel: int = 8) -> list[PushResult]:
    """Push to every machine (up to `parallel` at once); results in the order given."""
    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(bundles_)))) as pool:
        return list(pool.map(lambda b: push_one(b, house, options_for(b)), bundles_))
