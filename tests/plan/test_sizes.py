"""The bundled VM size catalog (dr/sizes.py, dr/data/vm_sizes.yaml)."""

from __future__ import annotations

import datetime
import re

import pytest

from dr.azure.contract import from_contract
from dr.azure.options import retired_sizes
from dr.plan import make_plan
from dr.sizes import CURRENT_PROFILE, PROFILES, by_name, catalog, server_size, smallest_fitting
from dr.validate import check_estate
from tests.plan.conftest import estate, machine


def test_profiles_offer_their_sizes() -> None:
    seed = {s.name for s in catalog("asr-2015")}
    assert seed == {f"Standard_A{i}" for i in range(8)} | {f"Standard_D{i}" for i in (1, 2, 3, 4, 11, 12, 13, 14)}
    current = {s.name for s in catalog("asr-2023")}
    assert seed < current
    assert {"Standard_D2_v5", "Standard_D96_v5", "Standard_E2_v5", "Standard_E96_v5"} <= current
    assert catalog("no-such-profile") == []


def test_families_and_fields() -> None:
    for size in catalog("asr-2023"):
        assert size.source, size
        family = {"A": "standardA0_A7Family", "D": "standardDFamily"}.get(size.name[9], "")
        if size.name.endswith("_v5"):
            family = f"standard{size.name[9]}v5Family"
        assert size.family == family, size
        assert size.vcpus >= 1 and size.memory_gb > 0 and size.max_data_disks >= 1 and size.max_nics >= 1
        assert re.fullmatch(r"Standard_[ADE]\d+(_v5)?", size.name)


def test_seed_master_target_sizes() -> None:
    # The seed's master targets: A4 with 16 data disks, D14 with 32.
    a4, d14 = by_name("Standard_A4"), by_name("standard_d14")
    assert a4 is not None and (a4.vcpus, a4.memory_gb, a4.max_data_disks) == (8, 14.0, 16)
    assert d14 is not None and (d14.vcpus, d14.memory_gb, d14.max_data_disks) == (16, 112.0, 32)
    assert by_name("Standard_Z9") is None


def test_smallest_fitting() -> None:
    # 1 vCPU / 1 GB: A0 has 0.75 GB -> A1. 2 vCPU / 4 GB: A2 has 3.5 -> D2 (7 GB).
    assert getattr(smallest_fitting("asr-2015", 1, 1, 0, 1), "name", None) == "Standard_A1"
    assert getattr(smallest_fitting("asr-2015", 2, 4, 0, 1), "name", None) == "Standard_D2"
    # 17 data disks: only D14 takes more than 16 in asr-2015.
    assert getattr(smallest_fitting("asr-2015", 1, 1, 17, 1), "name", None) == "Standard_D14"
    assert smallest_fitting("asr-2015", 1, 1, 33, 1) is None
    assert smallest_fitting("asr-2015", 17, 1, 0, 1) is None
    assert getattr(smallest_fitting("asr-2023", 17, 1, 0, 1), "name", None) == "Standard_E20_v5"


def test_current_profile_offers_only_deployable_sizes() -> None:
    current = catalog(CURRENT_PROFILE)
    assert {s.family for s in current} == {"standardDSv5Family", "standardDASv5Family", "standardESv5Family"}
    for size in current:
        assert size.status() == "current" and size.retirement() == "", size
        assert size.generations == (1, 2) and size.source in {"dsv5", "dasv5", "esv5"}, size
    # The servers keep the seed's data-disk counts: 16 - 1 retention = 15, 32 - 1 = 31.
    small = server_size(CURRENT_PROFILE, "master_target_small")
    large = server_size(CURRENT_PROFILE, "master_target_large")
    assert (small.name, small.max_data_disks, large.name, large.max_data_disks) == (
        "Standard_D8s_v5", 16, "Standard_D16s_v5", 32)
    assert server_size(CURRENT_PROFILE, "config_server").vcpus == server_size("asr-2015", "config_server").vcpus == 4


def test_retirement_dates_and_status() -> None:
    a3, d14, d4s = by_name("Standard_A3"), by_name("Standard_D14"), by_name("Standard_D4s_v5")
    assert a3 is not None and d14 is not None and d4s is not None
    assert a3.retires == datetime.date(2024, 8, 31) and a3.status() == "retired"
    assert d14.retires == datetime.date(2028, 5, 1)
    assert d14.status(datetime.date(2026, 12, 1)) == "retiring" and d14.status(datetime.date(2028, 5, 1)) == "retired"
    assert d14.retirement(datetime.date(2026, 12, 1)) == "Standard_D14 retires on 2028-05-01 (d-retirement)"
    assert d4s.status(datetime.date(2100, 1, 1)) == "current"


OFFERED_NOT_CURRENT = sorted({(p, s.name) for p in PROFILES for s in catalog(p) if s.status() != "current"})


def test_seed_profiles_offer_retired_sizes() -> None:
    assert {name for _, name in OFFERED_NOT_CURRENT} >= {"Standard_A3", "Standard_A4", "Standard_D14", "Standard_D2"}
    assert all(profile != CURRENT_PROFILE for profile, _ in OFFERED_NOT_CURRENT)


@pytest.mark.parametrize(("profile", "name"), OFFERED_NOT_CURRENT)
def test_every_retired_or_retiring_size_the_catalog_offers_is_warned(profile: str, name: str) -> None:
    """Chosen by the spec (azure_size), the size is a warning of `dr validate` and of `dr plan`,
    naming its date and source; a retired one is refused by the stack before any resource."""
    size = by_name(name)
    assert size is not None
    spec = estate([machine("m1", 1, azure_size=name)], profile=profile)
    validation = [f.message for f in check_estate(spec).warnings if f.dotted == "machines.0.azure_size"]
    assert any(size.retirement() in m for m in validation), validation
    plan = make_plan(spec)
    assert any(w.path == "machines.0.azure_size" and size.retirement() in w.message for w in plan.warnings)
    server_warnings = [w.message for w in plan.warnings]
    for server in (plan.config_servers[0].size, plan.master_targets[0].size):
        assert any(f"{server} " in m and "used by" in m for m in server_warnings), server_warnings
    stack = from_contract(plan.model_dump(mode="json"))
    refused = retired_sizes(spec, stack, None)
    assert ("configuration server golden-cs01: Standard_A3 was retired" in " ".join(refused)) == (
        plan.config_servers[0].size == "Standard_A3")


def test_current_profile_plans_without_size_warnings() -> None:
    spec = estate([machine("w", 3, vcpus=4, memory_gb=30), machine("l", 20, os="CentOS 7.9")],
                  profile=CURRENT_PROFILE)
    plan = make_plan(spec)
    assert plan.errors == [] and [w for w in plan.warnings if "retire" in w.message] == []
    assert [m.size for m in plan.master_targets] == ["Standard_D8s_v5", "Standard_D16s_v5"]
    assert [v.size for v in plan.failover_vms] == ["Standard_E4s_v5", "Standard_D16s_v5"]  # 19 data disks
    # between equal sizes the family listed first: Dsv5 like the servers (not Dasv5), fewer quota requests
    assert set(plan.quota.vcpus_by_family) == {"standardDSv5Family", "standardESv5Family"}
    assert retired_sizes(spec, from_contract(plan.model_dump(mode="json")), None) == []


def test_uefi_machines_get_generation_2_sizes() -> None:
    # asr-2023 offers Gen1-only seed sizes beside Gen2-capable Dv5/Ev5: a UEFI machine gets the latter.
    assert getattr(smallest_fitting("asr-2023", 2, 4, 0, 1), "name", None) == "Standard_D2"
    assert getattr(smallest_fitting("asr-2023", 2, 4, 0, 1, generation=2), "name", None) == "Standard_D2_v5"
    plan = make_plan(estate([machine("u", 1, vcpus=2, memory_gb=4, firmware="uefi", os="Windows Server 2016")],
                            profile="asr-2023"))
    assert [v.size for v in plan.failover_vms] == ["Standard_D2_v5"]
    # An azure_size that boots Generation 1 only is refused for a UEFI machine, by validate and plan.
    spec = estate([machine("u", 1, firmware="uefi", os="Windows Server 2016", azure_size="Standard_D3")],
                  profile="asr-2023")
    assert "Generation 2" in {f.dotted: f.message for f in check_estate(spec).errors}["machines.0.azure_size"]
    assert [e.path for e in make_plan(spec).errors] == ["machines.0.azure_size"]
