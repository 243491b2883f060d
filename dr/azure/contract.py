"""The plan as the stack reads it: the JSON contract of `dr plan --format json` (issue 3), typed.

The stack never sizes anything: it reads the planner's decisions through this view. Reading the
contract (not the planner's Python classes) keeps the stack stable while the planner adds keys.
Pulumi-free: the data path and `dr diff` import it without pulling pulumi in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from dr.errors import DrError


class PlanUnusable(DrError):
    """The plan cannot be declared: it has errors, or a key of the contract is missing."""

    exit_code = 1


@dataclass(frozen=True)
class ConfigServer:
    name: str
    size: str
    volumes: int


@dataclass(frozen=True)
class MasterTarget:
    name: str
    os: Literal["windows", "linux"]
    size: str
    protected_disks: int
    capacity: int
    machines: tuple[str, ...]


@dataclass(frozen=True)
class StorageAccount:
    name: str
    purpose: Literal["replica", "retention"]
    source_iops: float
    target_iops: float
    disks: tuple[str, ...]  # "machine/disk"; a retention account lists "<mts>/os" and "<mts>/retention"


@dataclass(frozen=True)
class FailoverVm:
    machine: str
    size: str
    vcpus: int
    family: str


@dataclass(frozen=True)
class StackPlan:
    config_servers: tuple[ConfigServer, ...]
    master_targets: tuple[MasterTarget, ...]
    storage_accounts: tuple[StorageAccount, ...]
    failover_vms: tuple[FailoverVm, ...]
    errors: tuple[str, ...] = ()

    # Lookups (derived, never stored).
    def failover_vm(self, machine: str) -> FailoverVm:
        for vm in self.failover_vms:
            if vm.machine == machine:
                return vm
        raise PlanUnusable(f"the plan has no failover size for machine {machine!r}; run `dr plan` to see why")

    def account_of_disk(self, machine: str, disk: str) -> StorageAccount:
        key = f"{machine}/{disk}"
        for account in self.storage_accounts:
            if account.purpose == "replica" and key in account.disks:
                return account
        raise PlanUnusable(f"the plan puts disk {key!r} in no replica storage account; run `dr plan` to see why")

    def master_target_of(self, machine: str) -> MasterTarget:
        for mts in self.master_targets:
            if machine in mts.machines:
                return mts
        raise PlanUnusable(f"the plan puts machine {machine!r} on no master target; run `dr plan` to see why")

    def retention_account_of(self, mts: str) -> StorageAccount | None:
        """The retention account holding `<mts>/...`, else the first retention account (shared)."""
        retention = [a for a in self.storage_accounts if a.purpose == "retention"]
        for account in retention:
            if any(d.split("/", 1)[0] == mts for d in account.disks):
                return account
        return retention[0] if retention else None


def _need(data: Mapping[str, Any], key: str, where: str) -> Any:
    try:
        return data[key]
    except (KeyError, TypeError):
        raise PlanUnusable(
            f"the plan's {where} has no {key!r}: expected the `dr plan --format json` contract"
        ) from None


def from_contract(data: Mapping[str, Any]) -> StackPlan:
    """Read the plan's JSON (a dict); refuse a plan with errors, since nothing could be declared right."""
    errors = tuple(
        f"{e.get('path', '')}: {e.get('message', '')}" if isinstance(e, Mapping) else str(e)
        for e in data.get("errors", []) or []
    )
    if errors:
        raise PlanUnusable(
            f"the plan has {len(errors)} error(s), first: {errors[0]}; fix the spec until `dr plan` exits 0"
        )
    return StackPlan(
        config_servers=tuple(
            ConfigServer(
                name=_need(c, "name", "config_servers"),
                size=_need(c, "size", "config_servers"),
                volumes=int(c.get("volumes", 0)),
            )
            for c in _need(data, "config_servers", "top level")
        ),
        master_targets=tuple(
            MasterTarget(
                name=_need(m, "name", "master_targets"),
                os="windows" if str(_need(m, "os", "master_targets")).lower() == "windows" else "linux",
                size=_need(m, "size", "master_targets"),
                protected_disks=int(m.get("protected_disks", 0)),
                capacity=int(m.get("capacity", 0)),
                machines=tuple(_need(m, "machines", "master_targets")),
            )
            for m in _need(data, "master_targets", "top level")
        ),
        storage_accounts=tuple(
            StorageAccount(
                name=_need(a, "name", "storage_accounts"),
                purpose="retention" if _need(a, "purpose", "storage_accounts") == "retention" else "replica",
                source_iops=float(a.get("source_iops", 0)),
                target_iops=float(a.get("target_iops", 0)),
                disks=tuple(a.get("disks", [])),
            )
            for a in _need(data, "storage_accounts", "top level")
        ),
        failover_vms=tuple(
            FailoverVm(
                machine=_need(v, "machine", "failover_vms"),
                size=_need(v, "size", "failover_vms"),
                vcpus=int(v.get("vcpus", 0)),
                family=str(v.get("family", "")),
            )
            for v in _need(data, "failover_vms", "top level")
        ),
    )


def plan_of(estate: Any) -> StackPlan:
    """Run the planner on a valid estate and read its contract."""
    try:
        from dr.plan import make_plan  # the planner (issue 3)
    except ImportError:
        raise PlanUnusable(
            "the planner (dr.plan.make_plan) is not installed in this checkout; "
            "pass a plan JSON with --plan-json, or update dr-as-code"
        ) from None
    plan = make_plan(estate)
    data: Mapping[str, Any] = plan.model_dump(mode="json")
    return from_contract(data)
