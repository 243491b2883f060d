"""The bundled VM size catalog (dr/sizes.py, dr/data/vm_sizes.yaml)."""

from __future__ import annotations

import re

from dr.sizes import by_name, catalog, smallest_fitting


def test_profiles_offer_their_sizes() -> None:
    seed = {s.name for s in catalog("asr-2015")}
    assert seed == {f"Standard_A{i}" for i in range(8)} | {f"Standard_D{i}" for i in (1, 2, 3, 4, 11, 12, 13, 14)}
    current = {s.name for s in catalog("asr-2023")}
    assert seed < current
    assert {"Standard_D2_v5", "Standard_D96_v5", "Standard_E2_v5", "Standard_E96_v5"} <= current
    assert catalog("no-such-profile") == []


def test_families_and_fields() -> None:
    for size in catalog("asr-2023"):
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
