"""The DR spec: what a user writes in `dr.yaml` (or builds in Python), as frozen pydantic models.

Everything else in the project reads an `Estate`. The models check shape and types only; the support
matrix (what Azure Site Recovery can protect) is applied by `dr.validate`, so that one run reports
every problem at once, each at its file:line:col.

Python DSL: the same classes compose an estate in code::

    from dr import Estate, Azure, Network, Site, Machine, Disk, ProtectionGroup, Policy
    estate = Estate(estate="lab", azure=Azure(...), sites=[...], machines=[...])
"""

from __future__ import annotations

import ipaddress
import typing
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from dr.duration import Duration


class Spec(BaseModel):
    """Base of every spec model: immutable, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


def _number_to_text(value: Any) -> Any:
    # `version: 5.5` in YAML is a float; the spec means the text "5.5".
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


Name = Annotated[str, StringConstraints(min_length=1, max_length=80, strip_whitespace=True)]
Text = Annotated[str, BeforeValidator(_number_to_text), StringConstraints(min_length=1)]
Version = Annotated[str, BeforeValidator(_number_to_text), StringConstraints(min_length=1)]


def _ip_network(value: Any) -> str:
    try:
        return str(ipaddress.ip_network(str(value), strict=True))
    except ValueError as err:
        raise ValueError(f"expected an address prefix such as 10.50.0.0/16, found {value!r} ({err})") from None


Prefix = Annotated[str, BeforeValidator(_ip_network), Field(json_schema_extra={"examples": ["10.50.0.0/16"]})]

SupportProfile = Literal["asr-2015", "asr-2023", "azure-2026"]

# The profile of a spec that names none, and of `dr discover --profile`: the current one, because the
# others' sizes cannot be deployed today (A-series retired 2024-08-31, D-series retiring 2028-05-01:
# dr/data/vm_sizes.yaml, with sources). asr-2015 keeps the seed's rules for a spec that names it.
DEFAULT_SUPPORT_PROFILE: SupportProfile = "azure-2026"


# ---------------------------------------------------------------------------------------------
# Credentials: only ever references, never literal secrets.


class EnvRef(Spec):
    """A value read from an environment variable when it is needed: `{env: VCENTER_PASSWORD}`."""

    env: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class FileRef(Spec):
    """A value read from a file when it is needed (first line, stripped): `{file: /etc/dr/vcenter.pw}`."""

    file: Annotated[str, StringConstraints(min_length=1)]


def _reference(value: Any) -> Any:
    if isinstance(value, str):
        raise ValueError(
            "a credential is never written literally: write {env: VARIABLE} or {file: path} instead"
        )
    if isinstance(value, dict) and "env" in value and "file" in value:
        raise ValueError("a reference is either {env: VARIABLE} or {file: path}, not both")
    return value


SecretRef = Annotated[EnvRef | FileRef, BeforeValidator(_reference)]
# The subscription id is not a secret, but it differs per environment: a reference or a literal GUID.
SubscriptionRef = Annotated[
    EnvRef
    | FileRef
    | Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")],
    Field(union_mode="left_to_right"),
]


# ---------------------------------------------------------------------------------------------
# The Azure target.


class Network(Spec):
    """The recovery network in Azure; `existing: true` refers to a VNet that is already there."""

    vnet: Name = Field(description="name of the recovery VNet")
    address_space: Prefix = Field(description="its address space, e.g. 10.50.0.0/16")
    subnet: Name = Field(description="the subnet recovery VMs get their NICs in")
    subnet_prefix: Prefix = Field(description="its prefix, inside address_space")
    existing: bool = Field(default=False, description="refer to a VNet that exists instead of creating it")
    test_vnet: Name | None = Field(
        default=None,
        description="isolated VNet for test failovers (same address space); default '<vnet>-test'",
    )

    @model_validator(mode="after")
    def _subnet_inside(self) -> Network:
        space = ipaddress.ip_network(self.address_space)
        subnet = ipaddress.ip_network(self.subnet_prefix)
        if subnet.version != space.version or not subnet.subnet_of(space):  # type: ignore[arg-type]
            raise ValueError(f"subnet_prefix {subnet} is not inside address_space {space}")
        return self


class Quota(Spec):
    vcpus: Annotated[int, Field(ge=0, description="the regional vCPU quota the subscription has today")]


Redundancy = Literal["LRS", "ZRS", "GRS", "RA-GRS", "GZRS", "RA-GZRS"]


class Azure(Spec):
    subscription: SubscriptionRef = Field(description="subscription id: {env: VAR}, {file: path} or the GUID")
    region: Name = Field(description="Azure region every component goes to, e.g. westeurope")
    resource_group: Name = Field(description="resource group of the always-on DR components")
    connectivity: Literal["internet", "vpn", "expressroute"] = Field(
        description="how the primary site reaches Azure (decides what the network security groups open)"
    )
    network: Network
    storage_redundancy: Redundancy = Field(default="GRS", description="replica storage; must be geo-redundant")
    quota: Quota
    vault_region: Name | None = Field(default=None, description="region of the Recovery Services vault")
    storage_region: Name | None = Field(default=None, description="region of the replica storage accounts")
    on_premises_prefixes: list[Prefix] = Field(
        default_factory=list,
        description="address prefixes of the primary site, reachable over vpn/expressroute",
    )


# ---------------------------------------------------------------------------------------------
# Source sites.


class VCenter(Spec):
    """A vCenter Server the site's VMs are discovered through."""

    host: Name = Field(description="host name or address")
    port: Annotated[int, Field(ge=1, le=65535)] = 443
    version: Version = Field(description='vCenter version, quoted: "5.5"')
    user: Name = Field(description="a read-only discovery account")
    password: SecretRef = Field(description="{env: VAR} or {file: path}; never the password itself")
    insecure: bool = Field(default=False, description="skip TLS certificate checks (lab only)")


class EsxiHost(Spec):
    """A standalone ESXi host, discovered without vCenter."""

    host: Name
    port: Annotated[int, Field(ge=1, le=65535)] = 443
    version: Version
    user: Name
    password: SecretRef
    insecure: bool = False


class ProcessServer(Spec):
    """An on-premises process server. Size fields left out are filled in by `dr plan`."""

    name: Name
    address: Name = Field(description="address the agents dial")
    os: Text = Field(description="operating system, e.g. Windows Server 2012 R2")
    vcpus: Annotated[int, Field(ge=1)] | None = Field(default=None, description="declared size, checked by dr plan")
    memory_gb: Annotated[float, Field(gt=0)] | None = Field(default=None, description="declared memory, GB")
    cache_gb: Annotated[float, Field(gt=0)] | None = Field(default=None, description="declared cache disk, GB")
    public_address: Name | None = Field(
        default=None, description="address the process server reaches Azure from (connectivity: internet)"
    )


class Site(Spec):
    """A primary site: where source machines run, how they are reached, and its process servers."""

    name: Name
    vcenter: VCenter | None = Field(default=None, description="the vCenter of this site's VMware machines")
    esxi_hosts: list[EsxiHost] = Field(default_factory=list, description="standalone ESXi hosts (no vCenter)")
    process_servers: list[ProcessServer] = Field(
        default_factory=list, description="declared process servers; dr plan adds missing ones"
    )
    bandwidth_mbps: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="WAN bandwidth available to replication, megabits per second"
    )
    outage_window: Duration | None = Field(
        default=None, description="how long the process server cache must ride out a link outage (default 8h)"
    )


# ---------------------------------------------------------------------------------------------
# Machines.


class Disk(Spec):
    """A disk of a source machine (ASR replicates disks: a disk is a "volume" in sizing)."""

    name: Name
    size_gb: Annotated[float, Field(gt=0, description="provisioned size, GB")]
    iops: Annotated[float, Field(ge=0, description="peak write IOPS (profiled p95, or estimated)")] = 0
    churn_gb_per_day: Annotated[float, Field(ge=0, description="data written per day, GB")] = 0
    used_gb: Annotated[float, Field(ge=0, description="allocated data, for initial replication")] | None = None
    device: Text | None = Field(default=None, description="device name on the source, e.g. /dev/sdb")
    mount_points: list[Text] = Field(default_factory=list)
    file_system: Text | None = None
    controller: Text | None = None
    datastore: Text | None = None
    thin: bool | None = None
    label: Text | None = None


class VmwareFacts(Spec):
    """What discovery learnt of a VMware VM (written by `dr discover vcenter`)."""

    instance_uuid: Text | None = None
    moid: Text | None = None
    datacenter: Text | None = None
    cluster: Text | None = None
    host: Text | None = None
    vcenter: Text | None = None
    vcenter_version: Version | None = None
    guest_id: Text | None = None
    guest_family: Text | None = None
    guest_full_name: Text | None = None
    networks: list[Text] = Field(default_factory=list)
    ip_addresses: list[Text] = Field(default_factory=list)


class Replicability(Spec):
    """Discovery's verdict on one machine: the validator's rules applied to discovered facts."""

    replicable: bool
    reasons: list[Text] = Field(default_factory=list)


class Machine(Spec):
    """A source machine: a VMware VM or a physical server. Protected when a protection group names it."""

    name: Name = Field(description="English (ASCII) name, unique in the estate")
    site: Name = Field(description="the site it runs at")
    kind: Literal["vmware", "physical"]
    os: Text = Field(description="e.g. 'Windows Server 2012 R2', 'CentOS 6.5', 'SLES 11 SP3'")
    arch: Literal["x86_64", "x86"] = "x86_64"
    vcpus: Annotated[int, Field(ge=1)]
    memory_gb: Annotated[float, Field(gt=0)]
    nics: Annotated[int, Field(ge=1)] = 1
    disks: Annotated[list[Disk], Field(min_length=1)]
    address: Name | None = Field(default=None, description="IP or host name (required for physical servers)")
    firmware: Literal["bios", "uefi"] = "bios"
    secure_boot: bool = False
    bitlocker: bool = False
    dynamic_disks: bool = False
    clustered: bool = Field(default=False, description="a cluster node (cannot be protected)")
    power_state: Literal["on", "off"] = "on"
    tools: Literal["running", "not_running", "not_installed"] | None = Field(
        default=None, description="VMware tools state (VMware only; unset means running)"
    )
    file_systems: list[Text] = Field(default_factory=list)
    volume_manager: Text | None = None
    multipath: Text | None = None
    controller: Text | None = None
    azure_size: Name | None = Field(default=None, description="override the planner's failover VM size")
    tags: dict[str, str] = Field(default_factory=dict)
    vmware: VmwareFacts | None = None
    discovery: Replicability | None = None

    @property
    def tools_state(self) -> str | None:
        if self.kind != "vmware":
            return None
        return self.tools or "running"


# ---------------------------------------------------------------------------------------------
# Protection and recovery.


class Policy(Spec):
    """A replication policy (ASR's defaults where the spec is silent)."""

    multi_vm_consistency: bool = False
    rpo_threshold: Duration = Field(default=timedelta(minutes=15), description="alert when RPO exceeds this")
    retention: Duration = Field(default=timedelta(hours=24), description="how far back recovery points go")
    app_consistent_every: Duration | None = Field(default=timedelta(hours=1))
    crash_consistent_every: Duration = Field(default=timedelta(minutes=5))


class ProtectionGroup(Spec):
    """Machines replicated under one policy; with multi-VM consistency they share recovery points."""

    name: Name
    members: Annotated[list[Name], Field(min_length=1)] = Field(description="machine names")
    policy: Policy = Field(default_factory=Policy)


class Action(Spec):
    """One step before or after a recovery-plan group: exactly one of script, runbook or manual."""

    script: Text | None = Field(default=None, description="path of a script run on the runner")
    runbook: Name | None = Field(default=None, description="a named runbook, given the plan context")
    manual: Text | None = Field(default=None, description="a prompt; the plan waits until confirmed")
    timeout: Duration = Field(default=timedelta(seconds=600), description="ASR's default: 600 s")

    @model_validator(mode="before")
    @classmethod
    def _one_kind(cls, data: Any) -> Any:
        if isinstance(data, dict):
            kinds = [k for k in ("script", "runbook", "manual") if k in data]
            if len(kinds) != 1:
                found = ", ".join(kinds) if kinds else "none of them"
                raise ValueError(f"an action is exactly one of script, runbook or manual; found {found}")
        return data

    @property
    def kind(self) -> Literal["script", "runbook", "manual"]:
        if self.script is not None:
            return "script"
        if self.runbook is not None:
            return "runbook"
        return "manual"


class PlanGroup(Spec):
    """One step of a recovery plan: its machines start together, after the previous group."""

    name: Name
    machines: Annotated[list[Name], Field(min_length=1)] = Field(description="protected machines, started in parallel")
    before: list[Action] = Field(default_factory=list, description="actions before the group's machines start")
    after: list[Action] = Field(default_factory=list, description="actions after they are up")


class TrafficManager(Spec):
    """A Traffic Manager profile switched at failover (priority routing: on-premises 1, Azure 2)."""

    profile: Name = Field(description="profile name (its DNS name prefix)")
    on_premises_endpoint: Name = Field(description="DNS name of the primary site's endpoint")
    azure_endpoint: Name | None = Field(default=None, description="the Azure endpoint (default: the recovery VM)")
    ttl_seconds: Annotated[int, Field(ge=0)] = 30


class RecoveryPlan(Spec):
    """How an application fails over: groups in order, actions between them, then Traffic Manager."""

    name: Name
    groups: Annotated[list[PlanGroup], Field(min_length=1)] = Field(description="in start order")
    traffic_manager: TrafficManager | None = None
    failback: bool = Field(default=False, description="reprotect and fail back after failover (vSphere only)")


Event = Literal[
    "rpo_missed", "machine_off", "cache_warning", "cache_critical", "heartbeat_lost",
    "failover_started", "failover_succeeded", "failover_failed", "health_critical",
]
ALL_EVENTS: tuple[Event, ...] = typing.get_args(Event)

Email = Annotated[str, StringConstraints(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]


class Smtp(Spec):
    host: Name
    port: Annotated[int, Field(ge=1, le=65535)] = 25
    sender: Email = Field(alias="from")
    user: Name | None = None
    password: SecretRef | None = None
    starttls: bool = False


class Notifications(Spec):
    """Who hears of alerts and failovers."""

    email: list[Email] = Field(default_factory=list, description="recipients")
    events: list[Event] = Field(default_factory=lambda: list(ALL_EVENTS), description="which events (default all)")
    webhook: Name | None = Field(default=None, description="URL that receives each event as JSON")
    smtp: Smtp | None = None


class Planning(Spec):
    """Planner factors. Every default is the seed's figure unless its description says otherwise."""

    replica_io_factor: Annotated[float, Field(gt=0)] = Field(
        default=2.0, description="IOs on the replica disk per source IO (seed)"
    )
    retention_io_factor: Annotated[float, Field(ge=0)] = Field(
        default=0.5, description="IOs on the retention disk per source IO (seed)"
    )
    replica_account_source_iops: Annotated[int, Field(ge=8000, le=10000)] = Field(
        default=8000, description="source IOPS one replica storage account carries (seed: 8,000-10,000)"
    )
    account_max_iops: Annotated[int, Field(gt=0)] = Field(
        default=20000, description="total IOPS limit of one standard storage account (Azure, 2015)"
    )
    max_storage_accounts: Annotated[int, Field(gt=0)] = Field(
        default=100, description="storage accounts per subscription (Azure, 2015)"
    )
    compression_ratio: Annotated[float, Field(ge=1)] = Field(
        default=2.0, description="churn bytes per byte on the wire after compression"
    )
    outage_window: Duration = Field(
        default=timedelta(hours=8), description="link outage the process server cache must absorb"
    )
    percentile: Annotated[int, Field(ge=50, le=100)] = Field(
        default=95, description="percentile of profiled IOPS and churn the planner sizes for"
    )


class Estate(Spec):
    """A whole DR estate: the Azure target, the source sites and machines, protection and recovery."""

    estate: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,39}$")] = Field(
        description="estate name: lower-case letters, digits and dashes (it prefixes Azure resource names)"
    )
    support_profile: SupportProfile = Field(
        default=DEFAULT_SUPPORT_PROFILE,
        description="support matrix and VM sizes: azure-2026 (the default: current, deployable today), "
        "asr-2023, or asr-2015 (the seed's rules; its sizes are retired, name it to keep them)",
    )
    include: list[Text] = Field(
        default_factory=list, description="other YAML files (e.g. discovered inventories) merged into this one"
    )
    azure: Azure = Field(description="the Azure target")
    sites: list[Site] = Field(default_factory=list, description="primary sites")
    machines: list[Machine] = Field(default_factory=list, description="source machines (inventory)")
    protection_groups: list[ProtectionGroup] = Field(default_factory=list, description="what is protected, how")
    recovery_plans: list[RecoveryPlan] = Field(default_factory=list, description="how it fails over")
    notifications: Notifications = Field(default_factory=Notifications)
    planning: Planning = Field(default_factory=Planning, description="planner factors (seed defaults)")

    # Lookups used across the project (derived, never stored).
    def machine(self, name: str) -> Machine:
        for machine in self.machines:
            if machine.name == name:
                return machine
        raise KeyError(name)

    def site(self, name: str) -> Site:
        for site in self.sites:
            if site.name == name:
                return site
        raise KeyError(name)

    def group_of(self, machine: str) -> ProtectionGroup | None:
        for group in self.protection_groups:
            if machine in group.members:
                return group
        return None

    @property
    def protected_machines(self) -> list[Machine]:
        """Machines in a protection group, in spec order (the ones the planner sizes)."""
        members = {name for group in self.protection_groups for name in group.members}
        return [m for m in self.machines if m.name in members]
