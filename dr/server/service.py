"""The configuration server's logic, apart from HTTP: vault, registration, heartbeats, catalog, events.

`ConfigServer` reads and writes the store; the FastAPI app (`dr.server.app`) only maps HTTP to it,
and the CLI (`dr status`, `dr failover`) uses it directly on the same store.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dr_agent.contract import Role, VaultCa, ca_proof, parse_stream, passphrase_key, stream_name
from dr_agent.errors import AgentError

from dr.errors import DrError
from dr.model import Estate, Machine
from dr.server import certs, health
from dr.server.schemas import (
    AgentHeartbeat,
    CatalogReport,
    MasterTargetHeartbeat,
    ProcessServerHeartbeat,
    RegisterRequest,
    RegisterResponse,
)
from dr.server.store import Store, dumps

# Unknown streams remembered (and reported once each) per component (our choice: a master target
# reports up to 4096 streams, but a rename of a few machines is what this is for).
UNKNOWN_STREAMS_MAX = 64
# Events kept on the dashboard's front page.
RECENT_EVENTS = 50


# Characters a new vault's passphrase needs at least. `GET /api/v1/ca` proves to a machine that has
# no CA yet that this server holds the passphrase (contract.ca_proof, keyed with scrypt of it), and
# anyone who can reach the server can test guesses against that proof offline at scrypt's cost
# (about 50 ms each here): only a long random passphrase makes that useless. 20 random base64
# characters are 120 bits; `openssl rand -base64 24` (what the stack's README line uses) gives 32.
MIN_VAULT_PASSPHRASE = 20


class AuthError(DrError):
    """A call without a valid token or with a wrong passphrase (HTTP 401 at the API)."""


class Forbidden(DrError):
    """A valid token used for something its role may not do (HTTP 403 at the API)."""


class NotFound(DrError):
    """A job, step or component that does not exist (HTTP 404 at the API)."""


class Conflict(DrError):
    """A request that does not fit the current state (HTTP 409 at the API)."""


def _hash_passphrase(passphrase: str, salt: bytes) -> bytes:
    """scrypt with the contract's parameters: the CA proof (`vault_ca`) is keyed with the same."""
    return bytes(passphrase_key(passphrase, salt))


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# A dashboard login link works once, within this many seconds (our choice).
LOGIN_LINK_TTL_S = 600


def verify_passphrase(store: Store, passphrase: str) -> bool:
    """Whether `passphrase` is the vault's (False when the store has no vault yet)."""
    record = store.get_meta("vault_passphrase")
    if record is None:
        return False
    _, salt, digest = record.split("$")
    return hmac.compare_digest(_hash_passphrase(passphrase, bytes.fromhex(salt)).hex(), digest)


def require_passphrase(store: Store, passphrase: str) -> None:
    if store.get_meta("vault_passphrase") is None:
        raise AuthError(f"{store.display_url} has no vault yet: start the server once with `dr config-server start`")
    if not verify_passphrase(store, passphrase):
        raise AuthError("the vault passphrase is wrong: use the one the configuration server was started with")


# Token lifetimes (seconds; our choice). A component's or operator's token lapses after 30 days unused
# (every use slides it, at most once an hour: a heartbeat every 30 s keeps it alive for good); a
# browser session ends 12 hours after its login link was used, whatever it does.
TOKEN_IDLE_S = 30 * 86_400
SESSION_S = 12 * 3_600
TOKEN_SLIDE_EVERY_S = 3_600


def mint_token(store: Store, *, name: str, role: Role | str, now: float, session: bool = False) -> str:
    """A new API token (only its SHA-256 is stored), with its expiry: sliding for components and
    operators (TOKEN_IDLE_S), fixed for a browser session (SESSION_S)."""
    token = secrets.token_urlsafe(32)
    lifetime = SESSION_S if session else TOKEN_IDLE_S
    store.execute("INSERT INTO tokens (token_hash, component, role, created, expires, idle_s) "
                  "VALUES (?, ?, ?, ?, ?, ?)",
                  (_token_hash(token), name, str(role), now, now + lifetime, None if session else TOKEN_IDLE_S))
    return token


def revoke_tokens(store: Store, name: str, *, now: float) -> int:
    """Revoke every token of component `name` (and forget the component, so the name may register
    again, in any role), recorded as an event. Returns how many tokens were revoked."""
    with store.transaction() as tx:
        rows = tx.query("SELECT COUNT(*) AS n FROM tokens WHERE component = ?", (name,))
        known = tx.query("SELECT name FROM components WHERE name = ?", (name,))
        tx.execute("DELETE FROM tokens WHERE component = ?", (name,))
        tx.execute("DELETE FROM components WHERE name = ?", (name,))
        count = int(rows[0]["n"])
        if known or count:
            tx.execute("INSERT INTO events (time, severity, kind, subject, message) VALUES (?, ?, ?, ?, ?)",
                       (now, "warning", "revoked", name, f"{name}: {count} token(s) revoked; it must register again"))
    if not known and not count:
        raise NotFound(f"no component or token named {name!r} in {store.display_url}: `dr status` lists them")
    return count


def end_sessions(store: Store) -> int:
    """Sign every browser out (session tokens have no sliding window); returns how many ended."""
    with store.transaction() as tx:
        rows = tx.query("SELECT COUNT(*) AS n FROM tokens WHERE idle_s IS NULL AND expires IS NOT NULL")
        tx.execute("DELETE FROM tokens WHERE idle_s IS NULL AND expires IS NOT NULL")
    return int(rows[0]["n"])


def drop_token(store: Store, token: str) -> None:
    """Log out: the token stops working at once."""
    store.execute("DELETE FROM tokens WHERE token_hash = ?", (_token_hash(token),))


def mint_login_code(store: Store, *, by: str, now: float) -> str:
    """A one-time dashboard login code (path `/login/<code>`), valid LOGIN_LINK_TTL_S seconds."""
    code = secrets.token_urlsafe(24)
    store.set_meta("login:" + _token_hash(code), json.dumps({"expires": now + LOGIN_LINK_TTL_S, "by": by}))
    return code


def use_login_code(store: Store, code: str, *, now: float) -> str:
    """Consume a login code; return who minted it. Raises AuthError when unknown, used or expired."""
    key = "login:" + _token_hash(code)
    with store.transaction() as tx:
        rows = tx.query("SELECT value FROM meta WHERE key = ?", (key,))
        tx.execute("DELETE FROM meta WHERE key = ?", (key,))
    if not rows or json.loads(rows[0]["value"])["expires"] < now:
        raise AuthError("this login link is unknown, used or expired: run `dr config-server login-link` again")
    return str(json.loads(rows[0]["value"])["by"])


@dataclass(frozen=True, kw_only=True)
class Replica:
    """A spec disk's replica as its master target reports it (contract.ReplicaLocation's keys)."""

    machine: str
    disk: str
    stream: str
    reporter: str
    size: int
    location: dict[str, Any]
    reported: float


@dataclass(frozen=True, kw_only=True)
class Principal:
    name: str
    role: Role


@dataclass(frozen=True, kw_only=True)
class DiskStatus:
    machine: str
    disk: str
    rpo_seconds: float | None
    reported: float | None
    latest: float | None
    latest_app: float | None
    points: int
    state: str | None = None             # the agent's word: initial-sync, protected, resync, bitmap
    sync_fraction: float | None = None   # initial sync or resync: share done


@dataclass(frozen=True, kw_only=True)
class MachineStatus:
    name: str
    kind: str
    group: str
    rpo_threshold_s: float
    health: health.Health
    power_state: str | None
    last_heartbeat: float | None
    disks: tuple[DiskStatus, ...]

    @property
    def rpo_seconds(self) -> float | None:
        values = [d.rpo_seconds for d in self.disks if d.rpo_seconds is not None]
        return max(values) if values else None

    @property
    def latest(self) -> float | None:
        """The newest time every disk has a point at or after (None until each disk has one)."""
        values = [d.latest for d in self.disks]
        return None if not values or None in values else min(v for v in values if v is not None)

    @property
    def latest_app(self) -> float | None:
        values = [d.latest_app for d in self.disks]
        return None if not values or None in values else min(v for v in values if v is not None)


@dataclass(frozen=True, kw_only=True)
class ComponentStatus:
    name: str
    role: str
    site: str | None
    address: str | None
    last_heartbeat: float | None
    cache_free_fraction: float | None
    health: health.Health


@dataclass(frozen=True, kw_only=True)
class Overview:
    time: float
    estate: str
    health: health.Health
    machines: tuple[MachineStatus, ...]
    components: tuple[ComponentStatus, ...]
    alerts: tuple[dict[str, Any], ...]
    events: tuple[dict[str, Any], ...]
    jobs: tuple[dict[str, Any], ...]

    def as_dict(self) -> dict[str, Any]:
        def h(value: health.Health) -> dict[str, Any]:
            return {"state": value.state, "reasons": list(value.reasons)}

        return {
            "time": self.time,
            "estate": self.estate,
            "health": h(self.health),
            "machines": [
                {
                    "name": m.name, "kind": m.kind, "group": m.group, "health": h(m.health),
                    "rpo_seconds": m.rpo_seconds, "rpo_threshold_seconds": m.rpo_threshold_s,
                    "power_state": m.power_state, "last_heartbeat": m.last_heartbeat,
                    "latest_point": m.latest, "latest_app_point": m.latest_app,
                    "disks": [
                        {
                            "disk": d.disk, "rpo_seconds": d.rpo_seconds, "latest_point": d.latest,
                            "latest_app_point": d.latest_app, "points": d.points, "state": d.state,
                            "sync_fraction": d.sync_fraction,
                        }
                        for d in m.disks
                    ],
                }
                for m in self.machines
            ],
            "components": [
                {
                    "name": c.name, "role": c.role, "site": c.site, "address": c.address,
                    "last_heartbeat": c.last_heartbeat, "cache_free_fraction": c.cache_free_fraction,
                    "health": h(c.health),
                }
                for c in self.components
            ],
            "alerts": list(self.alerts),
            "events": list(self.events),
            "jobs": list(self.jobs),
        }


@dataclass(frozen=True, kw_only=True)
class ConfigServer:
    store: Store
    estate: Estate
    heartbeat_timeout_s: float = health.DEFAULT_HEARTBEAT_TIMEOUT_S
    clock: Callable[[], float] = field(default=time.time)

    # ------------------------------------------------------------------ vault and tokens
    def init_vault(self, passphrase: str) -> None:
        """Record the vault passphrase (hashed) at first start; later starts must give the same one."""
        if not passphrase:
            raise AuthError("the vault passphrase is empty: give one with --passphrase-file or DR_VAULT_PASSPHRASE")
        if self.store.get_meta("vault_passphrase") is None and len(passphrase) < MIN_VAULT_PASSPHRASE:
            raise AuthError(
                f"a new vault needs a passphrase of at least {MIN_VAULT_PASSPHRASE} characters (this one has "
                f"{len(passphrase)}): registering machines can test guesses of it offline against the server's "
                "CA proof, so make it long and random, e.g. `openssl rand -base64 24`"
            )
        salt = secrets.token_bytes(16)
        record = f"scrypt${salt.hex()}${_hash_passphrase(passphrase, salt).hex()}"
        self.store.set_meta_once("vault_passphrase", record)
        if not self.check_passphrase(passphrase):
            raise AuthError(
                f"the state store {self.store.display_url} belongs to a vault with another passphrase: "
                "give that passphrase, or a new --state for a new vault"
            )
        certs.authority(self.store, passphrase)  # the vault CA exists, its key encrypted at rest
        self.store.set_meta_once("vault_created", repr(self.clock()))

    def check_passphrase(self, passphrase: str) -> bool:
        return verify_passphrase(self.store, passphrase)

    def mint_token(self, *, name: str, role: Role | str, session: bool = False) -> str:
        return mint_token(self.store, name=name, role=role, now=self.clock(), session=session)

    def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise AuthError("no token: send `Authorization: Bearer <token>` (a token comes with registration)")
        key = _token_hash(token)
        row = self.store.one("SELECT component, role, created, expires, idle_s FROM tokens WHERE token_hash = ?",
                             (key,))
        if row is None:
            raise AuthError("the token is not known to this vault (revoked, replaced by a new registration, or "
                            "never issued): register again to get a new one")
        now = self.clock()
        expires = row["expires"] if row["expires"] is not None else row["created"] + TOKEN_IDLE_S
        if expires <= now:
            raise AuthError("the token has expired: register again (a browser: ask for a new login link with "
                            "`dr config-server login-link`)")
        idle = row["idle_s"]
        if idle is not None and expires - now < idle - TOKEN_SLIDE_EVERY_S:
            self.store.execute("UPDATE tokens SET expires = ? WHERE token_hash = ?", (now + idle, key))
        return Principal(name=row["component"], role=row["role"])

    def known_token(self, token: str) -> bool:
        """Whether a token is valid now (no side effects beyond sliding its expiry)."""
        try:
            self.authenticate(token)
        except AuthError:
            return False
        return True

    def component_machine(self, name: str) -> str | None:
        row = self.store.one("SELECT machine FROM components WHERE name = ?", (name,))
        return None if row is None else row["machine"]

    # ------------------------------------------------------------------ registration
    def vault_ca(self) -> VaultCa:
        """The vault CA and the proof that this server holds the vault passphrase, for a component
        that has no CA yet (it checks the proof before it sends the passphrase)."""
        record = self.store.get_meta("vault_passphrase")
        if record is None:
            raise Conflict("the vault is not initialised yet: start the server with `dr config-server start`")
        _, salt, digest = record.split("$")
        pem = certs.ca_pem(self.store)
        return VaultCa(ca_pem=pem, salt=salt, proof=ca_proof(bytes.fromhex(digest), pem))

    def register(self, request: RegisterRequest) -> RegisterResponse:
        if not self.check_passphrase(request.passphrase):
            # No event here: the HTTP layer aggregates refusals per client (dr.server.security.RefusalLog).
            raise AuthError("the vault passphrase is wrong: use the one the configuration server was started with")
        known = self.store.one("SELECT role FROM components WHERE name = ?", (request.name,))
        if known is not None and known["role"] != str(request.role):
            raise Conflict(
                f"{request.name} is registered as a {known['role']}: a name keeps its role; register the "
                f"{request.role} under another name, or `dr config-server revoke {request.name}` first"
            )
        machine: Machine | None = None
        if request.role == "agent":
            if request.machine is None:
                raise Conflict("an agent registers for a machine: give `machine` (a name in the spec)")
            try:
                machine = self.estate.machine(request.machine)
            except KeyError:
                raise NotFound(
                    f"machine {request.machine!r} is not in the spec of estate {self.estate.estate}: "
                    "add it to dr.yaml or register with a spec machine name"
                ) from None
        issued = certs.issue(
            self.store, passphrase=request.passphrase, name=request.name, role=request.role, csr_pem=request.csr_pem,
            hosts=tuple(h for h in (request.address, *request.alt_names) if h),
            machine=machine.name if machine else None,
        )
        now = self.clock()
        with self.store.transaction() as tx:
            tx.upsert(
                "components",
                {
                    "name": request.name, "role": request.role,
                    "machine": machine.name if machine else None,
                    "site": request.site or (machine.site if machine else None),
                    "address": request.address, "registered": now,
                },
                keys=("name",),
            )
        # A new registration replaces the name's tokens: whoever held the old one is out.
        self.store.execute("DELETE FROM tokens WHERE component = ?", (request.name,))
        token = self.mint_token(name=request.name, role=request.role)
        self.event("info", "registered", request.name, f"{request.role.replace('_', ' ')} registered")
        return RegisterResponse(
            name=request.name, role=request.role, token=token, certificate_pem=issued.certificate_pem,
            private_key_pem=issued.private_key_pem, ca_pem=issued.ca_pem,
        )

    # ------------------------------------------------------------------ heartbeats and catalog
    def heartbeat(
        self, who: Principal, beat: AgentHeartbeat | ProcessServerHeartbeat | MasterTargetHeartbeat
    ) -> None:
        expected = {Role.AGENT: AgentHeartbeat, Role.PROCESS_SERVER: ProcessServerHeartbeat,
                    Role.MASTER_TARGET: MasterTargetHeartbeat}.get(Role(who.role))
        if expected is None or not isinstance(beat, expected):
            raise Forbidden(f"a {who.role} does not send {type(beat).__name__} heartbeats")
        now = self.clock()
        unknown: list[str] = []
        with self.store.transaction() as tx:
            rows = tx.query("SELECT machine FROM components WHERE name = ?", (who.name,))
            if not rows:
                raise NotFound(f"component {who.name} is not registered: register it again")
            if isinstance(beat, AgentHeartbeat):
                machine = rows[0]["machine"]
                disks: dict[str, Any] = {}
                for disk in beat.disks:
                    spec_disk = self._spec_disk(disk.stream)
                    if spec_disk is None or spec_disk[0] != machine:
                        unknown.append(disk.stream)
                        continue
                    disks[spec_disk[1]] = disk.model_dump(exclude={"stream", "rpo_seconds"})
                    if disk.rpo_seconds is not None:
                        tx.upsert("disks", {"machine": machine, "disk": spec_disk[1], "rpo_seconds": disk.rpo_seconds,
                                            "reported": now, "reporter": who.name}, keys=("machine", "disk"))
                details = {"disks": disks, "last_point": beat.last_point, "group": beat.group,
                           "coordinated": beat.coordinated}
                tx.execute("UPDATE components SET last_heartbeat = ?, power_state = ?, details = ? WHERE name = ?",
                           (now, beat.power_state, dumps(details), who.name))
            elif isinstance(beat, ProcessServerHeartbeat):
                details = {"backlog_bytes": beat.backlog_total, "cache_bytes": beat.cache_bytes,
                           "cache_capacity_bytes": beat.cache_capacity_bytes,
                           "master_target_reachable": beat.master_target_reachable, "groups": beat.groups,
                           "group_problems": beat.group_problems, "resync_from": beat.resync_from}
                tx.execute(
                    "UPDATE components SET last_heartbeat = ?, cache_free_fraction = ?, details = ? "
                    "WHERE name = ?",
                    (now, beat.cache_free_fraction, dumps(details), who.name),
                )
            else:
                tx.execute("UPDATE components SET last_heartbeat = ?, details = ? WHERE name = ?",
                           (now, dumps(beat.model_dump()), who.name))
        self._unknown_streams(who, unknown)

    def _spec_disk(self, stream: str) -> tuple[str, str] | None:
        """(machine, disk) of the spec a stream is (contract.parse_stream), or None."""
        try:
            machine, disk = parse_stream(stream)
        except AgentError:
            return None
        try:
            spec = self.estate.machine(machine)
        except KeyError:
            return None
        return (machine, disk) if any(d.name == disk for d in spec.disks) else None

    def _unknown_streams(self, who: Principal, streams: list[str]) -> None:
        """An event, once per component and stream, for a stream that is no disk of the spec (at most
        UNKNOWN_STREAMS_MAX remembered per component: made-up names cannot grow the store)."""
        if not streams:
            return
        prefix = f"unknown_stream:{who.name}:"
        seen = self.store.one("SELECT COUNT(*) AS n FROM meta WHERE key >= ? AND key < ?", (prefix, prefix + "\uffff"))
        room = UNKNOWN_STREAMS_MAX - (0 if seen is None else int(seen["n"]))
        for stream in streams:
            if room <= 0:
                return
            room -= 1
            marker = secrets.token_hex(8)
            if self.store.set_meta_once(f"unknown_stream:{who.name}:{stream}", marker) == marker:
                self.event("warning", "unknown_stream", who.name,
                           f"{who.role.replace('_', ' ')} {who.name} reports stream {stream!r}, which is no disk "
                           "of the spec (a machine or disk renamed or removed?): ignored")

    def report_catalog(self, who: Principal, report: CatalogReport) -> None:
        """A master target's replicas (where each is), their recovery points (with snapshots) and RPO:
        the catalog of record. Replaces what this master target said before."""
        if who.role != Role.MASTER_TARGET:
            raise Forbidden("only a master target reports the recovery point catalog")
        now = self.clock()
        unknown: list[str] = []
        with self.store.transaction() as tx:
            tx.execute("UPDATE components SET last_heartbeat = ? WHERE name = ?", (now, who.name))
            before = {(r["machine"], r["disk"]) for r in tx.query(
                "SELECT machine, disk FROM replicas WHERE reporter = ?", (who.name,))}
            reported: set[tuple[str, str]] = set()
            for entry in report.streams:
                key = self._spec_disk(entry.stream)
                if key is None:
                    unknown.append(entry.stream)
                    continue
                machine, disk = key
                reported.add(key)
                tx.upsert("replicas", {"machine": machine, "disk": disk, "stream": entry.stream,
                                       "reporter": who.name, "size": entry.size,
                                       "location": dumps(entry.location.model_dump(exclude_none=True)),
                                       "reported": now}, keys=("machine", "disk"))
                if entry.rpo_seconds is not None:
                    tx.upsert("disks", {"machine": machine, "disk": disk, "rpo_seconds": entry.rpo_seconds,
                                        "reported": now, "reporter": who.name}, keys=("machine", "disk"))
                tx.execute("DELETE FROM recovery_points WHERE machine = ? AND disk = ?", (machine, disk))
                for point in entry.points:
                    tx.execute(
                        "INSERT INTO recovery_points (machine, disk, point_id, time, kind, group_id, processed, "
                        "snapshot) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (machine, disk, point_id) DO NOTHING",
                        (machine, disk, point.point_id, point.time, point.kind, point.group_id,
                         int(point.processed), point.snapshot),
                    )
            for machine, disk in before - reported:  # replicas this master target no longer holds
                tx.execute("DELETE FROM replicas WHERE machine = ? AND disk = ? AND reporter = ?",
                           (machine, disk, who.name))
                tx.execute("DELETE FROM recovery_points WHERE machine = ? AND disk = ?", (machine, disk))
        self._unknown_streams(who, unknown)

    def replica(self, machine: str, disk: str) -> Replica:
        """Where a spec disk's replica is, as its master target last reported (NotFound when none did)."""
        row = self.store.one("SELECT stream, reporter, size, location, reported FROM replicas "
                             "WHERE machine = ? AND disk = ?", (machine, disk))
        if row is None:
            raise NotFound(f"no master target has reported a replica of {machine}/{disk}: is the disk protected, "
                           "and does its master target run with a [control] table? see `dr status`")
        return Replica(machine=machine, disk=disk, stream=row["stream"], reporter=row["reporter"],
                       size=int(row["size"]), location=json.loads(row["location"]), reported=row["reported"])

    def point_snapshot(self, machine: str, disk: str, point_id: str) -> str | None:
        """The replica snapshot holding a recovery point (NotFound when the catalog has no such point)."""
        row = self.store.one("SELECT snapshot FROM recovery_points WHERE machine = ? AND disk = ? AND point_id = ?",
                             (machine, disk, point_id))
        if row is None:
            raise NotFound(f"{machine}/{disk} has no recovery point {point_id!r} in the catalog (pruned by "
                           "retention since it was chosen?)")
        return None if row["snapshot"] is None else str(row["snapshot"])

    def recovery_points(self, machine: str, disk: str | None = None) -> list[dict[str, Any]]:
        sql = ("SELECT machine, disk, point_id, time, kind, group_id, processed, snapshot FROM recovery_points "
               "WHERE machine = ?")
        params: list[Any] = [machine]
        if disk is not None:
            sql += " AND disk = ?"
            params.append(disk)
        return [dict(r.values) for r in self.store.query(sql + " ORDER BY time, disk", params)]

    # ------------------------------------------------------------------ events
    def event(self, severity: str, kind: str, subject: str, message: str) -> None:
        self.store.execute(
            "INSERT INTO events (time, severity, kind, subject, message) VALUES (?, ?, ?, ?, ?)",
            (self.clock(), severity, kind, subject, message),
        )

    def events(self, limit: int = RECENT_EVENTS, after: int = 0) -> list[dict[str, Any]]:
        rows = self.store.query(
            "SELECT id, time, severity, kind, subject, message FROM events WHERE id > ? ORDER BY id DESC LIMIT ?",
            (after, limit),
        )
        return [dict(r.values) for r in rows]

    # ------------------------------------------------------------------ health
    def overview(self) -> Overview:
        now = self.clock()
        components = {r["name"]: r for r in self.store.query("SELECT * FROM components")}
        agents = {r["machine"]: r for r in components.values() if r["role"] == "agent" and r["machine"]}
        disks = {(r["machine"], r["disk"]): r for r in self.store.query("SELECT * FROM disks")}
        points: dict[tuple[str, str], list[Any]] = {}
        for r in self.store.query("SELECT machine, disk, time, kind FROM recovery_points"):
            points.setdefault((r["machine"], r["disk"]), []).append(r)
        resyncs: dict[str, tuple[str, int]] = {}  # stream -> (process server, first record it lost)
        for r in components.values():
            if r["role"] == "process_server":
                for stream, first in json.loads(r["details"] or "{}").get("resync_from", {}).items():
                    resyncs[stream] = (r["name"], first)
        machines: list[MachineStatus] = []
        for group in self.estate.protection_groups:
            threshold = group.policy.rpo_threshold.total_seconds()
            for name in group.members:
                try:
                    spec = self.estate.machine(name)
                except KeyError:
                    continue
                agent = agents.get(name)
                reported = {} if agent is None else json.loads(agent["details"] or "{}").get("disks", {})
                parts = []
                disk_states = []
                for disk in spec.disks:
                    row = disks.get((name, disk.name))
                    pts = points.get((name, disk.name), [])
                    # The RPO ages between reports: what was reported plus the time since, and never
                    # less than the age of the newest recovery point.
                    rpo_s = health.aged_rpo(None if row is None else row["rpo_seconds"],
                                            reported=None if row is None else row["reported"],
                                            newest_point=max((p["time"] for p in pts), default=None), now=now)
                    state = reported.get(disk.name, {})
                    parts.append(health.disk_state(state.get("state"), disk=disk.name, problem=state.get("problem", ""),
                                                   done=state.get("sync_done_bytes", 0),
                                                   total=state.get("sync_total_bytes", 0)))
                    server, first_lost = resyncs.get(stream_name(name, disk.name), ("", None))
                    parts.append(health.pending_resync(first_lost, disk=disk.name, server=server))
                    if rpo_s is not None or state.get("state") != "initial-sync":
                        parts.append(health.rpo(rpo_s, threshold_s=threshold, disk=disk.name))
                    disk_states.append(DiskStatus(
                        machine=name, disk=disk.name, rpo_seconds=rpo_s,
                        reported=None if row is None else row["reported"],
                        latest=max((p["time"] for p in pts), default=None),
                        latest_app=max((p["time"] for p in pts if p["kind"] == "app"), default=None),
                        points=len(pts), state=state.get("state"),
                        sync_fraction=(state["sync_done_bytes"] / state["sync_total_bytes"]
                                       if state.get("sync_total_bytes") else None),
                    ))
                last = None if agent is None else agent["last_heartbeat"]
                power_state = None if agent is None else agent["power_state"]
                parts.append(health.heartbeat(last, now=now, timeout_s=self.heartbeat_timeout_s,
                                              what=f"the agent of {name}"))
                parts.append(health.power(power_state, machine=name))
                machines.append(MachineStatus(
                    name=name, kind=spec.kind, group=group.name, rpo_threshold_s=threshold,
                    health=health.Health.worst(*parts), power_state=power_state, last_heartbeat=last,
                    disks=tuple(disk_states),
                ))
        comps: list[ComponentStatus] = []
        for r in sorted(components.values(), key=lambda r: (r["role"], r["name"])):
            if r["role"] in ("agent", "operator"):
                continue
            label = f"{r['role'].replace('_', ' ')} {r['name']}"
            parts = [health.heartbeat(r["last_heartbeat"], now=now, timeout_s=self.heartbeat_timeout_s, what=label)]
            if r["role"] == "process_server":
                parts.append(health.cache(r["cache_free_fraction"], server=r["name"]))
                if json.loads(r["details"] or "{}").get("master_target_reachable") is False:
                    parts.append(health.Health(state="Warning", reasons=(
                        f"process server {r['name']} cannot reach its master target: changes wait in its cache",)))
            comps.append(ComponentStatus(
                name=r["name"], role=r["role"], site=r["site"], address=r["address"],
                last_heartbeat=r["last_heartbeat"], cache_free_fraction=r["cache_free_fraction"],
                health=health.Health.worst(*parts),
            ))
        alerts = tuple(dict(r.values) for r in self.store.query(
            "SELECT condition, subject, opened, severity, message FROM open_alerts ORDER BY opened"))
        jobs = tuple(dict(r.values) for r in self.store.query(
            "SELECT id, kind, plan, state, created, updated, error FROM jobs ORDER BY created DESC LIMIT 20"))
        overall = health.Health.worst(*(m.health for m in machines), *(c.health for c in comps))
        return Overview(
            time=now, estate=self.estate.estate, health=overall, machines=tuple(machines),
            components=tuple(comps), alerts=alerts, events=tuple(self.events()), jobs=jobs,
        )
