"""What `dr plan` decides, as frozen pydantic models: the JSON contract of `dr plan --format json`.

`Plan.model_dump(mode="json")` is the contract other parts of the project read (the Pulumi stack
declares resources from it; `dr diff` compares two of them). The keys of issue 3 keep their
meaning; every server and account adds `reasons`: the rule and the numbers that put it there.
Numbers are rounded to 3 decimals so that the same spec always gives byte-identical JSON.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class Out(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Issue(Out):
    """An error or warning of the plan: the dotted spec path it concerns, and what to do."""

    path: str
    message: str


class ConfigServer(Out):
    name: str
    size: str
    vcpus: int
    family: str
    volumes: int
    capacity: int  # protected volumes one configuration server takes (seed: 750)
    machines: list[str]
    reasons: list[str]


class ProcessServer(Out):
    name: str
    site: str
    declared: bool  # written in the spec (checked) rather than added by the planner
    vcpus: int
    memory_gb: float
    cache_gb: float
    churn_gb_per_day: float
    machines: list[str]
    max_churn_gb_per_day: float  # what its size carries in ASR's scale-out table
    max_machines: int
    cache_needed_gb: float  # the churn of the outage window
    outage_window_hours: float
    reasons: list[str]


class ReplicaDisk(Out):
    disk: str  # "machine/disk"
    iops: float  # source IOPS
    storage_account: str


class MasterTarget(Out):
    name: str
    os: Literal["windows", "linux"]
    size: str
    vcpus: int
    family: str
    protected_disks: int
    capacity: int  # source disks it can protect: the size's data disks minus one for retention
    machines: list[str]
    disks: list[ReplicaDisk]
    retention_iops: float  # IOs per second on its retention disk
    retention_account: str  # where its OS and retention disks live
    reasons: list[str]


class StorageAccount(Out):
    name: str  # a valid Azure storage account name: 3-24 lower-case letters and digits
    purpose: Literal["replica", "retention"]
    redundancy: str
    source_iops: float  # source IOPS whose IOs land here
    target_iops: float  # IOPS the account carries (factors of `planning` applied)
    max_iops: int  # the account's IOPS limit
    disks: list[str]  # "machine/disk" for replicas, "<master target>/os" and "/retention" for retention
    reasons: list[str]


class FailoverVm(Out):
    machine: str
    size: str
    vcpus: int
    memory_gb: float
    family: str
    overridden: bool  # the spec's `azure_size` chose it
    reasons: list[str]


class Quota(Out):
    vcpus_by_family: dict[str, int]
    total_vcpus: int
    declared_vcpus: int
    shortfall_vcpus: int
    always_on_vcpus: int  # configuration servers and master targets, running all the time
    failover_vcpus: int  # the failover VMs, running after a failover
    reasons: list[str]


class GroupBandwidth(Out):
    group: str
    rpo_threshold_minutes: float
    churn_gb_per_day: float
    mbps: float
    rpo_at_risk: bool


class Bandwidth(Out):
    site: str
    mbps_for_rpo: float
    declared_mbps: float | None
    churn_gb_per_day: float
    used_gb: float
    initial_replication_hours: float | None
    rpo_at_risk: bool
    groups: list[GroupBandwidth]
    reasons: list[str]


class Plan(Out):
    estate: str
    support_profile: str
    protected_machines: int
    protected_disks: int
    source_iops: float
    config_servers: list[ConfigServer]
    process_servers: list[ProcessServer]
    master_targets: list[MasterTarget]
    storage_accounts: list[StorageAccount]
    failover_vms: list[FailoverVm]
    quota: Quota
    bandwidth: list[Bandwidth]
    errors: list[Issue]
    warnings: list[Issue]

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def quota_exceeded(self) -> bool:
        return self.quota.total_vcpus > self.quota.declared_vcpus

    def to_json(self) -> str:
        """The canonical JSON text (what `dr plan --format json` prints)."""
        return self.model_dump_json(indent=2)
