"""The configuration server's API bodies (pydantic): what components send and what they get back.

These models are the published OpenAPI schema; the service layer takes them directly.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["agent", "process_server", "master_target", "operator"]
ComponentName = Annotated[str, Field(min_length=1, max_length=120, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]


class Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RegisterRequest(Body):
    """Register a component against the vault passphrase; the answer carries its token and certificate."""

    passphrase: str = Field(min_length=1)
    name: ComponentName
    role: Role
    machine: str | None = Field(default=None, description="agents: the spec machine it protects")
    site: str | None = None
    address: str | None = None
    csr_pem: str | None = Field(default=None, description="a PKCS#10 request; without it a key is generated")


class RegisterResponse(Body):
    name: str
    role: Role
    token: str = Field(description="send as `Authorization: Bearer <token>` on every other call")
    certificate_pem: str
    private_key_pem: str | None
    ca_pem: str


class DiskRpo(Body):
    disk: str
    rpo_seconds: float = Field(ge=0)


class AgentHeartbeat(Body):
    power_state: Literal["on", "off"] = "on"
    disks: list[DiskRpo] = Field(default_factory=list)


class ProcessServerHeartbeat(Body):
    cache_free_fraction: float = Field(ge=0, le=1, description="free share of the cache volume, 0..1")
    backlog_bytes: int = Field(default=0, ge=0)


class MasterTargetHeartbeat(Body):
    pass


Heartbeat = AgentHeartbeat | ProcessServerHeartbeat | MasterTargetHeartbeat


class RecoveryPoint(Body):
    point_id: str = Field(min_length=1)
    time: float = Field(description="seconds since the epoch (UTC)")
    kind: Literal["crash", "app"]
    group_id: str | None = Field(default=None, description="multi-VM consistency point id, if any")
    processed: bool = Field(default=True, description="applied to the replica (not only received)")


class DiskCatalog(Body):
    machine: str
    disk: str
    rpo_seconds: float | None = Field(default=None, ge=0)
    points: list[RecoveryPoint] = Field(default_factory=list)


class CatalogReport(Body):
    """A master target's view: per-disk RPO and the recovery points it retains (the full list)."""

    disks: list[DiskCatalog]


class EventOut(Body):
    id: int
    time: float
    severity: str
    kind: str
    subject: str
    message: str


class Confirmation(Body):
    by: str = Field(default="api", min_length=1, max_length=120)
