"""The contract between the two halves of the product: what `dr` and the data path must agree on.

Standard library only, imported by `dr` (the planner's renderers, the stack, failover, the
configuration server), by the blueprints' renderer, and by the three services. A name, port, role,
file layout or message shape that two parts share is defined here once; nothing else spells it.

    ports         PS_PORT, MT_PORT, CS_PORT, the services' metrics ports
    roles         Role (one spelling, everywhere: certificates, tokens, the state store, the API);
                  machine_uri / uri_machine: the spec machine an agent's certificate acts for
    layout        Layout: where a deployed machine keeps its configuration, identity and state
    names         stream_name / parse_stream (a spec disk <-> its stream, replica blob and catalog key),
                  REPLICA_CONTAINER, RETENTION_CONTAINER, replica_blob
    wire messages Hello, Welcome, Ack, Fallback, Error, HashesRequest, Resynced: typed JSON bodies of
                  the data path's control frames; `parse(cls, body)` refuses anything else with
                  ProtocolError
    control plane HEARTBEAT_INTERVAL_S, the API paths, VaultCa, Registration / RegistrationAnswer,
                  MasterTargetHealth, CatalogReport (per stream: ReplicaLocation, CatalogPoint)
    coordinator   Join, GroupState, Pause, Mark, PointStep, Failed: the multi-VM coordinator's bodies
                  (hosted by the process server); ProcessServerHealth

Every wire and control body is a frozen dataclass with `to_json()` and a classmethod
`from_json(body)`; unknown keys are ignored (a newer peer may add some), missing or mistyped
required keys raise ProtocolError naming the message and the key.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac
import re
import time
import types
import typing
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, ClassVar, TypeVar

from dr_agent.errors import ProtocolError

# -- ports (TCP) ---------------------------------------------------------------------------------
# Chosen for this project; ASR's process server used 9443 for the agents' data, as ours does.
PS_PORT = 9443            # agents dial the process server (data streams, hashes, the multi-VM coordinator)
MT_PORT = 9444            # process servers dial the master target
CS_PORT = 8443            # everyone dials the configuration server (HTTPS API, dashboard)
PS_METRICS_PORT = 9101    # Prometheus metrics, bound to loopback by default
MT_METRICS_PORT = 9102
AGENT_METRICS_PORT = 9103


# -- roles ---------------------------------------------------------------------------------------
class Role(enum.StrEnum):
    """Who a component is: in its certificate (subject OU), its token, the state store and the API."""

    AGENT = "agent"
    PROCESS_SERVER = "process_server"
    MASTER_TARGET = "master_target"
    CONFIG_SERVER = "config_server"
    OPERATOR = "operator"


# An agent's certificate names the spec machine it acts for as a URI among its subject alternative
# names, so a component's name stays its own (`failback-sql01`, the failback runner, acts for sql01
# next to sql01's own agent); a certificate without one acts for the machine its common name is.
# The scheme is this project's (an RFC 3986 URN-shaped name; nothing resolves it).
MACHINE_URI_PREFIX = "urn:dr-as-code:machine:"


def machine_uri(machine: str) -> str:
    """The subject-alternative-name URI of an agent certificate acting for `machine`."""
    return MACHINE_URI_PREFIX + urllib.parse.quote(machine, safe="")


def uri_machine(uri: str) -> str | None:
    """The machine a `machine_uri` names; None for any other URI."""
    if not uri.startswith(MACHINE_URI_PREFIX):
        return None
    return urllib.parse.unquote(uri[len(MACHINE_URI_PREFIX):]) or None


# Roles a data-path component registers as (operators and the configuration server do not stream).
SERVICE_ROLES: tuple[Role, ...] = (Role.AGENT, Role.PROCESS_SERVER, Role.MASTER_TARGET)
# Which roles may dial which listener. Nothing listens on a source machine.
MAY_DIAL: dict[Role, tuple[Role, ...]] = {
    Role.PROCESS_SERVER: (Role.AGENT,),
    Role.MASTER_TARGET: (Role.PROCESS_SERVER,),
}


def parse_role(text: str) -> Role:
    """A role from its spelling here, or from the command-line spelling (`process-server`)."""
    try:
        return Role(text.replace("-", "_"))
    except ValueError:
        known = ", ".join(r.value for r in Role)
        raise ProtocolError(f"unknown role {text!r}: expected one of {known}") from None


# -- layout of a deployed machine ----------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """Where a machine keeps the product's files. `root` is "/" on a real machine; the lab and tests
    give each simulated machine its own root, and everything below moves with it."""

    root: str = "/"

    @property
    def base(self) -> PurePosixPath:
        return PurePosixPath(self.root)

    @property
    def config_dir(self) -> PurePosixPath:
        return self.base / "etc/dr-agent"

    @property
    def identity_dir(self) -> PurePosixPath:
        """cert.pem, key.pem (0600) and ca.pem: see IDENTITY_FILES."""
        return self.config_dir / "identity"

    @property
    def env_file(self) -> PurePosixPath:
        """Secrets as environment variables (connection strings, the registration passphrase), 0600."""
        return self.config_dir / "env"

    @property
    def state_dir(self) -> PurePosixPath:
        return self.base / "var/lib/dr-agent"

    @property
    def venv(self) -> PurePosixPath:
        """The agent package's own virtual environment (push installation)."""
        return self.base / "opt/dr-agent"

    def config(self, service: str) -> PurePosixPath:
        """`agent.toml`, `process-server.toml`, `master-target.toml`."""
        return self.config_dir / f"{service}.toml"


IDENTITY_FILES = {"cert": "cert.pem", "key": "key.pem", "ca": "ca.pem"}
# The configuration server's registration token, beside the identity (one line, 0600).
TOKEN_FILE = "token"
LAYOUT = Layout()


# -- names ---------------------------------------------------------------------------------------
REPLICA_CONTAINER = "replicas"    # page blobs, one per protected disk: <stream>.vhd
RETENTION_CONTAINER = "retention"  # master targets' recovery-point journals
# A stream name: what HELLO names, the process server's cache directory, the replica blob's stem
# and the master target's catalog key. Safe as a file name and a blob name.
STREAM_NAME = re.compile(r"^[A-Za-z0-9_~-][A-Za-z0-9._~-]{0,199}$")
_SAFE = re.compile(r"[A-Za-z0-9_-]")
_SEPARATOR = "."


def _escape(part: str) -> str:
    return "".join(c if _SAFE.fullmatch(c) else "".join(f"~{b:02X}" for b in c.encode()) for c in part)


def _unescape(part: str) -> str:
    out = bytearray()
    i = 0
    while i < len(part):
        if part[i] == "~":
            out.append(int(part[i + 1:i + 3], 16))
            i += 3
        else:
            out += part[i].encode()
            i += 1
    return out.decode()


def stream_name(machine: str, disk: str) -> str:
    """The data path's name of a spec disk: `<machine>.<disk>`, any character other than letters,
    digits, `_` and `-` written `~XX` (its UTF-8 bytes in hex). One-to-one: `parse_stream` inverts it,
    so `sql_01`/`data_1` and `sql-01`/`data-1` never share a replica."""
    if not machine or not disk:
        raise ProtocolError(f"a stream needs a machine and a disk name, got {machine!r} and {disk!r}")
    name = f"{_escape(machine)}{_SEPARATOR}{_escape(disk)}"
    if not STREAM_NAME.match(name):
        raise ProtocolError(f"machine {machine!r} disk {disk!r}: the stream name {name!r} is too long "
                            "(at most 200 characters): shorten the machine or disk name")
    return name


def parse_stream(name: str) -> tuple[str, str]:
    """(machine, disk) of a stream name; ProtocolError when it is not one `stream_name` makes."""
    machine, sep, disk = name.partition(_SEPARATOR)
    try:
        if not sep or not machine or not disk or _SEPARATOR in disk or not STREAM_NAME.match(name):
            raise ValueError(name)
        return _unescape(machine), _unescape(disk)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError(f"{name!r} is not a stream name: expected <machine>.<disk>") from None


def replica_blob(machine: str, disk: str) -> str:
    """The replica page blob of a spec disk in REPLICA_CONTAINER: `<stream>.vhd` (a fixed VHD)."""
    return f"{stream_name(machine, disk)}.vhd"


# -- typed wire messages -------------------------------------------------------------------------
M = TypeVar("M", bound="Message")
_KINDS: dict[type, tuple[type, ...]] = {int: (int,), float: (int, float), str: (str,), bool: (bool,)}


def _check(cls_name: str, key: str, value: Any, annotation: Any) -> Any:
    """`value` as `annotation` says (int, float, str, bool, X | None, dict); else ProtocolError."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check(cls_name, key, value, inner)
    if annotation is dict or typing.get_origin(annotation) is dict:
        if isinstance(value, dict):
            return value
    elif typing.get_origin(annotation) in (list, tuple):
        # a list of values (`list[X]`) or of nested messages; held as a tuple (frozen)
        if isinstance(value, list):
            (inner,) = typing.get_args(annotation)[:1]
            return tuple(_check(cls_name, f"{key}[{i}]", v, inner) for i, v in enumerate(value))
    elif isinstance(annotation, type) and issubclass(annotation, Message):
        try:
            return annotation.from_json(value)
        except ProtocolError as err:  # say where in the outer message it was
            raise ProtocolError(f"{cls_name}: {key}: {err}") from None
    else:
        ok = _KINDS.get(annotation, (annotation,))
        # bool is an int in Python; a wire number is never a bool
        if isinstance(value, ok) and not (isinstance(value, bool) and annotation is not bool):
            return float(value) if annotation is float else value
    raise ProtocolError(f"{cls_name}: {key} = {value!r} is not a {getattr(annotation, '__name__', annotation)}")


@dataclass(frozen=True)
class Message:
    """A JSON body of a control frame. Subclasses are frozen dataclasses of plain fields."""

    NAME: ClassVar[str] = "message"

    def to_json(self) -> dict[str, Any]:
        return {f.metadata.get("wire", f.name): _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_json(cls: type[M], body: Any) -> M:
        if not isinstance(body, dict):
            raise ProtocolError(f"{cls.NAME}: expected a JSON object, got {type(body).__name__}")
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            wire = f.metadata.get("wire", f.name)
            if wire not in body:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise ProtocolError(f"{cls.NAME}: the required key {wire!r} is missing")
                continue
            values[f.name] = _check(cls.NAME, wire, body[wire], hints[f.name])
        return cls(**values)


def _plain(value: Any) -> Any:
    """A field's JSON value: nested messages as objects, tuples as lists."""
    if isinstance(value, Message):
        return value.to_json()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _wire(name: str) -> Any:
    return dataclasses.field(metadata={"wire": name})


@dataclass(frozen=True)
class Hello(Message):
    """The dialler's first frame: which disk stream, how large, and what for."""

    NAME: ClassVar[str] = "HELLO"
    disk: str
    size: int
    # "stream" (records; one connection per disk at a master target), "hashes" (a resync's block digests)
    # or "probe" (a process server asking a master target where a stream stands: WELCOME, then the end)
    purpose: str = "stream"
    first_retained: int | None = None       # an agent: the oldest record it still holds
    resyncing: bool = False                 # an agent: a hash resync is under way
    ps: str | None = None                   # a process server dialling a master target: its name

    PURPOSES: ClassVar[tuple[str, ...]] = ("stream", "hashes", "probe")

    def __post_init__(self) -> None:
        if not STREAM_NAME.match(self.disk):
            raise ProtocolError(f"HELLO: {self.disk!r} is not a stream name")
        if self.size <= 0 or self.size % 512:
            raise ProtocolError(f"HELLO: disk {self.disk} of {self.size} bytes: expected a positive multiple of 512")
        if self.purpose not in self.PURPOSES:
            raise ProtocolError(f"HELLO: purpose {self.purpose!r} is not one of {', '.join(self.PURPOSES)}")


@dataclass(frozen=True)
class Welcome(Message):
    """The receiver's answer to HELLO: where the stream stands."""

    NAME: ClassVar[str] = "WELCOME"
    applied: int = 0                        # the master target's applied sequence
    durable: int | None = None              # a process server: its last durable (cached) sequence
    level: str | None = None                # a process server: its cache's alert level
    resync_from: int | None = None          # dropped records the agent no longer holds: resync
    resync_mark: int | None = None          # the count of drops a resync under way covers


@dataclass(frozen=True)
class Ack(Message):
    NAME: ClassVar[str] = "ACK"
    applied: int = 0
    durable: int | None = None


@dataclass(frozen=True)
class Fallback(Message):
    """The process server's cache is full: track changes in a bitmap from `from_seq` on."""

    NAME: ClassVar[str] = "FALLBACK"
    from_seq: int
    reason: str = ""


@dataclass(frozen=True)
class Error(Message):
    NAME: ClassVar[str] = "ERROR"
    error: str


@dataclass(frozen=True)
class HashesRequest(Message):
    NAME: ClassVar[str] = "HASHES"
    first_block: int
    count: int
    block_size: int


@dataclass(frozen=True)
class Resynced(Message):
    """A hash resync after drops up to number `mark` is complete and flushed from sequence `from`."""

    NAME: ClassVar[str] = "RESYNCED"
    from_seq: int = _wire("from")
    mark: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"from": self.from_seq, "mark": self.mark}


# -- control plane: registration, heartbeats, the recovery-point catalog -------------------------
# Every service tells the configuration server (HTTPS on CS_PORT) that it lives this often
# (seconds; our choice). The server's heartbeat timeout (ASR's 15 minutes by default,
# `dr config-server start --heartbeat-timeout`) is far above it, so a lost beat or two is no alarm.
HEARTBEAT_INTERVAL_S = 30.0
# While the configuration server is away, the services retry after 1, 2, 4 ... seconds up to this
# (seconds; our choice: a returning server hears from everyone within a minute).
CONTROL_BACKOFF_MAX_S = 60.0
# A master target sends its catalog with a heartbeat when it changed, and at least this often
# (seconds; our choice: a restarted server with an empty store is complete again within minutes).
CATALOG_REFRESH_S = 300.0
REGISTER_PATH = "/api/v1/register"
# The vault CA, with the server's proof that it knows the vault passphrase (no token needed): a
# component without the CA yet verifies it with the passphrase before sending the passphrase.
CA_PATH = "/api/v1/ca"
# scrypt parameters of the vault passphrase (n=2**14, r=8, p=1: the values Python's docs and
# RFC 7914 give for interactive logins; about 50 ms here). The server keeps only scrypt(passphrase,
# salt); the CA proof is keyed with it, so both sides derive the same key.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
CATALOG_PATH = "/api/v1/catalog"
HEARTBEAT_PATHS: dict[Role, str] = {
    Role.AGENT: "/api/v1/heartbeat/agent",
    Role.PROCESS_SERVER: "/api/v1/heartbeat/process-server",
    Role.MASTER_TARGET: "/api/v1/heartbeat/master-target",
}
# Replica kinds a catalog names (a master target's `storage`): a file on the master target, or an
# Azure page blob (whose connection string a reader finds by its account name).
REPLICA_KINDS = ("file", "pageblob")


@dataclass(frozen=True)
class Registration(Message):
    """`POST REGISTER_PATH`: a component asks for its certificate and token against the vault
    passphrase. With `csr_pem` its key never leaves the machine."""

    NAME: ClassVar[str] = "REGISTER"
    passphrase: str
    name: str
    role: str                               # a Role value
    machine: str | None = None              # an agent: the spec machine it protects
    site: str | None = None
    address: str | None = None              # where it is reached (also in the certificate)
    alt_names: tuple[str, ...] = ()         # more DNS names or IP addresses for the certificate
    csr_pem: str | None = None

    def __post_init__(self) -> None:
        parse_role(self.role)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in super().to_json().items() if v not in (None, [])}


def passphrase_key(passphrase: str, salt: bytes) -> bytes:
    """scrypt(passphrase, salt): what the server stores of the vault passphrase, and the CA proof's key."""
    return hashlib.scrypt(passphrase.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)


def ca_proof(key: bytes, ca_pem: str) -> str:
    """HMAC-SHA256 of the CA certificate under the passphrase key (hex)."""
    return hmac.new(key, ca_pem.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class VaultCa(Message):
    """`GET CA_PATH`: the vault CA and the proof that the server holds the vault passphrase."""

    NAME: ClassVar[str] = "VAULT_CA"
    ca_pem: str
    salt: str                               # hex: the passphrase record's salt
    proof: str                              # hex: ca_proof(passphrase_key(passphrase, salt), ca_pem)

    def verify(self, passphrase: str) -> bool:
        try:
            salt = bytes.fromhex(self.salt)
        except ValueError:
            return False
        return hmac.compare_digest(ca_proof(passphrase_key(passphrase, salt), self.ca_pem), self.proof)


@dataclass(frozen=True)
class RegistrationAnswer(Message):
    NAME: ClassVar[str] = "REGISTERED"
    name: str
    role: str
    token: str                              # `Authorization: Bearer <token>` on every other call
    certificate_pem: str
    ca_pem: str                             # the vault CA: verifies the server and every peer
    private_key_pem: str | None = None      # only when no CSR was sent


@dataclass(frozen=True)
class MasterTargetHealth(Message):
    """A master target's heartbeat body."""

    NAME: ClassVar[str] = "MASTER_TARGET_HEALTH"
    replicas: int = 0                       # disks it holds a replica of
    receiving: int = 0                      # disk streams connected now
    points: int = 0                         # recovery points it retains


@dataclass(frozen=True)
class ReplicaLocation(Message):
    """Where a stream's replica is: enough for a reader elsewhere (failover) to open it."""

    NAME: ClassVar[str] = "REPLICA_LOCATION"
    kind: str                               # one of REPLICA_KINDS
    path: str | None = None                 # file: the replica file on the master target
    account: str | None = None              # pageblob: the storage account
    container: str | None = None            # pageblob
    blob: str | None = None                 # pageblob

    def __post_init__(self) -> None:
        if self.kind not in REPLICA_KINDS:
            raise ProtocolError(f"{self.NAME}: kind {self.kind!r} is not one of {', '.join(REPLICA_KINDS)}")
        if self.kind == "pageblob" and not (self.account and self.container and self.blob):
            raise ProtocolError(f"{self.NAME}: a page blob replica needs account, container and blob")
        if self.kind == "file" and not self.path:
            raise ProtocolError(f"{self.NAME}: a file replica needs its path")


@dataclass(frozen=True)
class CatalogPoint(Message):
    NAME: ClassVar[str] = "CATALOG_POINT"
    point_id: str
    time: float                             # the source's clock at the bookmark (epoch seconds)
    kind: str                               # "crash" or "app"
    snapshot: str                           # the replica's snapshot holding it (page blob snapshot id, file path)
    group_id: str | None = None             # the multi-VM point id, when the group took it together


@dataclass(frozen=True)
class StreamCatalog(Message):
    NAME: ClassVar[str] = "STREAM_CATALOG"
    stream: str                             # stream_name(machine, disk)
    size: int                               # bytes of the disk
    location: ReplicaLocation
    points: tuple[CatalogPoint, ...] = ()   # oldest first
    rpo_seconds: float | None = None        # the newest point's age at the master target


@dataclass(frozen=True)
class CatalogReport(Message):
    """`POST CATALOG_PATH`: everything a master target retains (replaces its previous report)."""

    NAME: ClassVar[str] = "CATALOG"
    streams: tuple[StreamCatalog, ...] = ()


# -- the multi-VM coordinator (hosted by the process server on PS_PORT) and the process server's health
# An agent of a multi-VM group dials its coordinator (agent.toml: `coordinator = "HOST:PS_PORT"`) and
# sends JOIN; the coordinator answers GROUP (and again whenever a member comes or goes). A group
# point is two phases: PAUSE to every member; once all answered PAUSED, MARK (one bookmark id) and
# RESUME; when any did not pause in time, ABORT. Members answer MARKED / RESUMED, or FAILED.
POINT_KINDS = ("crash", "app")


def new_bookmark_id() -> str:
    """A point's id (a bookmark's, a multi-VM point's): sortable and unique, UTC time in
    milliseconds then 8 random hex digits."""
    return f"{time.time_ns() // 1_000_000:013d}-{uuid.uuid4().hex[:8]}"


def _point_id(cls_name: str, value: str) -> None:
    if not value or len(value) > 200:
        raise ProtocolError(f"{cls_name}: point id {value!r}: expected 1 to 200 characters")


@dataclass(frozen=True)
class Join(Message):
    """An agent joins its group at the coordinator: its spec machine name and the group's name."""

    NAME: ClassVar[str] = "JOIN"
    agent: str
    group: str

    def __post_init__(self) -> None:
        if not self.agent or not self.group:
            raise ProtocolError(f"JOIN: agent {self.agent!r} and group {self.group!r} must not be empty")


@dataclass(frozen=True)
class GroupState(Message):
    """The coordinator's view of a group: each member and whether it is connected now."""

    NAME: ClassVar[str] = "GROUP"
    group: str
    members: dict[str, bool]

    @property
    def complete(self) -> bool:
        """Every member connected: the coordinator takes the group's points (the members take none)."""
        return bool(self.members) and all(self.members.values())

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(sorted(m for m, up in self.members.items() if not up))


@dataclass(frozen=True)
class Pause(Message):
    """Phase 1: hold the apply path (an "app" point runs pre-scripts and freezes first); resume by
    yourself after `hold_timeout` seconds without RESUME or ABORT."""

    NAME: ClassVar[str] = "PAUSE"
    point: str
    kind: str
    hold_timeout: float

    def __post_init__(self) -> None:
        _point_id(self.NAME, self.point)
        if self.kind not in POINT_KINDS:
            raise ProtocolError(f"PAUSE: kind {self.kind!r} is not one of {', '.join(POINT_KINDS)}")
        if self.hold_timeout <= 0:
            raise ProtocolError(f"PAUSE: hold_timeout {self.hold_timeout} s must be positive")


@dataclass(frozen=True)
class Mark(Message):
    """Phase 2: insert `bookmark_id` (the group's point id) on every disk, tagged with `group_id`."""

    NAME: ClassVar[str] = "MARK"
    point: str
    bookmark_id: str
    group_id: str

    def __post_init__(self) -> None:
        _point_id(self.NAME, self.point)
        _point_id(self.NAME, self.bookmark_id)


@dataclass(frozen=True)
class PointStep(Message):
    """A step of a group point that carries only its id: PAUSED, MARKED, RESUME, ABORT, RESUMED
    (the frame type says which)."""

    NAME: ClassVar[str] = "POINT"
    point: str

    def __post_init__(self) -> None:
        _point_id(self.NAME, self.point)


@dataclass(frozen=True)
class Failed(Message):
    NAME: ClassVar[str] = "FAILED"
    point: str
    reason: str


@dataclass(frozen=True)
class ProcessServerHealth(Message):
    """A process server's heartbeat body (`ProcessServer.health()`)."""

    NAME: ClassVar[str] = "PROCESS_SERVER_HEALTH"
    name: str
    cache_bytes: int                        # bytes cached (compressed), every disk
    cache_capacity_bytes: int
    cache_free_fraction: float              # 0..1; alerts below 0.30 (warning) and 0.25 (critical)
    cache_level: str                        # "ok", "warning" or "critical"
    backlog_bytes: dict[str, int]           # stream -> bytes cached and not yet applied at the master target
    agents: dict[str, str]                  # stream -> the agent (certificate name) streaming it now
    master_target_reachable: bool           # the last dial of the master target succeeded
    groups: dict[str, bool]                 # multi-VM group coordinated here -> every member connected
    group_problems: dict[str, str] = dataclasses.field(default_factory=dict)  # group -> why no point now
    last_group_points: dict[str, str] = dataclasses.field(default_factory=dict)  # group -> newest point id
    # stream -> the first record this process server lost (dropped as corrupt, or cut off) until the agent
    # resends it or resyncs the disk: no recovery point past it is consistent until then
    resync_from: dict[str, int] = dataclasses.field(default_factory=dict)


# -- control-plane bodies: the agent's health (`Agent.health()`, its heartbeat body) -------------
DISK_MODES = ("tracking", "splitter")   # how the agent captures a disk (agent.toml `mode`)
# A disk's protection state: copying the disk for the first time; streaming (points offered);
# comparing the disk with the replica by block hashes (after a restart or lost records); or
# tracking changed blocks in a bitmap while the process server is away or full.
DISK_STATES = ("initial-sync", "protected", "resync", "bitmap")


@dataclass(frozen=True)
class AgentDiskHealth(Message):
    NAME: ClassVar[str] = "AGENT_DISK_HEALTH"
    stream: str                             # stream_name(machine, disk)
    mode: str                               # one of DISK_MODES
    state: str                              # one of DISK_STATES
    sync_done_bytes: int = 0                # initial sync or resync: bytes compared/copied so far
    sync_total_bytes: int = 0
    sync_rate_bytes_s: float = 0.0
    rpo_seconds: float | None = None        # age of the newest point the process server holds durably
    backlog_bytes: int = 0                  # changes not yet durable at the process server
    connected: bool = False                 # streaming to a process server now
    device: str | None = None               # splitter: the loop device the workload uses
    problem: str = ""                       # why the disk is not protected now ("" when it is)

    def __post_init__(self) -> None:
        if self.mode not in DISK_MODES:
            raise ProtocolError(f"{self.NAME}: mode {self.mode!r} is not one of {', '.join(DISK_MODES)}")
        if self.state not in DISK_STATES:
            raise ProtocolError(f"{self.NAME}: state {self.state!r} is not one of {', '.join(DISK_STATES)}")


@dataclass(frozen=True)
class AgentHealth(Message):
    """An agent's heartbeat body: each protected disk's state, RPO and backlog."""

    NAME: ClassVar[str] = "AGENT_HEALTH"
    name: str                               # the spec machine
    disks: tuple[AgentDiskHealth, ...] = ()
    last_point: str | None = None           # the newest point id the agent took (all its disks)
    group: str | None = None                # multi-VM group, when it is in one
    coordinated: bool = False               # the group's coordinator takes the points now
