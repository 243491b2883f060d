"""Fixtures of the configuration server tests: a state store (SQLite, and a real PostgreSQL when its
binaries are installed), the SharePoint estate, a server with a hand-driven clock, and an API client.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dr.model import Estate
from dr.server.service import ConfigServer
from dr.server.store import Store
from dr.validate import load_valid

REPO = Path(__file__).resolve().parents[2]
SHAREPOINT = REPO / "examples" / "sharepoint" / "dr.yaml"
PASSPHRASE = "correct horse battery staple"
# The server binaries: where `pg_ctl` really is (Debian keeps them, initdb too, in
# /usr/lib/postgresql/<version>/bin; an image may link some of them into /usr/local/bin).
_PG_CTL = shutil.which("pg_ctl") or next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))), None)
PG_BIN = Path(_PG_CTL).resolve().parent if _PG_CTL else Path("/usr/local/bin")
# PostgreSQL needs a few seconds to initdb and start on 2 cores (measured here: about 2 s).
PG_START_TIMEOUT_S = 60


def dr_env(**extra: str) -> dict[str, str]:
    """The environment of a `dr` process as these tests start it (the vault passphrase set)."""
    return {**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1", "DR_VAULT_PASSPHRASE": PASSPHRASE, **extra}


def dr(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m dr ARGS` as a user runs it, with `dr_env`."""
    return subprocess.run([sys.executable, "-m", "dr", *args], cwd=REPO, env=dr_env(**env), capture_output=True,
                          text=True, timeout=120)


class Clock:
    """A clock the test moves by hand (seconds since the epoch)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Postgres:
    socket_dir: str
    port: int

    def url(self, database: str) -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}&port={self.port}"


def _pg_unavailable() -> str | None:
    if not all((PG_BIN / b).exists() for b in ("initdb", "pg_ctl", "postgres")):
        return f"PostgreSQL binaries (initdb, pg_ctl, postgres) are not in {PG_BIN}"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'psycopg[binary]')"
    if os.geteuid() != 0:
        return "starting PostgreSQL as its own user needs root here"
    if shutil.which("runuser") is None:
        return "runuser (util-linux) is missing"
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        return "there is no 'postgres' system user to run the server as"
    return None


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    reason = _pg_unavailable()
    if reason:
        pytest.skip(reason)
    base = tempfile.mkdtemp(prefix="dr-pg-")
    os.chmod(base, 0o755)
    data, sock = os.path.join(base, "data"), os.path.join(base, "sock")
    os.mkdir(sock)
    shutil.chown(base, "postgres")
    shutil.chown(sock, "postgres")
    port = free_port()

    def as_postgres(*args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True,
                       timeout=PG_START_TIMEOUT_S)

    as_postgres(str(PG_BIN / "initdb"), "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")
    # Unix socket only (listen_addresses empty): no TCP port at all.
    as_postgres(str(PG_BIN / "pg_ctl"), "-D", data, "-w", "-t", str(PG_START_TIMEOUT_S), "-l",
                os.path.join(base, "log"), "-o",
                f"-c listen_addresses='' -c unix_socket_directories={sock} -p {port} -c fsync=off",
                "start")
    try:
        yield Postgres(socket_dir=sock, port=port)
    finally:
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", data, "-m", "fast",
                        "-w", "stop"], capture_output=True, timeout=PG_START_TIMEOUT_S)
        shutil.rmtree(base, ignore_errors=True)


def _fresh_database(pg: Postgres) -> str:
    import psycopg

    name = f"dr_{time.time_ns()}"
    with psycopg.connect(pg.url("postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return pg.url(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "sqlite":
        return Store.open(tmp_path / "state.db")
    pg = request.getfixturevalue("postgres")
    return Store.open(_fresh_database(pg))


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Store:
    return Store.open(tmp_path / "state.db")


@pytest.fixture(scope="session")
def sharepoint() -> Estate:
    estate, _ = load_valid(SHAREPOINT)
    return estate


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_server(store: Store, estate: Estate, clock: Clock, **kwargs: float) -> ConfigServer:
    server = ConfigServer(store=store, estate=estate, clock=clock, **kwargs)
    server.init_vault(PASSPHRASE)
    return server


@pytest.fixture
def server(store: Store, sharepoint: Estate, clock: Clock) -> ConfigServer:
    return make_server(store, sharepoint, clock, heartbeat_timeout_s=300)
