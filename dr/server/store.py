"""The configuration server's state: one storage layer over SQLite (default) or PostgreSQL.

SQLite needs nothing installed and keeps everything in one file; PostgreSQL (through psycopg 3) is
for larger estates where several processes write at once. Both run the same SQL: the schema is
written once with two dialect words (`{serial}`, `{real}`) and queries use `?` placeholders, turned
into `%s` for psycopg. Every write is one short transaction on a fresh connection, so the store is
safe to share between the API's worker threads, the alert loop and a failover runner.

Times are seconds since the epoch (float). JSON columns hold text.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from dr.errors import DrError, MissingExtra

# SQLite waits this long for another writer's lock before failing (milliseconds; measured: a job
# step update takes well under 10 ms here, so 30 s only matters on a badly stalled disk).
SQLITE_BUSY_TIMEOUT_MS = 30_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
    token_hash TEXT PRIMARY KEY, component TEXT NOT NULL, role TEXT NOT NULL, created {real} NOT NULL);
CREATE TABLE IF NOT EXISTS components (
    name TEXT PRIMARY KEY, role TEXT NOT NULL, machine TEXT, site TEXT, address TEXT,
    registered {real} NOT NULL, last_heartbeat {real}, power_state TEXT,
    cache_free_fraction {real}, details TEXT NOT NULL DEFAULT '{{}}');
CREATE TABLE IF NOT EXISTS disks (
    machine TEXT NOT NULL, disk TEXT NOT NULL, rpo_seconds {real}, reported {real} NOT NULL,
    reporter TEXT NOT NULL, PRIMARY KEY (machine, disk));
CREATE TABLE IF NOT EXISTS recovery_points (
    machine TEXT NOT NULL, disk TEXT NOT NULL, point_id TEXT NOT NULL, time {real} NOT NULL,
    kind TEXT NOT NULL, group_id TEXT, processed INTEGER NOT NULL, snapshot TEXT,
    PRIMARY KEY (machine, disk, point_id));
CREATE TABLE IF NOT EXISTS replicas (
    machine TEXT NOT NULL, disk TEXT NOT NULL, stream TEXT NOT NULL, reporter TEXT NOT NULL,
    size INTEGER NOT NULL, location TEXT NOT NULL, reported {real} NOT NULL, PRIMARY KEY (machine, disk));
CREATE TABLE IF NOT EXISTS events (
    id {serial}, time {real} NOT NULL, severity TEXT NOT NULL, kind TEXT NOT NULL,
    subject TEXT NOT NULL, message TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS open_alerts (
    condition TEXT NOT NULL, subject TEXT NOT NULL, opened {real} NOT NULL, severity TEXT NOT NULL,
    message TEXT NOT NULL, PRIMARY KEY (condition, subject));
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, plan TEXT NOT NULL, spec TEXT NOT NULL,
    options TEXT NOT NULL, state TEXT NOT NULL, created {real} NOT NULL, updated {real} NOT NULL,
    error TEXT);
CREATE TABLE IF NOT EXISTS job_steps (
    job_id TEXT NOT NULL, idx INTEGER NOT NULL, kind TEXT NOT NULL, title TEXT NOT NULL,
    group_name TEXT, machine TEXT, detail TEXT NOT NULL, state TEXT NOT NULL,
    started {real}, finished {real}, output TEXT NOT NULL DEFAULT '', confirmed_by TEXT,
    PRIMARY KEY (job_id, idx));
CREATE TABLE IF NOT EXISTS job_log (
    id {serial}, job_id TEXT NOT NULL, time {real} NOT NULL, line TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    id {serial}, notifier TEXT NOT NULL, state TEXT NOT NULL, alert TEXT NOT NULL,
    attempts INTEGER NOT NULL, next_try {real} NOT NULL, error TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS job_leases (
    job_id TEXT PRIMARY KEY, holder TEXT NOT NULL, token TEXT NOT NULL, since {real} NOT NULL,
    expires {real} NOT NULL);
CREATE TABLE IF NOT EXISTS job_specs (
    job_id TEXT PRIMARY KEY, digest TEXT NOT NULL, estate TEXT NOT NULL);
"""

# Columns added after a table was first released: (table, column, type), added to older stores.
ADDED_COLUMNS = (("recovery_points", "snapshot", "TEXT"),
                 ("tokens", "expires", "DOUBLE PRECISION"), ("tokens", "idle_s", "DOUBLE PRECISION"))

_DIALECT = {
    "sqlite": {"serial": "INTEGER PRIMARY KEY AUTOINCREMENT", "real": "REAL"},
    "postgresql": {"serial": "BIGSERIAL PRIMARY KEY", "real": "DOUBLE PRECISION"},
}


class StoreError(DrError):
    """The state store cannot be opened: the message names the URL (never its password) and the fix."""


class _Connection(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any: ...
    def commit(self) -> None: ...
    def rollback(self) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True, kw_only=True)
class Row:
    """One result row: columns by name."""

    values: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.values[key]


class Store:
    """The state store. `Store.open("state.db")`, `Store.open("postgresql://user@host/db")`."""

    def __init__(self, *, url: str, dialect: str) -> None:
        self.url = url
        self.dialect = dialect
        self._sqlite_init = threading.Lock()
        # SQLite: one connection held open while the store lives. Without it, every transaction's
        # connection may be the last one and checkpoint and remove the WAL on close while another
        # thread opens the file (seen here as "file is not a database" under many threads).
        self._anchor: sqlite3.Connection | None = None

    @classmethod
    def open(cls, url: str | Path) -> Store:
        text = str(url)
        if text.startswith(("postgresql://", "postgres://")):
            try:
                import psycopg  # noqa: F401
            except ImportError:
                raise MissingExtra(
                    "a PostgreSQL state store needs psycopg: pip install 'psycopg[binary]'"
                ) from None
            store = cls(url=text, dialect="postgresql")
        else:
            path = Path(text.removeprefix("sqlite:///"))
            if path.parent and not path.parent.is_dir():
                raise StoreError(
                    f"the state store's folder {path.parent} does not exist: create it or give another --state"
                )
            _create_private(path)
            store = cls(url=str(path), dialect="sqlite")
        store.create_schema()
        if store.dialect == "sqlite":
            store._anchor = sqlite3.connect(store.url, check_same_thread=False)
        return store

    def close(self) -> None:
        """Release the SQLite anchor connection (PostgreSQL connections are per transaction)."""
        if self._anchor is not None:
            self._anchor.close()
            self._anchor = None

    @property
    def display_url(self) -> str:
        """The URL without a password, for messages."""
        if self.dialect == "sqlite":
            return self.url
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(self.url)
        host = parts.hostname or ""
        netloc = f"{parts.username}@{host}" if parts.username else host
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))

    def _connect(self) -> _Connection:
        if self.dialect == "sqlite":
            try:
                conn = sqlite3.connect(self.url, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            except sqlite3.Error as err:
                raise StoreError(f"cannot open the state file {self.url}: {err}; check the path") from None
            conn.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("BEGIN IMMEDIATE")
            return conn
        import psycopg

        try:
            return psycopg.connect(self.url)
        except psycopg.Error as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise StoreError(
                f"cannot connect to the PostgreSQL state store {self.display_url}: {first}; "
                "check that the server runs and the URL is right"
            ) from None

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.dialect == "postgresql" else sql

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        conn = self._connect()
        try:
            yield Transaction(conn=conn, store=self)
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            conn.close()

    def create_schema(self) -> None:
        words = _DIALECT[self.dialect]
        statements = [s.strip() for s in SCHEMA.format(**words).split(";") if s.strip()]
        if self.dialect == "sqlite":
            with self._sqlite_init:
                conn = sqlite3.connect(self.url, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
                try:
                    conn.execute("PRAGMA journal_mode = WAL")
                    for statement in statements:
                        conn.execute(statement)
                    for table, column, kind in ADDED_COLUMNS:
                        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
                        if column not in have:
                            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
                    conn.commit()
                except sqlite3.Error as err:
                    raise StoreError(
                        f"{self.url} is not a dr state store ({err}): give another --state file"
                    ) from None
                finally:
                    conn.close()
            return
        with self.transaction() as tx:
            for statement in statements:
                tx.execute(statement)
            for table, column, kind in ADDED_COLUMNS:
                tx.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {kind}")

    # Convenience: one statement, one transaction.
    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        with self.transaction() as tx:
            tx.execute(sql, params)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self.transaction() as tx:
            return tx.query(sql, params)

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    # meta: small key/value settings (passphrase hash, CA).
    def get_meta(self, key: str) -> str | None:
        row = self.one("SELECT value FROM meta WHERE key = ?", (key,))
        return None if row is None else str(row["value"])

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as tx:
            tx.upsert("meta", {"key": key, "value": value}, keys=("key",))

    def set_meta_once(self, key: str, value: str) -> str:
        """Store `value` unless the key exists; return the value that is stored (first writer wins)."""
        with self.transaction() as tx:
            tx.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING", (key, value)
            )
            rows = tx.query("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0]["value"])


@dataclass(frozen=True, kw_only=True)
class Transaction:
    conn: _Connection
    store: Store

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.conn.execute(self.store._sql(sql), tuple(params))

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        cursor = self.conn.execute(self.store._sql(sql), tuple(params))
        names = [d[0] for d in cursor.description]
        return [Row(values=dict(zip(names, values, strict=True))) for values in cursor.fetchall()]

    def upsert(self, table: str, values: dict[str, Any], *, keys: tuple[str, ...]) -> None:
        columns = list(values)
        updates = [c for c in columns if c not in keys]
        action = (
            "DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in updates) if updates else "DO NOTHING"
        )
        sql = (
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)}) "
            f"ON CONFLICT ({', '.join(keys)}) {action}"
        )
        self.execute(sql, [values[c] for c in columns])


def _create_private(path: Path) -> None:
    """A new SQLite store is created 0600 (tokens, the encrypted CA key and job logs are in it); SQLite
    gives its -wal and -shm files the same mode. An existing file keeps its mode (`dr config-server
    start` refuses one that others can read)."""
    if path.exists():
        return
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:  # another process made it first
        return
    except OSError as err:
        raise StoreError(
            f"cannot create the state file {path}: {err.strerror}; check the folder's permissions"
        ) from None


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)
