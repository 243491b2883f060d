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
    if service.port is None:  # the agent listens on nothing: say what it protects and whom it dials
        about = service.describe()
        print(json.dumps({"service": name, **about}), flush=True)
        logging.getLogger(f"dr_agent.{name}").info(
            "%s started: protecting %s through process server(s) %s%s", name,
            ", ".join(f"{disk} ({d['mode']}, {d['device']})" for disk, d in about["disks"].items()),
            ", ".join(about["process_servers"]),
            f"; multi-VM group {about['group']} via {about['coordinator']}" if about.get("coordinator") else "")
    else:
        print(json.dumps({"service": name, "port": service.port, "metrics_port": service.metrics_port}),
              flush=True)
        logging.getLogger(f"dr_agent.{name}").info("%s listening on port %s", name, service.port)
    while not stop.wait(0.5):  # a timed wait: SIGTERM taken by another thread must still wake us
        pass
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
    """Protect the configured disks (dr_agent.agent) until SIGTERM or SIGINT."""
    from dr_agent.agent import Agent

    return _serve(Agent(agent_config(path)), "agent", path)


def agent_config(path: Path) -> Any:
    """The AgentConfig a TOML file describes; ConfigError when it is wrong.

    [agent] name, identity, state_dir, process_servers, process_server_hostname,
    crash_consistent_every_s, app_consistent_every_s, multi_vm_group, coordinator, pre_scripts,
    post_scripts, buffer_mb, spill_mb, reconnect_initial_s, reconnect_max_s, connect_timeout_s, io_timeout_s,
    stop_patience_s, sync_checkpoint_mb; [[agent.disks]] name, mode ("tracking" | "splitter"),
    device (or backing), mount_points, mountpoint (splitter: where its FUSE file appears).
    """
    from dr_agent.agent import AgentConfig, DiskConfig

    t = "agent"
    c = _section(path, t)
    disks = []
    for i, d in enumerate(_need(c, "disks", path, t)):
        if "name" not in d:
            raise ConfigError(f"{path}: [[agent.disks]] number {i + 1} needs name = ...")
        device = d.get("device", d.get("backing"))
        if device is None:
            raise ConfigError(f"{path}: disk {d['name']} needs device = \"/dev/...\"")
        mode = str(d.get("mode", "splitter" if "backing" in d else "tracking"))
        disks.append(DiskConfig(
            name=str(d["name"]), mode=mode, device=Path(str(device)),
            mount_points=tuple(str(m) for m in d.get("mount_points", [])),
            fuse_dir=Path(str(d.get("mountpoint", f"/run/dr-agent/{d['name']}"))) if mode == "splitter" else None))

    def seconds(key: str) -> float | None:
        return float(c[key]) if c.get(key) else None

    coordinator = c.get("coordinator")
    tuning: dict[str, Any] = {}  # absent keys keep AgentConfig's defaults (their units and sources are there)
    for key, field in (("reconnect_initial_s", "backoff_initial_s"), ("reconnect_max_s", "backoff_max_s"),
                       ("connect_timeout_s", "connect_timeout_s"), ("io_timeout_s", "io_timeout_s"),
                       ("stop_patience_s", "stop_patience_s"), ("crash_consistent_every_s", "crash_every_s"),
                       ("script_timeout_s", "script_timeout_s")):
        if key in c:
            tuning[field] = float(c[key])
    if "buffer_mb" in c:
        tuning["buffer_bytes"] = int(float(c["buffer_mb"]) * 1024 * 1024)
    if "spill_mb" in c:
        tuning["spill_bytes"] = int(float(c["spill_mb"]) * 1024 * 1024)
    if "sync_checkpoint_mb" in c:
        tuning["sync_checkpoint_bytes"] = int(float(c["sync_checkpoint_mb"]) * 1024 * 1024)
    try:
        return AgentConfig(
            name=str(_need(c, "name", path, t)), identity=Identity(Path(_need(c, "identity", path, t))),
            process_servers=tuple(_addr(str(a), "process_servers") for a in _need(c, "process_servers", path, t)),
            disks=tuple(disks), state_dir=Path(str(c.get("state_dir", "/var/lib/dr-agent"))),
            server_hostname=c.get("process_server_hostname"), app_every_s=seconds("app_consistent_every_s"),
            group=c.get("multi_vm_group"), coordinator=_addr(str(coordinator), "coordinator") if coordinator else None,
            pre_scripts=tuple(str(s) for s in c.get("pre_scripts", [])),
            post_scripts=tuple(str(s) for s in c.get("post_scripts", [])), **tuning)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


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
    reg.add_argument("--ca-file", type=Path, help="the vault CA (PEM) to verify the server with; default: the "
                                                  "server's, once it proves it holds the vault passphrase")
    reg.add_argument("--machine", help="an agent: the spec machine it acts for, named in its certificate "
                                            "(default: --name)")
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
