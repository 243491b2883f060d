"""The durable catalog of recovery points (sqlite, on the master target).

One row per disk (where its replica lives) and one per recovery point: the bookmark id, the
sequence number it follows, the source's time, its kind (crash or app), the multi-VM group id when
the agents of a protection group inserted it together, and the snapshot that holds it.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dr_agent.errors import ConfigError, PointNotFound, TargetError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS disks (
    name TEXT PRIMARY KEY,
    location TEXT NOT NULL,          -- JSON: {"kind": "file"|"pageblob", ...}
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS points (
    disk TEXT NOT NULL REFERENCES disks(name),
    id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    time REAL NOT NULL,              -- the source's clock when the bookmark was inserted (epoch s)
    kind TEXT NOT NULL CHECK (kind IN ('crash', 'app')),
    group_id TEXT,
    snapshot TEXT NOT NULL,
    PRIMARY KEY (disk, id)
);
CREATE INDEX IF NOT EXISTS points_time ON points (disk, time);
CREATE INDEX IF NOT EXISTS points_group ON points (group_id);
"""


@dataclass(frozen=True)
class Point:
    disk: str
    id: str
    seq: int
    time: float
    kind: str
    group_id: str | None
    snapshot: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "disk": self.disk, "id": self.id, "seq": self.seq,
            "time": dt.datetime.fromtimestamp(self.time, dt.UTC).isoformat(timespec="milliseconds"),
            "kind": self.kind, "group": self.group_id, "snapshot": self.snapshot,
        }


@dataclass(frozen=True)
class DiskEntry:
    name: str
    location: dict[str, Any]
    size: int


class Catalog:
    """Opened per use; sqlite in WAL mode so the CLI reads while the master target writes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    @classmethod
    def open_readonly(cls, path: Path) -> Catalog:
        """Open an existing catalog to read it (the CLI, failover): never creates or alters anything,
        so pointing a reader at the wrong file cannot write into it. ConfigError when it is not one."""
        self = cls.__new__(cls)
        self.path = path
        try:
            self._db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30,
                                       check_same_thread=False, isolation_level=None)
            tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.Error as err:
            raise ConfigError(f"{path}: not a recovery-point catalog ({err}); expected the master target's "
                              "STATE_DIR/catalog.sqlite") from None
        if not {"disks", "points"} <= tables:
            self._db.close()
            raise ConfigError(f"{path}: an SQLite database without the catalog's tables; expected the master "
                              "target's STATE_DIR/catalog.sqlite")
        return self

    def close(self) -> None:
        self._db.close()

    def _run(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, params)
        except sqlite3.ProgrammingError as err:  # closed: a stream still ending while its service stops
            raise TargetError(f"catalog {self.path}: {err} (the master target is stopping)") from None

    def add_disk(self, name: str, location: dict[str, Any], size: int) -> None:
        self._run("INSERT OR REPLACE INTO disks VALUES (?, ?, ?)", (name, json.dumps(location), size))

    def disk(self, name: str) -> DiskEntry:
        row = self._run("SELECT name, location, size FROM disks WHERE name = ?", (name,)).fetchone()
        if row is None:
            known = ", ".join(self.disk_names()) or "none"
            raise PointNotFound(f"no replicated disk named {name!r} in {self.path} (known: {known})")
        return DiskEntry(row[0], json.loads(row[1]), int(row[2]))

    def disk_names(self) -> list[str]:
        return [r[0] for r in self._run("SELECT name FROM disks ORDER BY name")]

    def add_point(self, p: Point) -> bool:
        """Record a point; False when it was already there (a replay after a reconnect)."""
        cur = self._run("INSERT OR IGNORE INTO points VALUES (?, ?, ?, ?, ?, ?, ?)",
                               (p.disk, p.id, p.seq, p.time, p.kind, p.group_id, p.snapshot))
        return cur.rowcount == 1

    def has_point(self, disk: str, point_id: str) -> bool:
        q = "SELECT 1 FROM points WHERE disk = ? AND id = ?"
        return self._run(q, (disk, point_id)).fetchone() is not None

    def remove_point(self, disk: str, point_id: str) -> None:
        self._run("DELETE FROM points WHERE disk = ? AND id = ?", (disk, point_id))

    def points(self, name: str) -> list[Point]:
        """The points of a disk, or of a multi-VM group (every member disk's point with that group id)."""
        rows = self._run(
            "SELECT disk, id, seq, time, kind, group_id, snapshot FROM points"
            " WHERE disk = ? OR group_id = ? ORDER BY time, disk, seq, rowid", (name, name)).fetchall()
        return [Point(r[0], r[1], int(r[2]), float(r[3]), r[4], r[5], r[6]) for r in rows]

    def resolve(self, disk: str, spec: str) -> Point:
        """`latest`, `latest-app`, a point id, or an ISO time (the latest point at or before it)."""
        self.disk(disk)
        pts = [p for p in self.points(disk) if p.disk == disk]
        if spec == "latest":
            chosen = pts
        elif spec == "latest-app":
            chosen = [p for p in pts if p.kind == "app"]
        else:
            by_id = [p for p in pts if p.id == spec]
            if by_id:
                return by_id[0]
            try:
                when = dt.datetime.fromisoformat(spec)
            except ValueError:
                raise PointNotFound(f"point {spec!r} is neither latest, latest-app, a point id nor an ISO time"
                                    " (e.g. 2026-01-31T12:00:00Z)") from None
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.UTC)
            chosen = [p for p in pts if p.time <= when.timestamp()]
        if not chosen:
            have = f"{len(pts)} point(s)" + (f", the first at {pts[0].as_dict()['time']}" if pts else "")
            raise PointNotFound(f"disk {disk} has no recovery point matching {spec!r} ({have})")
        return chosen[-1]
