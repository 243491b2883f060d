"""`dr-agent`: the data path's services and their certificates.

    dr-agent register --server https://cs01:8443 --name ps01 --role process-server \\
        --out /etc/dr-agent/identity --passphrase-env DR_VAULT_KEY --ca-file vault-ca.pem --address 10.0.0.4
    dr-agent agent --config /etc/dr-agent/agent.toml        # on a source machine, as root
    dr-agent process-server --config /etc/dr-agent/process-server.toml
    dr-agent master-target --config /etc/dr-agent/master-target.toml
    dr-agent supervise --unit /etc/dr-agent/dr-agent.service --detach   # where there is no systemd

Service configuration files are TOML, rendered from the spec and the plan (blueprints/agent/).
A service prints one JSON line when it listens ({"service", "port", "metrics_port"}) and runs
until SIGTERM or SIGINT. With a `[control]` table (`server = "https://cs01:8443"`) it reports its
health (and a master target its recovery points) to the configuration server by itself.
Exit codes: 0 stopped cleanly, 2 bad configuration or usage, 1 failure.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import logging
import os
import signal
import sys
import threading
import tomllib
from pathlib import Path
from typing import Any

from dr_agent.cache import write_atomic
from dr_agent.contract import SERVICE_ROLES, Role, parse_role
from dr_agent.errors import AgentError, ConfigError
from dr_agent.pki import Identity

GIB = 1024**3


def _addr(value: str, what: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"{what} = {value!r}: expected HOST:PORT, e.g. 127.0.0.1:9443")
    return host, int(port)


def _section(path: Path, name: str) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    if name not in data:
        raise ConfigError(f"{path}: expected a [{name}] table; found {', '.join(data) or 'none'}")
    section: dict[str, Any] = data[name]
    return section


def _need(cfg: dict[str, Any], key: str, path: Path, table: str) -> Any:
    if key not in cfg:
        raise ConfigError(f"{path}: [{table}] needs {key} = ...")
    return cfg[key]


def _endpoints(c: dict[str, Any]) -> tuple[str, int, int | None]:
    """A service's listen host and port, and its metrics port (None: no metrics endpoint)."""
    host, port = _addr(str(c.get("listen", "127.0.0.1:0")), "listen")
    metrics = _addr(str(c["metrics"]), "metrics")[1] if "metrics" in c else None
    return host, port, metrics


def _passphrase(env: str) -> str:
    value = os.environ.get(env)
    if not value:
        raise ConfigError(f"the registration passphrase is read from ${env}, which is not set")
    return value


# glibc mallopt(3) parameters (malloc.h) and the values the services set: a frame or a payload
# of 1-4 MiB is allocated and freed thousands of times a second; by default each is a fresh
# mmap, zeroed and page-faulted in again. Measured on this project's 2-core VM: about a tenth of
# the services' CPU time goes away when they are served from the heap instead.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024    # glibc's maximum on 64-bit (HEAP_MAX_SIZE / 2)
_TRIM_THRESHOLD_BYTES = 256 * 1024 * 1024   # free heap kept before it is given back


def _tune_malloc() -> None:
    """Keep large buffers in the heap (glibc only; elsewhere nothing changes)."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
    mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES)


class JsonLines(logging.Formatter):
    """One JSON object per log line: time (UTC, ISO 8601), level, logger, thread, message, and the
    traceback when there is one, so a log shipper needs no parsing rules."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(), "logger": record.name, "thread": record.threadName,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _control(service: Any, name: str, config: Path | None) -> Any:
    """The service's ControlLoop when its configuration has a `[control]` table, else None."""
    from dr_agent.control import ControlConfig, ControlLoop

    if config is None:
        return None
    data = tomllib.loads(config.read_text())
    table = data.get("control")
    if table is None:
        return None
    role = parse_role(name)
    own = data.get(role.value, {})
    if not isinstance(table, dict) or not (table.get("identity") or own.get("identity")):
        raise ConfigError(f"{config}: [control] needs the identity directory (its token and CA): "
                          f"set identity in [control] or [{role.value}]")
    cfg = ControlConfig.from_table(table, identity_dir=Path(str(own.get("identity", ""))), where=str(config))
    catalog = getattr(service, "catalog_report", None) if role == Role.MASTER_TARGET else None
    return ControlLoop(cfg, role=role, name=name, health=service.health, catalog=catalog).start()


def _serve(service: Any, name: str, config: Path | None = None) -> int:
    """Run a built service until SIGTERM/SIGINT; with `config`'s `[control]` table, report to the
    configuration server meanwhile."""
    _tune_malloc()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        control = _control(service, name, config)
    except BaseException:
        service.close()
        raise
    print(json.dumps({"service": name, "port": service.port, "metrics_port": service.metrics_port}), flush=True)
    logging.getLogger(f"dr_agent.{name}").info("%s listening on port %s", name, service.port)
    stop.wait()
    logging.getLogger(f"dr_agent.{name}").info("%s stopping", name)
    if control is not None:
        control.close()
    service.close()
    return 0


def run_process_server(path: Path) -> int:
    from dr_agent.process_server import ProcessServer

    return _serve(ProcessServer(process_server_config(path)), "process-server", path)


def process_server_config(path: Path) -> Any:
    """The ProcessServerConfig a TOML file describes; ConfigError when it is wrong."""
    from dr_agent.process_server import ProcessServerConfig
    from dr_agent.ps_coordinator import group_configs

    t = "process_server"
    c = _section(path, t)
    host, port, metrics = _endpoints(c)
    config = ProcessServerConfig(
        groups=group_configs(c.get("groups", []), str(path)),
        name=str(c.get("name", "ps")), identity=Identity(Path(_need(c, "identity", path, t))),
        cache_dir=Path(_need(c, "cache_dir", path, t)),
        master_target=_addr(str(_need(c, "master_target", path, t)), "master_target"),
        master_target_hostname=c.get("master_target_hostname"), listen_host=host, listen_port=port,
        capacity_bytes=int(float(c.get("capacity_gb", 10)) * GIB),
        throttle_mbps=float(c["throttle_mbps"]) if c.get("throttle_mbps") else None, metrics_port=metrics)
    return config


def run_master_target(path: Path) -> int:
    from dr_agent.master_target import MasterTarget

    return _serve(MasterTarget(master_target_config(path)), "master-target", path)


def master_target_config(path: Path) -> Any:
    """The MasterTargetConfig a TOML file describes (secrets read from the environment)."""
    from dr_agent.master_target import MasterTargetConfig

    t = "master_target"
    c = _section(path, t)
    host, port, metrics = _endpoints(c)
    conn_env = c.get("connection_string_env")
    conn = os.environ.get(conn_env) if conn_env else None
    if conn_env and not conn:
        raise ConfigError(f"{path}: connection_string_env = {conn_env!r}, but ${conn_env} is not set")
    per_disk = []
    for disk, env in dict(c.get("disk_connection_string_env", {})).items():
        value = os.environ.get(str(env))
        if not value:
            raise ConfigError(f"{path}: disk {disk}'s connection string is read from ${env}, which is not set")
        per_disk.append((str(disk), value))
    config = MasterTargetConfig(
        disk_connection_strings=tuple(per_disk), identity=Identity(Path(_need(c, "identity", path, t))),
        state_dir=Path(_need(c, "state_dir", path, t)),
        listen_host=host, listen_port=port, storage=str(c.get("storage", "file")), connection_string=conn,
        container=str(c.get("container", "replicas")), retention_s=float(c.get("retention_hours", 24)) * 3600,
        metrics_port=metrics)
    return config


def run_agent(path: Path) -> int:
    """Present every configured disk through the splitter, ship its changes, insert points on schedule."""
    import contextlib
    import time

    from dr_agent.capture.consistency import app_consistent
    from dr_agent.capture.splitter import Splitter, attach_loop
    from dr_agent.sink import Fallback, ProcessServerSink

    t = "agent"
    c = _section(path, t)
    ident = Identity(Path(_need(c, "identity", path, t)))
    servers = [_addr(str(a), "process_servers") for a in _need(c, "process_servers", path, t)]
    crash_every = float(c.get("crash_consistent_every_s", 300))
    app_every = float(c["app_consistent_every_s"]) if c.get("app_consistent_every_s") else None
    group = c.get("multi_vm_group")
    disks = list(_need(c, "disks", path, t))
    state = Path(str(c.get("state_dir", "/var/lib/dr-agent")))
    state.mkdir(parents=True, exist_ok=True)
    log = logging.getLogger("dr_agent.agent")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with contextlib.ExitStack() as stack:
        splitters = []
        mount_points: list[str] = []
        for d in disks:
            backing = Path(str(d["backing"]))
            size = os.stat(backing).st_size if backing.is_file() else _device_size(backing)
            sink = ProcessServerSink(disk=str(d["name"]), size=size, servers=servers, identity=ident,
                                     server_hostname=c.get("process_server_hostname"))
            stack.callback(sink.close)
            # `<disk>.running` exists while the agent runs and is removed only once everything the
            # disk got was durable at the process server. Found at start, it means the last run did
            # not stop so (a crash between a write reaching the disk and the stream): the disk is
            # compared with the replica before anything else.
            marker = state / f"{d['name']}.running"
            if marker.exists():
                log.warning("disk %s: the agent did not stop cleanly; comparing it with the replica", d["name"])
                sink.fall_back(Fallback(0, "the agent did not stop cleanly: the disk may hold changes the "
                                           "stream lacks", resync=True))
            else:
                write_atomic(marker, b"")
            presented: list[Any] = []  # the splitter, once there: its bitmap is lost when the agent stops
            stack.callback(_stop_cleanly, sink, marker, presented)
            mnt = Path(str(d.get("mountpoint", f"/run/dr-agent/{d['name']}")))
            mnt.mkdir(parents=True, exist_ok=True)
            sp = stack.enter_context(Splitter(backing, mnt, sink, name=str(d["name"])))
            presented.append(sp)
            dev = attach_loop(sp.path)
            print(json.dumps({"disk": d["name"], "device": dev}), flush=True)
            splitters.append((sp, sink, backing))
            mount_points += [str(m) for m in d.get("mount_points", [])]
        next_crash = time.monotonic() + crash_every
        next_app = time.monotonic() + app_every if app_every else float("inf")
        wake = min(RETRY_FALLBACK_S, crash_every)

        def heal() -> None:
            for sp, sink, backing in splitters:
                fb = sink.fallback
                if fb is not None and (sp.mode == "bitmap" or fb.resync):
                    _leave_bitmap(sp, sink, backing, servers, ident, c.get("process_server_hostname"))

        heal()
        while not stop.wait(max(0.0, min(next_crash, next_app, time.monotonic() + wake) - time.monotonic())):
            now = time.monotonic()
            heal()
            live = [sp for sp, _, _ in splitters if sp.mode == "data"]
            try:
                if now >= next_app:
                    with app_consistent([m for m in mount_points if os.path.ismount(m)]):
                        for sp in live:
                            sp.bookmark("app", group_id=group)
                    next_app = now + (app_every or 0)
                    next_crash = now + crash_every
                elif now >= next_crash:
                    for sp in live:
                        sp.bookmark("crash", group_id=group)
                    next_crash = now + crash_every
            except Exception as err:  # a point that fails is logged; the next one is tried on schedule
                log.warning("consistency point failed: %s", err)
    return 0


# Seconds between attempts to leave bitmap mode after the process server's cache filled.
RETRY_FALLBACK_S = 30.0
# Seconds a stopping agent waits for the process server to make the last changes durable.
STOP_PATIENCE_S = 10.0


def _stop_cleanly(sink: Any, marker: Path, presented: list[Any]) -> None:
    """After the disk is unmounted: once every change is durable at the process server, the next
    start needs no comparison with the replica; otherwise (changes only in the splitter's bitmap,
    or not durable) the marker stays."""
    log = logging.getLogger("dr_agent.agent")
    if presented and presented[0].mode == "bitmap":
        reason = "changes were tracked in the splitter's bitmap, which does not outlive the agent"
    elif sink.fallback is not None:
        reason = sink.fallback.reason
    else:
        try:
            sink.patience_s = STOP_PATIENCE_S
            sink.flush()
            marker.unlink(missing_ok=True)
            return
        except AgentError as err:
            reason = str(err)
    log.warning("disk %s: not stopped cleanly (%s); the next start compares it with the replica", sink.disk, reason)


def _leave_bitmap(sp: Any, sink: Any, backing: Path, servers: list[tuple[str, int]], ident: Identity,
                  hostname: str | None) -> None:
    """Resend what the process server refused (read from the disk), or resync the whole disk against
    the replica when the process server lost records this agent no longer holds; then the
    splitter's own bitmap."""
    from dr_agent.heal import resync_after_fallback

    log = logging.getLogger("dr_agent.agent")
    try:
        if sink.fallback.resync:
            resync_after_fallback(sink, backing, servers=servers, identity=ident, server_hostname=hostname,
                                  exclusive=sp.exclusive)
            sent = sp.resume_data_mode()
            log.warning("disk %s: back in data mode after a resync and %d bytes of the bitmap", sink.disk, sent)
            return
        with sp.exclusive(), open(backing, "rb") as f:
            dirty = sink.resume()
            for i, (off, n) in enumerate(dirty):
                try:
                    sink.write(off, os.pread(f.fileno(), n, off))
                except AgentError:
                    sink.dirty.extend(dirty[i:])  # refused again: keep what is still to send
                    raise
            sink.flush()
        sent = sp.resume_data_mode()
        log.warning("disk %s: back in data mode after resending %d bytes", sink.disk, sent)
    except AgentError as err:
        log.warning("disk %s: still in bitmap mode: %s", sink.disk, err)


_UNITS_S = {"s": 1, "m": 60, "h": 3600}


def _duration(text: str, what: str) -> float:
    """Seconds of `90s`, `30m`, `2h` or a bare number of seconds."""
    number, unit = (text[:-1], text[-1]) if text[-1:] in _UNITS_S else (text, "s")
    try:
        value = float(number) * _UNITS_S[unit]
    except ValueError:
        raise ConfigError(f"{what} {text!r}: expected a duration such as 90s, 30m or 2h") from None
    if value <= 0:
        raise ConfigError(f"{what} {text!r}: expected a positive duration")
    return value


def _device_size(dev: Path) -> int:
    with open(dev, "rb") as f:
        return f.seek(0, os.SEEK_END)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dr-agent", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument("--log-format", choices=["json", "text"], default=None,
                        help="log lines as JSON objects (the default when stderr is not a terminal: "
                             "journald, a log shipper) or as text (the default on a terminal)")
    sub = parser.add_subparsers(dest="command", required=True)
    reg = sub.add_parser("register", help="get this machine's certificate and token from the configuration server")
    reg.add_argument("--server", required=True, help="the configuration server, e.g. https://cs01:8443")
    reg.add_argument("--name", required=True, help="this component's name (an agent: its spec machine's)")
    reg.add_argument("--role", required=True, choices=[r.value.replace("_", "-") for r in SERVICE_ROLES])
    reg.add_argument("--out", required=True, type=Path, help="the identity directory, e.g. /etc/dr-agent/identity")
    reg.add_argument("--passphrase-env", default="DR_VAULT_KEY", help="the variable holding the vault passphrase")
    reg.add_argument("--ca-file", type=Path, help="the vault CA (PEM) to verify the server with; "
                                                  "default: the system's trust store")
    reg.add_argument("--machine", help="an agent: the spec machine it protects (default: --name)")
    reg.add_argument("--site", help="the site this component is at (default: the spec machine's)")
    reg.add_argument("--address", action="append", default=[], help="a DNS name or IP in the certificate")
    reg.add_argument("--deadline", default="30m", help="keep trying this long while the server is away "
                                                       "(e.g. 90s, 30m, 2h)")
    for name in ("agent", "process-server", "master-target"):
        p = sub.add_parser(name, help=f"run the {name.replace('-', ' ')}")
        p.add_argument("--config", required=True, type=Path)
    sup = sub.add_parser("supervise", help="run a rendered systemd unit where there is no systemd")
    sup.add_argument("--unit", required=True, type=Path, help="the unit file, e.g. dr-agent.service")
    sup.add_argument("--pidfile", type=Path, help="write the supervisor's pid here (refused if one runs)")
    sup.add_argument("--log", type=Path, help="append the service's output and the supervisor's events here")
    sup.add_argument("--detach", action="store_true", help="run in the background (double fork, setsid)")
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    fmt = args.log_format or ("text" if sys.stderr.isatty() else "json")
    handler.setFormatter(JsonLines() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, handlers=[handler])
    try:
        if args.command == "register":
            from dr_agent.control import register

            done = register(args.server, _passphrase(args.passphrase_env), name=args.name, role=args.role,
                            out=args.out, machine=args.machine, site=args.site, addresses=tuple(args.address),
                            ca_file=args.ca_file, deadline_s=_duration(args.deadline, "--deadline"),
                            say=lambda line: print(f"dr-agent: {line}", file=sys.stderr, flush=True))
            print(f"registered {args.name} as {parse_role(args.role).value}: {done.identity.cert}, token in "
                  f"{done.token_file}")
            return 0
        if args.command == "supervise":
            from dr_agent.supervise import supervise

            return supervise(args.unit, pidfile=args.pidfile, log=args.log, detach=args.detach)
        if args.command == "process-server":
            return run_process_server(args.config)
        if args.command == "agent":
            return run_agent(args.config)
        return run_master_target(args.config)
    except AgentError as err:
        print(f"dr-agent: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
