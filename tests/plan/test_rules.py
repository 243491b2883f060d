"""One test per planner rule, each expected value worked out by hand in the test."""

from __future__ import annotations

import re

from dr.plan import make_plan
from tests.plan.conftest import estate, machine, rule_warnings, stem

# --- configuration servers -------------------------------------------------------------------


def test_config_servers_one_per_750_volumes() -> None:
    # 254 machines x 3 volumes = 762 volumes -> ceil(762 / 750) = 2; all items are 3, so first-fit
    # decreasing fills cs01 with the first 250 machines (750) and cs02 with the last 4 (12).
    plan = make_plan(estate([machine(f"m{i:03d}", 3) for i in range(254)]))
    assert [(c.name, c.size, c.volumes) for c in plan.config_servers] == [
        ("golden-cs01", "Standard_A3", 750), ("golden-cs02", "Standard_A3", 12)]
    assert plan.config_servers[1].machines == ["m250", "m251", "m252", "m253"]


def test_config_servers_exactly_750_volumes_is_one() -> None:
    plan = make_plan(estate([machine(f"m{i:03d}", 3) for i in range(250)]))
    assert [c.volumes for c in plan.config_servers] == [750]


def test_inventory_machines_are_not_sized() -> None:
    # Only members of a protection group are protected: 2 machines, 1 in a group -> 1 disk planned.
    plan = make_plan(estate([machine("in", 1), machine("out", 5)], groups=[{"name": "g", "members": ["in"]}]))
    assert plan.protected_machines == 1 and plan.protected_disks == 1
    assert [vm.machine for vm in plan.failover_vms] == ["in"]


# --- process servers -------------------------------------------------------------------------


def test_process_server_machine_above_2tb_is_an_error() -> None:
    # 2,500 GB/day on one machine > 2,000 GB/day, the largest row of the table.
    plan = make_plan(estate([machine("hot", [{"name": "c", "size_gb": 10, "churn_gb_per_day": 2500}])]))
    assert [e.path for e in plan.errors] == ["machines.0.disks"]
    assert "2500 GB/day" in plan.errors[0].message
    assert all("hot" not in ps.machines for ps in plan.process_servers)


def test_process_servers_machine_count_limit() -> None:
    # 226 machines with no churn: the largest row takes 225 machines -> 2 added servers; the first
    # carries 225 (12 vCPU row, 150 < 225 <= 225), the second 1 machine (4 vCPU row).
    plan = make_plan(estate([machine(f"m{i:03d}", 1) for i in range(226)]))
    assert [(p.name, len(p.machines), p.vcpus) for p in plan.process_servers] == [
        ("hq-ps01", 225, 12), ("hq-ps02", 1, 4)]


def test_process_server_rows_by_churn() -> None:
    # One site, 3 machines: 600 + 300 + 100 = 1,000 GB/day on one server -> the 1 TB row: 8 vCPU,
    # 12 GB, 600 GB cache; cache for 8 h: 1000 x 8 / 24 = 333.3 GB <= 600: no warning.
    disks = [[{"name": "c", "size_gb": 10, "churn_gb_per_day": c}] for c in (600, 300, 100)]
    plan = make_plan(estate([machine(f"m{i}", d) for i, d in enumerate(disks)]))
    (ps,) = plan.process_servers
    assert (ps.vcpus, ps.memory_gb, ps.cache_gb, ps.churn_gb_per_day) == (8, 12.0, 600.0, 1000.0)
    assert ps.cache_needed_gb == 333.333
    assert rule_warnings(plan) == []


def test_unsized_declared_process_server_is_filled_in() -> None:
    sites = [{"name": "hq", "bandwidth_mbps": 1000,
              "process_servers": [{"name": "ps1", "address": "10.0.0.1", "os": "Windows Server 2012 R2"}]}]
    disks = [{"name": "c", "size_gb": 10, "churn_gb_per_day": 1500}]
    plan = make_plan(estate([machine("m", disks)], sites=sites))
    (ps,) = plan.process_servers
    # 1,500 GB/day > 1 TB -> the 2 TB row: 12 vCPU, 24 GB, 1,000 GB cache; 1500 x 8/24 = 500 GB cache.
    assert (ps.name, ps.declared, ps.vcpus, ps.memory_gb, ps.cache_gb) == ("ps1", True, 12, 24.0, 1000.0)
    assert ps.cache_needed_gb == 500.0


# --- master targets --------------------------------------------------------------------------


def test_source_with_32_disks_is_an_error() -> None:
    plan = make_plan(estate([machine("wide", 32), machine("ok", 2)]))
    assert [e.path for e in plan.errors] == ["machines.0.disks"]
    assert "32 disks" in plan.errors[0].message and "31" in plan.errors[0].message
    assert [m.machines for m in plan.master_targets] == [["ok"]]


def test_source_with_31_disks_gets_a_d14() -> None:
    plan = make_plan(estate([machine("wide", 31)]))
    assert [(m.size, m.protected_disks, m.capacity) for m in plan.master_targets] == [("Standard_D14", 31, 31)]


def test_multi_vm_group_too_large_is_split_with_a_warning() -> None:
    # 6 + 6 + 6 = 18 > 15 disks: not on one A4 -> warning; FFD: 6, 6 -> mtsw01 (12), 6 -> mtsw02.
    machines = [machine(n, 6) for n in ("a", "b", "c")]
    groups = [{"name": "g", "members": ["a", "b", "c"], "policy": {"multi_vm_consistency": True}}]
    plan = make_plan(estate(machines, groups=groups))
    assert [w.path for w in rule_warnings(plan)] == ["protection_groups.0"]
    assert "18 windows disks" in rule_warnings(plan)[0].message
    assert [m.machines for m in plan.master_targets] == [["a", "b"], ["c"]]


def test_multi_vm_group_kept_together_where_plain_ffd_would_split_it() -> None:
    # Without the group, FFD of 8, 8, 7, 7 (spec order x, y, g1, g2) gives [x, g1] and [y, g2].
    # With g1 + g2 = 14 as one item: 14 -> mtsw01; 8 -> mtsw02; 8 -> mtsw02 16 > 15 -> mtsw03.
    machines = [machine("x", 8), machine("y", 8), machine("g1", 7), machine("g2", 7)]
    groups = [{"name": "g", "members": ["g1", "g2"], "policy": {"multi_vm_consistency": True}},
              {"name": "rest", "members": ["x", "y"]}]
    plan = make_plan(estate(machines, groups=groups))
    assert [m.machines for m in plan.master_targets] == [["g1", "g2"], ["x"], ["y"]]
    plain = make_plan(estate(machines, groups=[{"name": "all", "members": ["x", "y", "g1", "g2"]}]))
    assert [m.machines for m in plain.master_targets] == [["x", "g1"], ["y", "g2"]]


def test_multi_vm_group_across_os_warns() -> None:
    machines = [machine("w", 2), machine("l", 2, os="CentOS 6.5")]
    groups = [{"name": "g", "members": ["w", "l"], "policy": {"multi_vm_consistency": True}}]
    plan = make_plan(estate(machines, groups=groups))
    assert [w.path for w in rule_warnings(plan)] == ["protection_groups.0"]
    assert [(m.os, m.machines) for m in plan.master_targets] == [("windows", ["w"]), ("linux", ["l"])]


# --- storage accounts ------------------------------------------------------------------------


def _iops_machine(*iops: float) -> dict[str, object]:
    return machine("db", [{"name": f"d{i}", "size_gb": 10, "iops": v} for i, v in enumerate(iops)])


def test_replica_factor_lowers_account_capacity() -> None:
    # replica_io_factor 4: an account takes min(8000, 20000 / 4) = 5000 source IOPS.
    # FFD: 5000 -> r001 (full); 4000 -> r002; 3000 -> r002 7000 > 5000 -> r003; 2000 -> r002 6000 > 5000,
    # r003 5000 -> r003. Targets: 5000 x 4 = 20000, 4000 x 4 = 16000, 5000 x 4 = 20000.
    plan = make_plan(estate([_iops_machine(5000, 4000, 3000, 2000)], planning={"replica_io_factor": 4}))
    replicas = [(a.name, a.disks, a.source_iops, a.target_iops) for a in plan.storage_accounts
                if a.purpose == "replica"]
    s = stem()
    assert replicas == [(f"{s}r001", ["db/d0"], 5000.0, 20000.0), (f"{s}r002", ["db/d1"], 4000.0, 16000.0),
                        (f"{s}r003", ["db/d2", "db/d3"], 5000.0, 20000.0)]


def test_replica_account_source_iops_10000() -> None:
    # replica_account_source_iops 10000: min(10000, 20000 / 2) = 10000 -> 5000 + 4000 = 9000 in r001,
    # 3000 -> 12000 > 10000 -> r002, 2000 -> r001 11000 > 10000 -> r002 (5000).
    plan = make_plan(estate([_iops_machine(5000, 4000, 3000, 2000)],
                            planning={"replica_account_source_iops": 10000}))
    assert [a.disks for a in plan.storage_accounts if a.purpose == "replica"] == [
        ["db/d0", "db/d1"], ["db/d2", "db/d3"]]


def test_disk_above_account_capacity_is_an_error() -> None:
    plan = make_plan(estate([_iops_machine(100, 9000)]))
    assert [e.path for e in plan.errors] == ["machines.0.disks.1.iops"]
    assert "9000 source IOPS" in plan.errors[0].message


def test_too_many_storage_accounts_is_an_error() -> None:
    # 2 replica accounts (9000 source IOPS > 8000) + 1 retention = 3 > 2.
    plan = make_plan(estate([_iops_machine(5000, 4000)], planning={"max_storage_accounts": 2}))
    assert len(plan.storage_accounts) == 3
    assert [e.path for e in plan.errors] == ["planning.max_storage_accounts"]


def test_retention_accounts_shared_while_iops_allow() -> None:
    # Four machines of 15 disks: one A4 each. a, b, c: 15 x 1000 = 15000 source IOPS -> x 0.5 = 7500
    # retention IOPS; d: 15 x 500 = 7500 -> 3750. First-fit decreasing: 7500 -> t001, 7500 -> t001
    # (15000), 7500 -> 22500 > 20000 -> t002, 3750 -> t001 (18750 <= 20000).
    disks = [{"name": f"d{i}", "size_gb": 10, "iops": 500} for i in range(15)]
    big = [{"name": f"d{i}", "size_gb": 10, "iops": 1000} for i in range(15)]
    plan = make_plan(estate([machine("a", big), machine("b", big), machine("c", big), machine("d", disks)],
                            planning={"replica_account_source_iops": 8000}))
    retention = {a.name[-4:]: a.disks for a in plan.storage_accounts if a.purpose == "retention"}
    assert retention == {
        "t001": ["golden-mtsw01/os", "golden-mtsw01/retention", "golden-mtsw02/os", "golden-mtsw02/retention",
                 "golden-mtsw04/os", "golden-mtsw04/retention"],
        "t002": ["golden-mtsw03/os", "golden-mtsw03/retention"],
    }
    assert [a.target_iops for a in plan.storage_accounts if a.purpose == "retention"] == [18750.0, 7500.0]


def test_storage_account_names_are_valid_azure_names() -> None:
    plan = make_plan(estate([_iops_machine(5000, 4000)], name="a-very-long-estate-name-with-dashes-0123"))
    for account in plan.storage_accounts:
        assert re.fullmatch(r"[a-z0-9]{3,24}", account.name), account.name
    other = make_plan(estate([_iops_machine(5000, 4000)], name="a-very-long-estate-name-with-dashes-9999"))
    assert {a.name for a in plan.storage_accounts}.isdisjoint(a.name for a in other.storage_accounts)


# --- failover compute and quota ----------------------------------------------------------------


def test_no_size_fits_is_an_error() -> None:
    # asr-2015's largest is D14 (16 vCPU): a 20-vCPU machine fits none; asr-2023's D32_v5 fits it.
    plan = make_plan(estate([machine("huge", 1, vcpus=20, memory_gb=100)]))
    assert [e.path for e in plan.errors] == ["machines.0"]
    newer = make_plan(estate([machine("huge", 1, vcpus=20, memory_gb=100)], profile="asr-2023"))
    # Sizes with >= 20 vCPU and >= 100 GB, smallest first: E20_v5 (20, 160) before D32_v5 (32, 128).
    assert [vm.size for vm in newer.failover_vms] == ["Standard_E20_v5"]


def test_asr_2023_prefers_dv5() -> None:
    # 2 vCPU / 8 GB: D2_v5 (2, 8) sorts before A5 (2, 14) by memory.
    plan = make_plan(estate([machine("web", 1, vcpus=2, memory_gb=8)], profile="asr-2023"))
    assert [(vm.size, vm.family) for vm in plan.failover_vms] == [("Standard_D2_v5", "standardDv5Family")]


def test_quota_without_shortfall() -> None:
    # A1 for 1 vCPU / 1 GB? A0 has 0.75 GB -> A1 (1 vCPU). Always on: A3 4 + A4 8 = 12; total 13 <= 13.
    plan = make_plan(estate([machine("m", 1)], quota=13))
    assert (plan.quota.total_vcpus, plan.quota.shortfall_vcpus) == (13, 0)
    assert rule_warnings(plan) == []
    assert make_plan(estate([machine("m", 1)], quota=12)).quota.shortfall_vcpus == 1


# --- bandwidth ---------------------------------------------------------------------------------


def test_rpo_threshold_not_above_point_interval_is_an_error() -> None:
    groups = [{"name": "g", "members": ["m"], "policy": {"rpo_threshold": "5m"}}]
    plan = make_plan(estate([machine("m", 1)], groups=groups))
    assert [e.path for e in plan.errors] == ["protection_groups.0.policy.rpo_threshold"]


def test_compression_ratio_divides_bandwidth() -> None:
    # 86.4 GB/day = 8 Mbps raw; / 4 = 2 Mbps; 1000 GB x 8000 / 4 / 1000 Mbps / 3600 = 0.556 h.
    disks = [{"name": "c", "size_gb": 1000, "churn_gb_per_day": 86.4}]
    plan = make_plan(estate([machine("m", disks)], planning={"compression_ratio": 4}))
    (bw,) = plan.bandwidth
    assert (bw.mbps_for_rpo, bw.initial_replication_hours) == (2.0, 0.556)
