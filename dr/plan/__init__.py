"""The capacity planner: from a valid spec to the servers, accounts, quota and bandwidth it needs.

`make_plan(estate)` is a pure function: the same estate always gives the same `Plan` (and
byte-identical JSON). Only machines in a protection group are protected, and only they are sized.
One module per rule:

    config_servers   one per 750 protected volumes (seed), of the profile's size
    process_servers  ASR's scale-out table by churn and machine count; cache vs outage window
    master_targets   16 / 32 data-disk sizes = 15 / 31 disks per OS, fewest by first-fit decreasing
    storage          replica and retention accounts by IOPS (factors in `estate.planning`)
    compute          failover VM sizes from `dr.sizes` (generation-aware), vCPU quota per family and
                     shortfall, warnings for retired or retiring sizes
    bandwidth        Mbps for the RPO thresholds and initial replication hours
    report           text, Markdown and HTML renderings of a plan
"""

from __future__ import annotations

from typing import Any

from dr.model import Estate
from dr.plan.bandwidth import plan_bandwidth
from dr.plan.compute import plan_failover_vms, plan_quota, size_warnings
from dr.plan.config_servers import plan_config_servers
from dr.plan.context import Inputs, Notes
from dr.plan.master_targets import plan_master_targets
from dr.plan.packing import r3
from dr.plan.process_servers import plan_process_servers
from dr.plan.result import (
    Bandwidth,
    ConfigServer,
    FailoverVm,
    Issue,
    MasterTarget,
    Plan,
    ProcessServer,
    Quota,
    ReplicaDisk,
    StorageAccount,
)
from dr.plan.storage import plan_storage

__all__ = [
    "Bandwidth", "ConfigServer", "FailoverVm", "Issue", "MasterTarget", "Plan", "ProcessServer", "Quota",
    "ReplicaDisk", "StorageAccount", "make_plan",
]


def make_plan(estate: Estate) -> Plan:
    """Size the estate. Problems the spec cannot be planned with are in `Plan.errors`, never raised."""
    inputs = Inputs.of(estate)
    notes = Notes()
    config_servers = plan_config_servers(inputs)
    process_servers = plan_process_servers(inputs, notes)
    placements = plan_master_targets(inputs, notes)
    storage = plan_storage(inputs, placements, notes)
    machines = inputs.machines
    master_targets = []
    for placement in placements:
        # Rows as dicts: pydantic-core builds the 30,000 ReplicaDisk models of the benchmark in one
        # validation pass, 20x faster than a Python constructor call each (benchmarks/plan_scale.py).
        disks: list[Any] = []
        for i in placement.machines:
            for d in machines[i].disks:
                label = f"{machines[i].name}/{d.name}"
                account = storage.disk_account.get(label, "")
                disks.append({"disk": label, "iops": r3(d.iops), "storage_account": account})
        master_targets.append(
            MasterTarget(
                name=placement.name,
                os=placement.os,
                size=placement.size.name,
                vcpus=placement.size.vcpus,
                family=placement.size.family,
                protected_disks=placement.protected_disks,
                capacity=placement.capacity,
                machines=[machines[i].name for i in placement.machines],
                disks=disks,
                retention_iops=storage.retention_iops.get(placement.name, 0.0),
                retention_account=storage.retention_account.get(placement.name, ""),
                reasons=list(placement.reasons),
            )
        )
    failover_vms = plan_failover_vms(inputs, notes)
    quota = plan_quota(inputs, config_servers, placements, failover_vms, notes)
    size_warnings(inputs, config_servers, placements, failover_vms, notes)
    bandwidth = plan_bandwidth(inputs, notes)
    return Plan(
        estate=estate.estate,
        support_profile=estate.support_profile,
        protected_machines=len(machines),
        protected_disks=sum(len(m.disks) for m in machines),
        source_iops=r3(sum(d.iops for m in machines for d in m.disks)),
        config_servers=config_servers,
        process_servers=process_servers,
        master_targets=master_targets,
        storage_accounts=storage.accounts,
        failover_vms=failover_vms,
        quota=quota,
        bandwidth=bandwidth,
        errors=notes.errors,
        warnings=notes.warnings,
    )
