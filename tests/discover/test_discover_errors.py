"""Errors talking to a source: one line on stderr, exit 2, no traceback, the password never shown."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.discover.support import PASSWORD, PASSWORD_ENV, USER
from tests.vcsim.simulator import Vcsim, unavailable


def dr(*args: str, password: str = PASSWORD) -> subprocess.CompletedProcess[str]:
    """The real `dr` process, so exit codes and stderr are what a user sees."""
    env = {"PATH": "/usr/bin:/bin", PASSWORD_ENV: password, "PYTHONPATH": str(Path(__file__).parents[2])}
    return subprocess.run([sys.executable, "-m", "dr", *args], capture_output=True, text=True, timeout=60,
                          env=env, cwd=Path(__file__).parents[2])


def args(sim_host: str, port: int, inventory: Path, *extra: str) -> list[str]:
    return ["discover", "vcenter", "--host", sim_host, "--port", str(port), "--user", USER,
            "--password-env", PASSWORD_ENV, "--site", "hq", "--inventory", str(inventory), *extra]


def assert_one_line_error(done: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("dr: error: ")
    for text in expected:
        assert text in lines[0]
    assert "Traceback" not in done.stderr
    assert PASSWORD not in done.stdout + done.stderr
    assert "wrong-" not in done.stdout + done.stderr


@pytest.fixture(scope="module")
def restricted() -> Iterator[Vcsim]:
    """An https simulator (self-signed certificate) whose sessions lack System.Read."""
    if unavailable():
        pytest.skip(str(unavailable()))
    with Vcsim.start("-tls", "-deny", "System.Read", "-vm", "1", "-host", "1", "-standalone-host", "0",
                     "-username", USER, "-password", PASSWORD) as sim:
        yield sim


@pytest.fixture(scope="module")
def slow() -> Iterator[Vcsim]:
    """A simulator that takes 5 s to create the container view discovery asks for."""
    if unavailable():
        pytest.skip(str(unavailable()))
    with Vcsim.start("-delay", "CreateContainerView=5000", "-vm", "1", "-host", "1", "-standalone-host", "0",
                     "-username", USER, "-password", PASSWORD) as sim:
        yield sim


def test_bad_credentials(vcsim: Vcsim, tmp_path: Path) -> None:
    done = dr(*args(vcsim.host, vcsim.port, tmp_path / "i.yaml", "--http"), password="wrong-password")
    assert_one_line_error(done, "password was refused", repr(USER), "--password-env")
    assert not (tmp_path / "i.yaml").exists()


def test_unreachable_host(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        done = dr(*args("127.0.0.1", port, tmp_path / "i.yaml"))
    assert_one_line_error(done, "cannot connect", "check --host and --port")


def test_untrusted_certificate_hints_insecure(restricted: Vcsim, tmp_path: Path) -> None:
    done = dr(*args(restricted.host, restricted.port, tmp_path / "i.yaml"))
    assert_one_line_error(done, "certificate is not trusted", "--insecure")


def test_missing_privilege(restricted: Vcsim, tmp_path: Path) -> None:
    done = dr(*args(restricted.host, restricted.port, tmp_path / "i.yaml", "--insecure"))
    assert_one_line_error(done, "lacks System.Read", "Read-only role")


def test_timeout(slow: Vcsim, tmp_path: Path) -> None:
    done = dr(*args(slow.host, slow.port, tmp_path / "i.yaml", "--http", "--timeout", "1"))
    assert_one_line_error(done, "no answer within 1 s", "--timeout")


def test_missing_password_variable(tmp_path: Path) -> None:
    env_less = subprocess.run(
        [sys.executable, "-m", "dr", *args("127.0.0.1", 9, tmp_path / "i.yaml")], capture_output=True, text=True,
        timeout=60, env={"PATH": "/usr/bin:/bin"}, cwd=Path(__file__).parents[2])
    assert_one_line_error(env_less, PASSWORD_ENV, "is not set")


def test_profile_without_inventory_is_a_usage_error(tmp_path: Path) -> None:
    done = dr("profile", "vcenter", "--host", "127.0.0.1", "--user", USER, "--password-env", PASSWORD_ENV,
              "--inventory", str(tmp_path / "none.yaml"))
    assert_one_line_error(done, "no such file", "dr discover vcenter")


def test_profile_bad_duration(tmp_path: Path) -> None:
    inventory = tmp_path / "i.yaml"
    inventory.write_text("machines: []\n")
    done = dr("profile", "vcenter", "--host", "127.0.0.1", "--user", USER, "--password-env", PASSWORD_ENV,
              "--inventory", str(inventory), "--duration", "half an hour")
    assert_one_line_error(done, "--duration", "15m")


def test_unreadable_inventory_is_reported_with_its_place(vcsim: Vcsim, tmp_path: Path) -> None:
    inventory = tmp_path / "i.yaml"
    inventory.write_text("machines:\n  - name: a\n   bad: [\n")
    done = dr(*args(vcsim.host, vcsim.port, inventory, "--http"))
    assert_one_line_error(done, str(inventory), "not valid YAML")
