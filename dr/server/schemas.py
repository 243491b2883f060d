"""The configuration server's API bodies (pydantic): what components send and what they get back.

These models are the published OpenAPI schema; the service layer takes them directly.
"""

from __future__ import annotations

from typing import Annotated, Literal

from dr_agent.contract import DISK_MODES, DISK_STATES, REPLICA_KINDS, SERVICE_ROLES, STREAM_NAME, Role
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Roles spelt once (dr_agent.contract.Role); who may register: the services and operators.
REGISTERING_ROLES = (*SERVICE_ROLES, Role.OPERATOR)
ComponentName = Annotated[str, Field(min_length=1, max_length=120, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
StreamName = Annotated[str, Field(min_length=1, max_length=200, pattern=STREAM_NAME.pattern)]
HostName = Annotated[str, Field(min_length=1, max_length=253)]
PointId = Annotated[str, Field(min_length=1, max_length=200)]
# Largest lists a component sends (our choice): disks of a machine, streams of a master target, and
# recovery points of one stream (ASR keeps at most 72 h of points; a point every 5 minutes is 864).
MAX_DISKS = 64
MAX_STREAMS = 4096
MAX_POINTS = 20_000

# Bounds on every number from outside (one validation layer: these schemas; the handlers trust them).
# No NaN or infinity anywhere (`allow_inf_nan=False` below). Byte counts up to 2**53 (8 PiB: exact as
# a float, and within SQLite's 64-bit INTEGER); durations up to 10 years; times between the epoch and
# the year 2200 (7,258,118,400 s); counts up to 2**31.
MAX_BYTES = 2**53
MAX_DURATION_S = 10 * 365 * 86_400
MAX_EPOCH_S = 7_258_118_400
MAX_COUNT = 2**31
# A whole catalog report holds at most this many points (our choice: 4096 streams at 24 h of points every
# 5 minutes would be 1.2 million; the body limit of the catalog path, dr.server.limits, bounds it anyway).
MAX_CATALOG_POINTS = 500_000
# Small maps a process server sends (multi-VM groups it coordinates).
MAX_GROUPS = 256
Bytes = Annotated[int, Field(ge=0, le=MAX_BYTES)]
Rate = Annotated[float, Field(ge=0, le=MAX_BYTES)]
Seconds = Annotated[float, Field(ge=0, le=MAX_DURATION_S)]
EpochSeconds = Annotated[float, Field(ge=0, le=MAX_EPOCH_S)]
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
# A stream's record number (the data path's frame sequence, an unsigned 64-bit field on the wire).
RecordNumber = Annotated[int, Field(ge=0, le=2**64 - 1)]
GroupName = Annotated[str, Field(min_length=1, max_length=120)]
Problem = Annotated[str, Field(max_length=1000)]


class Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class Report(BaseModel):
    """A body a service sends on its own (dr_agent.contract's health and catalog messages): keys a
    newer service adds are ignored, as the contract's own parser ignores them."""

    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)


class RegisterRequest(Body):
    """Register a component against the vault passphrase; the answer carries its token and certificate
    (dr_agent.contract.Registration)."""

    passphrase: str = Field(min_length=1, max_length=1024)
    name: ComponentName
    role: Role
    machine: str | None = Field(default=None, max_length=120, description="agents: the spec machine it protects")
    site: str | None = Field(default=None, max_length=120)
    address: HostName | None = Field(default=None, description="where it is reached (also in its certificate)")
    alt_names: list[HostName] = Field(default_factory=list, max_length=16,
                                      description="more DNS names or IP addresses for its certificate")
    csr_pem: str | None = Field(default=None, max_length=16_384,
                                description="a PKCS#10 request; without it a key is generated")

    @field_validator("role")
    @classmethod
    def _registers(cls, role: Role) -> Role:
        if role not in REGISTERING_ROLES:
            known = ", ".join(r.value for r in REGISTERING_ROLES)
            raise ValueError(f"a {role.value} does not register; one of {known}")
        return role


class RegisterResponse(Body):
    """dr_agent.contract.RegistrationAnswer."""

    name: str
    role: Role
    token: str = Field(description="send as `Authorization: Bearer <token>` on every other call")
    certificate_pem: str
    private_key_pem: str | None
    ca_pem: str


class AgentDisk(Report):
    """One protected disk in an agent's heartbeat (dr_agent.contract.AgentDiskHealth)."""

    stream: StreamName
    mode: Literal[DISK_MODES] = "splitter"  # type: ignore[valid-type]
    state: Literal[DISK_STATES] = "protected"  # type: ignore[valid-type]
    sync_done_bytes: Bytes = 0
    sync_total_bytes: Bytes = 0
    sync_rate_bytes_s: Rate = 0
    rpo_seconds: Seconds | None = None
    backlog_bytes: Bytes = 0
    connected: bool = False
    problem: str = Field(default="", max_length=1000)


class AgentHeartbeat(Report):
    """An agent's heartbeat (dr_agent.contract.AgentHealth): each disk's state, RPO and backlog."""

    power_state: Literal["on", "off"] = "on"
    disks: list[AgentDisk] = Field(default_factory=list, max_length=MAX_DISKS)
    last_point: PointId | None = None
    group: GroupName | None = None
    coordinated: bool = False


class ProcessServerHeartbeat(Report):
    """A process server's heartbeat (dr_agent.contract.ProcessServerHealth)."""

    cache_free_fraction: float = Field(ge=0, le=1, description="free share of the cache volume, 0..1")
    cache_bytes: Bytes = 0
    cache_capacity_bytes: Bytes = 0
    backlog_bytes: Annotated[dict[StreamName, Bytes], Field(max_length=MAX_STREAMS)] | Bytes = Field(
        default=0, description="bytes cached and not yet applied at the master target (per stream, or in all)")
    master_target_reachable: bool = True
    groups: dict[GroupName, bool] = Field(default_factory=dict, max_length=MAX_GROUPS,
                                          description="multi-VM groups coordinated here")
    group_problems: dict[GroupName, Problem] = Field(default_factory=dict, max_length=MAX_GROUPS)
    resync_from: dict[StreamName, RecordNumber] = Field(
        default_factory=dict, max_length=MAX_STREAMS,
        description="stream -> the first record this process server lost until the agent resends or resyncs")

    @property
    def backlog_total(self) -> int:
        return sum(self.backlog_bytes.values()) if isinstance(self.backlog_bytes, dict) else self.backlog_bytes


class MasterTargetHeartbeat(Report):
    """A master target's heartbeat (dr_agent.contract.MasterTargetHealth)."""

    replicas: Count = 0
    receiving: Count = 0
    points: Count = 0


Heartbeat = AgentHeartbeat | ProcessServerHeartbeat | MasterTargetHeartbeat


class RecoveryPoint(Report):
    """One recovery point of a replica (dr_agent.contract.CatalogPoint)."""

    point_id: PointId
    time: EpochSeconds = Field(description="seconds since the epoch (UTC), the source's clock")
    kind: Literal["crash", "app"]
    group_id: str | None = Field(default=None, max_length=200, description="multi-VM consistency point id, if any")
    snapshot: str | None = Field(default=None, max_length=1024,
                                 description="the replica's snapshot holding the point (page blob snapshot id, file)")
    processed: bool = Field(default=True, description="applied to the replica (not only received)")


class ReplicaLocation(Report):
    """Where a stream's replica is (dr_agent.contract.ReplicaLocation)."""

    kind: Literal[REPLICA_KINDS]  # type: ignore[valid-type]
    path: str | None = Field(default=None, max_length=4096)
    account: str | None = Field(default=None, max_length=64)
    container: str | None = Field(default=None, max_length=63)
    blob: str | None = Field(default=None, max_length=1024)

    @model_validator(mode="after")
    def _complete(self) -> ReplicaLocation:
        if self.kind == "pageblob" and not (self.account and self.container and self.blob):
            raise ValueError("a page blob replica needs account, container and blob")
        if self.kind == "file" and not self.path:
            raise ValueError("a file replica needs its path")
        return self


class StreamCatalog(Report):
    """One replicated disk stream of a master target (dr_agent.contract.StreamCatalog)."""

    stream: StreamName
    size: Bytes = Field(gt=0, description="bytes of the disk")
    location: ReplicaLocation
    points: list[RecoveryPoint] = Field(default_factory=list, max_length=MAX_POINTS)
    rpo_seconds: Seconds | None = None


class CatalogReport(Report):
    """A master target's catalog (dr_agent.contract.CatalogReport): every stream it replicates, where
    its replica is, and the recovery points it retains (the full list; replaces its previous report)."""

    streams: list[StreamCatalog] = Field(default_factory=list, max_length=MAX_STREAMS)

    @model_validator(mode="after")
    def _bounded(self) -> CatalogReport:
        total = sum(len(s.points) for s in self.streams)
        if total > MAX_CATALOG_POINTS:
            raise ValueError(f"{total} recovery points in one report; at most {MAX_CATALOG_POINTS}")
        return self


class EventOut(Body):
    id: int
    time: float
    severity: str
    kind: str
    subject: str
    message: str


class Confirmation(Body):
    by: str = Field(default="api", min_length=1, max_length=120)
