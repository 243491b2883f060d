"""Run a rendered systemd unit where there is no systemd (containers, the lab, minimal servers).

`dr-agent supervise --unit dr-agent.service` reads the same unit file `dr replica configs` renders
for systemd and does what systemd would do with the directives our units use:

    ExecStart=        the command (systemd quoting; `$VAR` and `${VAR}` from the environment files);
                      a leading `-` counts a failing exit as success, as in systemd
    EnvironmentFile=  KEY=VALUE lines added to the child's environment, re-read at every start;
                      a leading `-` makes the file optional
    Environment=      KEY=VALUE words
    WorkingDirectory= the child's working directory
    Restart=          no, always, on-failure (on-success, on-abnormal, on-abort too)
    RestartSec=       the pause before a restart (systemd default 100 ms)
    TimeoutStopSec=   how long a stopping child may take after SIGTERM before SIGKILL (default 90 s)

The child runs in its own process group; a stop signals the whole group (systemd's
KillMode=control-group, as near as a process without cgroups gets). SIGTERM or SIGINT to the
supervisor stops the child and then the supervisor. Other directives are ignored, as systemd
ignores unknown ones; the supervisor's own events are JSON lines on its log.

`--detach` daemonizes (fork, setsid, fork), writes the pidfile (the supervisor's pid) and returns
once the supervisor runs; a pidfile naming a live supervisor of the same unit is refused, so a
second start is a no-op the caller can see.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shlex
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from dr_agent.contract import Layout
from dr_agent.errors import ConfigError

# systemd.service(5) defaults: RestartSec=100ms; DefaultTimeoutStopSec=90s (systemd-system.conf(5)).
DEFAULT_RESTART_S = 0.1
DEFAULT_TIMEOUT_STOP_S = 90.0
RESTART_POLICIES = ("no", "always", "on-success", "on-failure", "on-abnormal", "on-abort")
# systemd.time(7): time span units, in seconds.
_SPAN_UNITS = {"us": 1e-6, "usec": 1e-6, "ms": 1e-3, "msec": 1e-3, "": 1.0, "s": 1.0, "sec": 1.0,
               "second": 1.0, "seconds": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
               "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0}
_SPAN = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")
# Seconds a detaching caller waits for the daemon to report that it runs.
DETACH_PATIENCE_S = 10.0


def run_files(layout: Layout, unit_name: str) -> tuple[Path, Path]:
    """Where a machine's supervised unit keeps its pidfile and its log: `<root>/run/dr-agent/
    <unit>.pid` and `<root>/var/log/dr-agent/<unit>.log` (`dr agent push` starts units so; the
    lab gives each machine these directories of its own)."""
    stem = unit_name.removesuffix(".service")
    return Path(layout.base / "run/dr-agent" / f"{stem}.pid"), Path(layout.base / "var/log/dr-agent" / f"{stem}.log")


@dataclass(frozen=True)
class Unit:
    """The [Service] directives the supervisor acts on."""

    path: Path
    exec_start: tuple[str, ...]
    ignore_failure: bool = False
    environment_files: tuple[tuple[Path, bool], ...] = ()   # (path, optional)
    environment: tuple[tuple[str, str], ...] = ()
    working_directory: Path | None = None
    restart: str = "no"
    restart_s: float = DEFAULT_RESTART_S
    timeout_stop_s: float = DEFAULT_TIMEOUT_STOP_S

    def env(self, base: Mapping[str, str]) -> dict[str, str]:
        """The child's environment: `base`, then Environment=, then each EnvironmentFile= (read now)."""
        env = dict(base)
        env.update(self.environment)
        for path, optional in self.environment_files:
            try:
                text = path.read_text()
            except FileNotFoundError:
                if optional:
                    continue
                raise ConfigError(f"{self.path}: EnvironmentFile={path} does not exist; create it, or write "
                                  f"EnvironmentFile=-{path} if it is optional") from None
            except OSError as err:
                raise ConfigError(f"{self.path}: EnvironmentFile={path} cannot be read ({err.strerror})") from None
            env.update(parse_env_file(text))
        return env

    def command(self, env: Mapping[str, str]) -> list[str]:
        """ExecStart= with `${VAR}` replaced inside words and a word `$VAR` split on white space."""
        out: list[str] = []
        for word in self.exec_start:
            whole = _VAR.fullmatch(word)
            if whole and whole.group(2):
                out += env.get(whole.group(2), "").split()
                continue
            out.append(_VAR.sub(lambda m: env.get(m.group(1) or m.group(2), ""), word))
        return out

    def should_restart(self, status: int) -> bool:
        """Restart= applied to the child's exit (`status` as Popen reports it: -N killed by signal N)."""
        clean = status == 0 or (self.ignore_failure and status > 0)
        by_signal = status < 0
        clean_signal = status in (-signal.SIGTERM, -signal.SIGINT, -signal.SIGHUP, -signal.SIGPIPE)
        return {
            "no": False,
            "always": True,
            "on-success": clean or clean_signal,
            "on-failure": not clean and not clean_signal,
            "on-abnormal": by_signal and not clean_signal,
            "on-abort": by_signal and status not in (-signal.SIGTERM, -signal.SIGINT, -signal.SIGHUP,
                                                     -signal.SIGPIPE, -signal.SIGKILL),
        }[self.restart]


def parse_time_span(text: str, *, what: str) -> float:
    """A systemd time span (`2`, `500ms`, `1min 30s`, `infinity`) in seconds."""
    value = text.strip().lower()
    if value == "infinity":
        return float("inf")
    total, pos = 0.0, 0
    for m in _SPAN.finditer(value):
        if value[pos:m.start()].strip() or m.group(2) not in _SPAN_UNITS:
            break
        total += float(m.group(1)) * _SPAN_UNITS[m.group(2)]
        pos = m.end()
    else:
        if pos and not value[pos:].strip():
            return total
    raise ConfigError(f"{what}={text!r} is not a time span; expected e.g. 2, 500ms, 1min 30s or infinity")


def parse_env_file(text: str) -> dict[str, str]:
    """systemd's EnvironmentFile= format: KEY=VALUE lines, `#`/`;` comments, optional quotes."""
    env: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("export "):
            line = line[7:].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            continue  # systemd ignores lines it cannot parse
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key] = value
    return env


def parse_unit(path: Path) -> Unit:
    """The unit file at `path`; ConfigError naming the line when a directive we act on is wrong."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such unit file; render it with `dr replica configs`") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the unit file ({err.strerror})") from None
    section = ""
    values: dict[str, list[tuple[int, str]]] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        number, line = i + 1, lines[i].strip()
        i += 1
        while line.endswith("\\") and i < len(lines):  # a continued line
            line = line[:-1] + " " + lines[i].strip()
            i += 1
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ConfigError(f"{path}:{number}: expected KEY=VALUE or [Section], found {line[:60]!r}")
        if section == "Service":
            values.setdefault(key.strip(), []).append((number, value.strip()))

    def last(key: str) -> tuple[int, str] | None:
        return values[key][-1] if values.get(key) else None

    start = [v for v in values.get("ExecStart", []) if v[1]]
    if not start:
        raise ConfigError(f"{path}: [Service] has no ExecStart=; is this a service unit?")
    if len(start) > 1:
        raise ConfigError(f"{path}:{start[1][0]}: more than one ExecStart= (Type=oneshot) is not supported")
    number, command = start[0]
    ignore_failure = False
    while command and command[0] in "-@+!:":
        ignore_failure |= command[0] == "-"
        if command[0] == "@":
            raise ConfigError(f"{path}:{number}: ExecStart=@ (a different argv[0]) is not supported")
        command = command[1:]
    try:
        argv = tuple(shlex.split(command))
    except ValueError as err:
        raise ConfigError(f"{path}:{number}: ExecStart= cannot be split into words ({err})") from None
    if not argv or not argv[0].startswith("/"):
        raise ConfigError(f"{path}:{number}: ExecStart= must start with an absolute path, found {command[:60]!r}")
    env_files = []
    for _, value in values.get("EnvironmentFile", []):
        if value:
            env_files.append((Path(value[1:]), True) if value.startswith("-") else (Path(value), False))
    environment = []
    for number, value in values.get("Environment", []):
        try:
            words = shlex.split(value)
        except ValueError as err:
            raise ConfigError(f"{path}:{number}: Environment= cannot be split into words ({err})") from None
        for word in words:
            key, sep, val = word.partition("=")
            if not sep:
                raise ConfigError(f"{path}:{number}: Environment= expects KEY=VALUE words, found {word!r}")
            environment.append((key, val))
    restart = last("Restart")
    policy = restart[1] if restart else "no"
    if policy not in RESTART_POLICIES:
        raise ConfigError(f"{path}:{restart[0] if restart else 0}: Restart={policy!r}; expected one of "
                          + ", ".join(RESTART_POLICIES))
    restart_sec = last("RestartSec")
    stop = last("TimeoutStopSec") or last("TimeoutSec")
    workdir = last("WorkingDirectory")
    return Unit(
        path=path, exec_start=argv, ignore_failure=ignore_failure, environment_files=tuple(env_files),
        environment=tuple(environment),
        working_directory=Path(workdir[1].lstrip("-")) if workdir and workdir[1] not in ("", "~") else None,
        restart=policy,
        restart_s=parse_time_span(restart_sec[1], what="RestartSec") if restart_sec else DEFAULT_RESTART_S,
        timeout_stop_s=parse_time_span(stop[1], what="TimeoutStopSec") if stop else DEFAULT_TIMEOUT_STOP_S)


@dataclass
class Supervisor:
    """Runs `unit`'s ExecStart until stopped, restarting it as Restart= says. Not thread-safe: one
    thread calls `run()`; any thread (or a signal handler) may call `stop()`."""

    unit: Unit
    log: IO[str] | None = None          # the child's stdout/stderr and our events; None: inherit
    base_env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    on_event: Callable[[dict[str, Any]], None] | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)
    _child: subprocess.Popen[bytes] | None = None

    def event(self, name: str, **fields: Any) -> None:
        entry = {"time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
                 "supervise": str(self.unit.path.name), "event": name, **fields}
        line = json.dumps(entry)
        if self.log is not None:
            self.log.write(line + "\n")
            self.log.flush()
        else:
            print(line, flush=True)
        if self.on_event is not None:
            self.on_event(entry)

    @property
    def child_pid(self) -> int | None:
        child = self._child
        return child.pid if child is not None and child.returncode is None else None

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> int:
        """Start, wait, restart; returns 0 once stopped, or the child's status when Restart= ends it."""
        while True:
            try:
                env = self.unit.env(self.base_env)
                argv = self.unit.command(env)
                out = self.log if self.log is not None else None
                self._child = subprocess.Popen(
                    argv, env=env, cwd=self.unit.working_directory, stdin=subprocess.DEVNULL,
                    stdout=out, stderr=subprocess.STDOUT if out is not None else None, start_new_session=True)
            except (OSError, ConfigError) as err:
                detail = str(err) if isinstance(err, ConfigError) else f"{argv[0]}: {err.strerror}"
                self.event("start-failed", error=detail)
                status = 203  # systemd's EXIT_EXEC
            else:
                self.event("started", pid=self._child.pid, argv=argv)
                status = self._wait_child(self._child)
                self.event("exited", pid=self._child.pid, status=status)
            if self._stopping.is_set():
                return 0
            if not self.unit.should_restart(status):
                return 0 if status == 0 or (self.unit.ignore_failure and status > 0) else (status if status > 0 else 1)
            self.event("restarting", after_s=self.unit.restart_s)
            if self._stopping.wait(self.unit.restart_s):
                return 0

    def _wait_child(self, child: subprocess.Popen[bytes]) -> int:
        """Wait for the child; on stop(), SIGTERM its group, then SIGKILL after TimeoutStopSec."""
        while True:
            try:
                return child.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
            if self._stopping.is_set():
                return self._terminate(child)

    def _terminate(self, child: subprocess.Popen[bytes]) -> int:
        self.event("stopping", pid=child.pid, timeout_s=self.unit.timeout_stop_s)
        _signal_group(child.pid, signal.SIGTERM)
        try:
            status = child.wait(timeout=None if self.unit.timeout_stop_s == float("inf") else self.unit.timeout_stop_s)
        except subprocess.TimeoutExpired:
            self.event("kill", pid=child.pid, reason=f"still running {self.unit.timeout_stop_s:g} s after SIGTERM")
            _signal_group(child.pid, signal.SIGKILL)
            status = child.wait()
        _signal_group(child.pid, signal.SIGKILL)  # what the main process left behind in its group
        return status


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def read_pidfile(path: Path) -> int | None:
    """The pid in `path` when that process is alive, else None."""
    try:
        pid = int(path.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    try:  # a zombie is not alive
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return pid
    return None if state == "Z" else pid


def supervise(unit_path: Path, *, pidfile: Path | None = None, log: Path | None = None,
              detach: bool = False) -> int:
    """The `dr-agent supervise` command: 0 once stopped, the child's status when Restart= gave up."""
    unit = parse_unit(unit_path)
    unit.env(os.environ)  # a missing required environment file is an error now, not in the background
    if pidfile is not None:
        running = read_pidfile(pidfile)
        if running is not None:
            raise ConfigError(f"{pidfile}: a supervisor already runs as pid {running}; stop it first "
                              f"(kill {running}) or use another --pidfile")
    if detach:
        return _detach(unit, pidfile, log)
    return _run(unit, pidfile, log)


def _run(unit: Unit, pidfile: Path | None, log: Path | None) -> int:
    stream = log.open("a", buffering=1) if log is not None else None
    sup = Supervisor(unit, log=stream)
    previous = {sig: signal.signal(sig, lambda *_: sup.stop()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if pidfile is not None:
            _write_pidfile(pidfile)
        return sup.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if pidfile is not None and read_pidfile(pidfile) == os.getpid():
            pidfile.unlink(missing_ok=True)
        if stream is not None:
            stream.close()


def _write_pidfile(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(f"{os.getpid()}\n")
    os.replace(tmp, path)


def _detach(unit: Unit, pidfile: Path | None, log: Path | None) -> int:
    """Fork, setsid, fork: the daemon reports its pid through a pipe once its pidfile is written."""
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
    read_end, write_end = os.pipe()
    first = os.fork()
    if first:
        os.close(write_end)
        os.waitpid(first, 0)
        with os.fdopen(read_end, "rb") as pipe:
            answer = pipe.read().decode()
        if not answer.strip().isdigit():
            raise ConfigError(f"{unit.path}: the supervisor did not start: {answer.strip() or 'no answer'}")
        print(json.dumps({"supervise": unit.path.name, "pid": int(answer), "pidfile": str(pidfile) if pidfile else None,
                          "log": str(log) if log else None}), flush=True)
        return 0
    # first child: a new session, no controlling terminal
    os.close(read_end)
    os.setsid()
    if os.fork():
        os._exit(0)
    # the daemon
    status = 1
    try:
        os.chdir("/")
        os.umask(0o022)
        null = os.open(os.devnull, os.O_RDWR)
        target = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640) if log is not None else null
        os.dup2(null, 0)
        os.dup2(target, 1)
        os.dup2(target, 2)
        if pidfile is not None:
            _write_pidfile(pidfile)
        os.write(write_end, str(os.getpid()).encode())
        os.close(write_end)
        status = _run(unit, pidfile, log)
    except BaseException as err:
        try:
            os.write(write_end, f"{type(err).__name__}: {err}".encode())
        except OSError:
            pass
    finally:
        os._exit(status)
