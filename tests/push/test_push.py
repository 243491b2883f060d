"""`dr agent push` against a real sshd on loopback, a test machine directory as the machine's
Layout root, and the product's configuration server: install, register, start, then idempotence."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dr_agent.contract import Layout
from dr_agent.supervise import read_pidfile, run_files

from dr.push import relocate
from tests.conftest import wait_for as shared_wait_for
from tests.discover.support import Sshd
from tests.push.conftest import PASSPHRASE, ConfigServer

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The agent's wheelhouse, built from ./agent once (the way `dr agent push` builds it without
    --wheel), so every push of a test copies the same bytes while the tree changes under it."""
    from dr.push import wheelhouse

    return wheelhouse(cache=tmp_path_factory.mktemp("wheelhouse")).directory


@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory, config_server: ConfigServer) -> Path:
    """`dr replica configs` of the test spec, rendered once (pushes copy the same files)."""
    out = tmp_path_factory.mktemp("configs")
    subprocess.run([sys.executable, "-m", "dr", "replica", "configs", str(config_server.spec), "--out", str(out)],
                   check=True, capture_output=True)
    return out


def push(sshd: Sshd, cs: ConfigServer, root: Path, *extra: str, known_hosts: Path | None = None,
         env: dict[str, str] | None = None, wheels: Path | None = None,
         configs: Path | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "dr", "agent", "push", "web_01", "--spec", str(cs.spec), "--root", str(root),
            *(["--wheel", str(wheels)] if wheels else []), *(["--configs", str(configs)] if configs else []),
            "--address", "web_01=127.0.0.1", "--port", str(sshd.port), "--user", sshd.user,
            "--key-file", str(sshd.key_file), "--known-hosts", str(known_hosts or sshd.known_hosts),
            "--server", cs.url, "--ca-file", str(cs.ca_file), "--env", "DR_PUSH_MARK", *extra]
    full = {**os.environ, "DR_VAULT_PASSPHRASE": PASSPHRASE, "DR_PUSH_MARK": "one", **(env or {})}
    return subprocess.run(argv, capture_output=True, text=True, env=full, timeout=600, check=False)


def supervise_events(log: Path) -> list[dict[str, object]]:
    out = []
    for line in log.read_text().splitlines() if log.exists() else []:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and "event" in entry:
            out.append(entry)
    return out


def wait_for(what: str, check: Callable[[], object], timeout: float = 60.0) -> None:
    shared_wait_for(check, timeout, what)


@pytest.fixture()
def machine(tmp_path: Path) -> Iterator[Path]:
    """A test machine's Layout root; its supervised agent is stopped afterwards."""
    root = tmp_path / "web_01"
    root.mkdir()
    yield root
    pid = read_pidfile(run_files(Layout(str(root)), "dr-agent.service")[0])
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        wait_for("the supervisor to stop", lambda: read_pidfile(run_files(Layout(str(root)), "dr-agent.service")[0])
                 is None)


def test_relocate_moves_only_the_layouts_paths() -> None:
    unit = ("EnvironmentFile=-/etc/dr-agent/env\n"
            "ExecStart=/usr/local/bin/dr-agent agent --config /etc/dr-agent/agent.toml\n")
    moved = relocate(unit, "/m/web")
    assert moved == ("EnvironmentFile=-/m/web/etc/dr-agent/env\nExecStart=/m/web/usr/local/bin/dr-agent agent "
                     "--config /m/web/etc/dr-agent/agent.toml\n")
    toml = 'identity = "/etc/dr-agent/identity"\nbacking = "/dev/sdb"\nmountpoint = "/run/dr-agent/web.data"\n'
    assert relocate(toml, "/m/web") == ('identity = "/m/web/etc/dr-agent/identity"\nbacking = "/dev/sdb"\n'
                                        'mountpoint = "/m/web/run/dr-agent/web.data"\n')
    assert relocate(unit, "/") == unit
    assert relocate("/etc/dr-agentx /srv/etc/dr-agent", "/m") == "/etc/dr-agentx /srv/etc/dr-agent"


def test_push_installs_registers_starts_and_is_idempotent(sshd: Sshd, config_server: ConfigServer,
                                                          machine: Path, wheels: Path, configs: Path) -> None:
    layout = Layout(str(machine))
    pidfile, log = run_files(layout, "dr-agent.service")
    first = push(sshd, config_server, machine, wheels=wheels, configs=configs)
    assert first.returncode == 0, first.stderr + first.stdout
    (line,) = first.stdout.strip().splitlines()
    assert line.startswith("web_01 (127.0.0.1): installed into ")
    for part in ("wheel(s) copied", "wrote agent.toml, dr-agent.service, env", f"registered with {config_server.url}",
                 "started under dr-agent supervise", "running under supervise (pid "):
        assert part in line, line

    # installed in its own venv, from the copied wheels (not this checkout's editable install)
    venv = Path(str(layout.venv))
    where = subprocess.run([str(venv / "bin/python"), "-c", "import dr_agent; print(dr_agent.__file__)"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(venv / "lib")), where
    assert os.path.realpath(machine / "usr/local/bin/dr-agent") == str(venv / "bin/dr-agent")
    config = Path(str(layout.config("agent"))).read_text()
    assert f'identity = "{layout.identity_dir}"' in config and f'state_dir = "{layout.state_dir}"' in config
    env_file = Path(str(layout.env_file))
    assert env_file.stat().st_mode & 0o777 == 0o600 and "DR_PUSH_MARK=one" in env_file.read_text()
    assert PASSPHRASE not in "".join(p.read_text(errors="replace") for p in machine.rglob("*")
                                     if p.is_file() and p.suffix != ".whl" and "opt" not in p.parts)

    # registered: a certificate for web_01 issued by the vault CA, and the API token
    from cryptography import x509

    ident = Path(str(layout.identity_dir))
    cert = x509.load_pem_x509_certificate((ident / "cert.pem").read_bytes())
    ca = x509.load_pem_x509_certificate(config_server.ca_file.read_bytes())
    assert "web_01" in cert.subject.rfc4514_string() and cert.issuer == ca.subject
    # under its spec name, the machine its streams name: a process server opens it only those
    import tomllib

    from cryptography.x509.oid import NameOID
    from dr_agent.contract import parse_stream

    (cn,) = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    disks = tomllib.loads(config)["agent"]["disks"]
    assert cn.value == "web_01" and disks and {parse_stream(d["name"])[0] for d in disks} == {"web_01"}
    assert (ident / "token").stat().st_mode & 0o777 == 0o600

    # started: the supervisor runs the unit's ExecStart, the venv's agent with the pushed config
    supervisor = read_pidfile(pidfile)
    assert supervisor is not None
    wait_for("the agent's first start", lambda: any(e["event"] == "exited" for e in supervise_events(log)))
    started = next(e for e in supervise_events(log) if e["event"] == "started")
    assert started["argv"] == [str(machine / "usr/local/bin/dr-agent"), "agent", "--config",
                               str(layout.config("agent"))]
    assert "/nonexistent/web_01-data_1" in log.read_text()  # the agent read the pushed agent.toml

    again = push(sshd, config_server, machine, wheels=wheels, configs=configs)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == (f"web_01 (127.0.0.1): unchanged: {line.split('; ', 1)[1]}")
    assert read_pidfile(pidfile) == supervisor

    changed = push(sshd, config_server, machine, "--format", "json", env={"DR_PUSH_MARK": "two"}, wheels=wheels,
                   configs=configs)
    assert changed.returncode == 0, changed.stderr
    (result,) = json.loads(changed.stdout)
    assert result["status"] == "changed" and result["manager"] == "supervise" and result["error"] is None
    assert result["actions"][0] == "wrote env" and result["actions"][1].startswith("restarted under dr-agent supervise")
    assert result["pid"] != supervisor and read_pidfile(pidfile) == result["pid"]
    stat = Path(f"/proc/{supervisor}/stat")
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z", "the old supervisor runs"
    assert "DR_PUSH_MARK=two" in env_file.read_text()


def test_an_unknown_host_key_is_refused_with_the_fix(sshd: Sshd, config_server: ConfigServer, machine: Path,
                                                     tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    done = push(sshd, config_server, machine, known_hosts=empty)
    assert done.returncode == 1
    (line,) = done.stdout.strip().splitlines()
    assert line.startswith("web_01 (127.0.0.1): failed: ") and "host key is not in" in line
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> {empty}" in line
    assert "Traceback" not in done.stderr
    assert not (machine / "opt").exists()
