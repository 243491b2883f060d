"""`dr-agent supervise`: a rendered systemd unit run by the supervisor, with a real child process.

The child is a small Python program that records its pid and its environment and sleeps; the unit
around it is the product's dr-agent.service with ExecStart pointed at it (the other directives as
`dr replica configs` renders them, RestartSec shortened).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dr_agent.errors import ConfigError
from dr_agent.supervise import parse_time_span, parse_unit, read_pidfile

from dr.blueprints import render
from tests.conftest import wait_for as shared_wait_for

CHILD = textwrap.dedent("""
    import json, os, signal, sys, time
    out = sys.argv[1]
    if os.environ.get("IGNORE_TERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(out, "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "token": os.environ.get("TOKEN"), "t": time.time()}) + "\\n")
    code = os.environ.get("EXIT_WITH")
    if code is not None:
        sys.exit(int(code))
    while True:
        time.sleep(1)
""")


def wait_for(what: str, check: Callable[[], object], timeout: float = 20.0) -> object:
    return shared_wait_for(check, timeout, what)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def starts(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def events(log: Path) -> list[dict[str, object]]:
    out = []
    for line in log.read_text().splitlines() if log.exists() else []:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and "event" in entry:
            out.append(entry)
    return out


def make_unit(tmp: Path, *, restart: str = "always", restart_sec: str = "1", stop: str = "60",
              env_file: str = "-{env}") -> Path:
    """The product's dr-agent.service, ExecStart and paths pointed at the test's child."""
    (tmp / "child.py").write_text(CHILD)
    text = render("agent/dr-agent.service.j2", name="web01")
    lines = []
    for line in text.splitlines():
        key = line.split("=", 1)[0]
        if key == "ExecStart":
            line = f"ExecStart={sys.executable} {tmp / 'child.py'} {tmp / 'starts.jsonl'}"
        elif key == "EnvironmentFile":
            line = "EnvironmentFile=" + env_file.format(env=tmp / "env")
        elif key == "Restart":
            line = f"Restart={restart}"
        elif key == "RestartSec":
            line = f"RestartSec={restart_sec}"
        elif key == "TimeoutStopSec":
            line = f"TimeoutStopSec={stop}"
        lines.append(line)
    unit = tmp / "dr-agent.service"
    unit.write_text("\n".join(lines) + "\n")
    return unit


def supervise(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "dr_agent.cli", "supervise", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture()
def reap() -> Iterator[list[int]]:
    """Pids the test started (supervisors and children): killed at the end if still there."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_the_rendered_unit_is_read_as_systemd_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "dr-agent.service"
    path.write_text(render("agent/dr-agent.service.j2", name="web01"))
    unit = parse_unit(path)
    assert unit.exec_start[0].endswith("/dr-agent") and unit.exec_start[1] == "agent"
    assert unit.environment_files == ((Path("/etc/dr-agent/env"), True),)
    assert unit.restart == "on-failure" and unit.restart_s == 5.0 and unit.timeout_stop_s == 30.0
    assert parse_time_span("1min 30s", what="x") == 90.0 and parse_time_span("500ms", what="x") == 0.5
    with pytest.raises(ConfigError, match="not a time span"):
        parse_time_span("soon", what="RestartSec")


def test_restart_policies_and_environment(tmp_path: Path) -> None:
    unit = parse_unit(make_unit(tmp_path, restart="on-failure"))
    assert unit.should_restart(3) and unit.should_restart(-signal.SIGKILL)
    assert not unit.should_restart(0) and not unit.should_restart(-signal.SIGTERM)
    assert parse_unit(make_unit(tmp_path, restart="always")).should_restart(0)
    assert not parse_unit(make_unit(tmp_path, restart="no")).should_restart(-signal.SIGKILL)
    (tmp_path / "env").write_text("# secrets\nTOKEN='s3cret'\nexport OTHER=1\nnot a line\n")
    env = unit.env({"PATH": "/bin"})
    assert env["TOKEN"] == "s3cret" and env["OTHER"] == "1" and env["PATH"] == "/bin"
    required = parse_unit(make_unit(tmp_path, env_file=str(tmp_path / "absent")))
    with pytest.raises(ConfigError, match="does not exist"):
        required.env({})
    bad = tmp_path / "bad.service"
    bad.write_text("[Service]\nExecStart=/bin/true\nRestart=sometimes\n")
    with pytest.raises(ConfigError, match=r"bad.service:3: Restart='sometimes'"):
        parse_unit(bad)


def test_killed_child_is_restarted_after_restart_sec_and_sigterm_stops_it(tmp_path: Path, reap: list[int]) -> None:
    unit = make_unit(tmp_path, restart_sec="1")
    (tmp_path / "env").write_text("TOKEN=from-env-file\n")
    log = tmp_path / "supervise.log"
    sup = supervise("--unit", str(unit), "--log", str(log), "--pidfile", str(tmp_path / "sup.pid"))
    reap.append(sup.pid)
    first = wait_for("the first start", lambda: starts(tmp_path / "starts.jsonl"))
    assert isinstance(first, list)
    pid = int(first[0]["pid"])  # type: ignore[call-overload]
    reap.append(pid)
    assert first[0]["token"] == "from-env-file"
    assert read_pidfile(tmp_path / "sup.pid") == sup.pid

    os.kill(pid, signal.SIGKILL)
    record = tmp_path / "starts.jsonl"
    second = wait_for("a restart", lambda: len(starts(record)) >= 2 and starts(record))
    assert isinstance(second, list)
    new_pid = int(second[1]["pid"])  # type: ignore[call-overload]
    reap.append(new_pid)
    assert new_pid != pid and alive(new_pid) and not alive(pid)
    seen = events(log)
    exited = next(e for e in seen if e["event"] == "exited")
    assert exited["status"] == -signal.SIGKILL
    assert any(e["event"] == "restarting" and e["after_s"] == 1.0 for e in seen)
    # RestartSec is a pause the supervisor keeps: the new child starts no earlier than 1 s after the kill
    assert float(second[1]["t"]) - float(second[0]["t"]) >= 1.0  # type: ignore[arg-type]

    sup.send_signal(signal.SIGTERM)
    assert sup.wait(30) == 0
    assert not alive(new_pid), "the child outlived its supervisor"
    assert not (tmp_path / "sup.pid").exists()
    assert [e["event"] for e in events(log)][-2:] == ["stopping", "exited"]


def test_a_child_ignoring_sigterm_is_killed_after_timeout_stop_sec(tmp_path: Path, reap: list[int]) -> None:
    unit = make_unit(tmp_path, stop="1")
    (tmp_path / "env").write_text("IGNORE_TERM=1\n")
    log = tmp_path / "supervise.log"
    sup = supervise("--unit", str(unit), "--log", str(log))
    reap.append(sup.pid)
    got = wait_for("the start", lambda: starts(tmp_path / "starts.jsonl"))
    assert isinstance(got, list)
    pid = int(got[0]["pid"])  # type: ignore[call-overload]
    reap.append(pid)  # the child ignores SIGTERM before it records its start: no wait for its handler
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(30) == 0
    assert not alive(pid)
    kill = [e for e in events(log) if e["event"] == "kill"]
    assert kill and "1 s after SIGTERM" in str(kill[0]["reason"])


def test_on_failure_gives_up_on_success_and_passes_the_status(tmp_path: Path) -> None:
    unit = make_unit(tmp_path, restart="on-failure", restart_sec="0.1")
    (tmp_path / "env").write_text("EXIT_WITH=0\n")
    sup = supervise("--unit", str(unit), "--log", str(tmp_path / "log"))
    assert sup.wait(30) == 0 and len(starts(tmp_path / "starts.jsonl")) == 1
    unit = make_unit(tmp_path, restart="no")
    (tmp_path / "env").write_text("EXIT_WITH=7\n")
    sup = supervise("--unit", str(unit), "--log", str(tmp_path / "log"))
    assert sup.wait(30) == 7


def test_detach_daemonizes_writes_the_pidfile_and_refuses_a_second_start(tmp_path: Path, reap: list[int]) -> None:
    unit = make_unit(tmp_path)
    pidfile, log = tmp_path / "run" / "dr-agent.pid", tmp_path / "dr-agent.log"
    first = supervise("--unit", str(unit), "--pidfile", str(pidfile), "--log", str(log), "--detach")
    out, err = first.communicate(timeout=30)
    assert first.returncode == 0, err
    daemon = json.loads(out)["pid"]
    reap.append(daemon)
    assert read_pidfile(pidfile) == daemon
    stat = Path(f"/proc/{daemon}/stat").read_text().rsplit(")", 1)[1].split()
    assert int(stat[3]) != os.getpid(), "the daemon is still our child"
    assert int(stat[4]) != os.getpgrp() and os.getsid(daemon) != os.getsid(0), "the daemon kept our session"
    got = wait_for("the child", lambda: starts(tmp_path / "starts.jsonl"))
    assert isinstance(got, list)
    child = int(got[0]["pid"])  # type: ignore[call-overload]
    reap.append(child)

    again = supervise("--unit", str(unit), "--pidfile", str(pidfile), "--detach")
    _, err = again.communicate(timeout=30)
    assert again.returncode == 2 and f"already runs as pid {daemon}" in err and err.count("\n") == 1

    os.kill(daemon, signal.SIGTERM)
    wait_for("the daemon to stop", lambda: not alive(daemon))
    assert not alive(child) and not pidfile.exists()


def test_a_missing_executable_is_retried_and_reported(tmp_path: Path, reap: list[int]) -> None:
    unit = tmp_path / "broken.service"
    unit.write_text("[Service]\nExecStart=/nonexistent/dr-agent agent\nRestart=always\nRestartSec=0.2\n")
    log = tmp_path / "log"
    sup = supervise("--unit", str(unit), "--log", str(log))
    reap.append(sup.pid)
    wait_for("two failed starts", lambda: sum(e["event"] == "start-failed" for e in events(log)) >= 2)
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(30) == 0
    assert "No such file" in str(events(log)[0]["error"])
