"""Properties of every plan, over random estates (hypothesis)."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dr.model import Estate
from dr.plan import make_plan
from tests.plan.conftest import estate

EPS = 1e-6


@st.composite
def estates(draw: st.DrawFn) -> Estate:
    count = draw(st.integers(min_value=0, max_value=30))
    machines: list[dict[str, Any]] = []
    for i in range(count):
        n_disks = draw(st.one_of(st.integers(1, 6), st.integers(7, 31)))
        disks = [
            {
                "name": f"d{j}",
                "size_gb": draw(st.integers(1, 1023)),
                # At most 1290 IOPS per disk: 31 disks x 1290 x 0.5 stays within one retention
                # account (20,000), and a disk within a replica account even at factor 3 (6,666).
                "iops": draw(st.one_of(st.just(0), st.integers(0, 300), st.integers(300, 1290))),
                "churn_gb_per_day": draw(st.one_of(st.just(0.0), st.floats(0, 60, allow_nan=False))),
            }
            for j in range(n_disks)
        ]
        machines.append({
            "name": f"m{i:02d}",
            "site": draw(st.sampled_from(["hq", "branch"])),
            "kind": "vmware",
            "os": draw(st.sampled_from(["Windows Server 2012 R2", "CentOS 6.5"])),
            "vcpus": draw(st.integers(1, 16)),
            "memory_gb": draw(st.sampled_from([1, 2, 4, 8, 16, 32, 64, 112])),
            "disks": disks,
        })
    names = [m["name"] for m in machines]
    n_groups = draw(st.integers(1, 4))
    assignment = [draw(st.integers(0, n_groups)) for _ in names]  # n_groups: not protected
    groups = []
    for g in range(n_groups):
        members = [n for n, a in zip(names, assignment, strict=False) if a == g]
        if members:
            groups.append({"name": f"g{g}", "members": members,
                           "policy": {"multi_vm_consistency": draw(st.booleans())}})
    planning = {
        "replica_account_source_iops": draw(st.integers(8000, 10000)),
        "replica_io_factor": draw(st.sampled_from([1.0, 2.0, 2.5, 3.0])),
    }
    sites = [{"name": "hq", "bandwidth_mbps": 100}, {"name": "branch"}]
    return estate(machines, groups=groups, sites=sites, planning=planning, quota=draw(st.integers(0, 500)))


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(estates())
def test_plan_invariants(e: Estate) -> None:
    plan = make_plan(e)
    protected = {m.name: m for m in e.protected_machines}
    family = {n: ("windows" if "Windows" in m.os else "linux") for n, m in protected.items()}

    # No master target above capacity; each source on exactly one MTS, of its OS.
    seen: dict[str, str] = {}
    for mts in plan.master_targets:
        assert mts.protected_disks <= mts.capacity
        assert mts.protected_disks == sum(len(protected[n].disks) for n in mts.machines)
        assert mts.capacity == {"Standard_A4": 15, "Standard_D14": 31}[mts.size]
        for name in mts.machines:
            assert name not in seen, f"{name} on {seen.get(name)} and {mts.name}"
            seen[name] = mts.name
            assert family[name] == mts.os
    assert set(seen) == set(protected)  # every disk count here is <= 31

    # Counts at or above the lower bounds.
    volumes = sum(len(m.disks) for m in protected.values())
    assert len(plan.config_servers) >= math.ceil(volumes / 750)
    for os in ("windows", "linux"):
        disks = [len(m.disks) for n, m in protected.items() if family[n] == os]
        count = sum(1 for mts in plan.master_targets if mts.os == os)
        assert count >= math.ceil(sum(disks) / 31)
        if all(d <= 15 for d in disks):
            assert count >= math.ceil(sum(disks) / 15)
    cap = min(e.planning.replica_account_source_iops, e.planning.account_max_iops / e.planning.replica_io_factor)
    replicas = [a for a in plan.storage_accounts if a.purpose == "replica"]
    assert len(replicas) >= math.ceil(plan.source_iops / cap - EPS)

    # No account above its IOPS; every disk in exactly one replica account, as its MTS says.
    in_account: dict[str, str] = {}
    for account in plan.storage_accounts:
        assert account.target_iops <= account.max_iops + EPS
        if account.purpose == "replica":
            assert account.source_iops <= cap + EPS
            for disk in account.disks:
                assert disk not in in_account
                in_account[disk] = account.name
    for mts in plan.master_targets:
        for disk in mts.disks:
            assert in_account[disk.disk] == disk.storage_account
    assert len(in_account) == volumes

    # Process servers: at least the lower bounds per site (2 TB/day and 225 machines per server).
    for site in ("hq", "branch"):
        here = [m for m in protected.values() if m.site == site]
        churn = sum(d.churn_gb_per_day for m in here for d in m.disks)
        count = sum(1 for ps in plan.process_servers if ps.site == site)
        assert count >= max(math.ceil(churn / 2000 - EPS), math.ceil(len(here) / 225))

    # Process servers: within their row, each machine on exactly one server of its site.
    on_ps: dict[str, str] = {}
    for ps in plan.process_servers:
        assert ps.churn_gb_per_day <= ps.max_churn_gb_per_day + EPS
        assert len(ps.machines) <= ps.max_machines
        for name in ps.machines:
            assert name not in on_ps and protected[name].site == ps.site
            on_ps[name] = ps.name
    assert set(on_ps) == set(protected)

    # Quota adds up.
    assert plan.quota.total_vcpus == sum(plan.quota.vcpus_by_family.values())
    assert plan.quota.shortfall_vcpus == max(0, plan.quota.total_vcpus - plan.quota.declared_vcpus)
    assert plan.errors == []

    # Deterministic: the same input gives byte-identical JSON (also from a fresh copy of the estate).
    again = make_plan(Estate.model_validate(e.model_dump()))
    assert again.to_json() == plan.to_json()
