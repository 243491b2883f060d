"""Builders of estates for the planner tests (the models directly: no YAML needed)."""

from __future__ import annotations

import hashlib
from typing import Any

from dr.model import Estate
from dr.plan import Issue, Plan


def stem(estate: str = "golden", region: str = "westeurope", resource_group: str = "dr",
         subscription: str = "00000000-0000-0000-0000-000000000000") -> str:
    """The storage account name stem, recomputed independently of dr.plan.context."""
    letters = "".join(ch for ch in estate if ch.isalnum())[:12]
    identity = f"{estate}\n{region}\n{resource_group}\n{subscription}"
    return letters + hashlib.sha256(identity.encode()).hexdigest()[:6]


def machine(name: str, disks: list[dict[str, Any]] | int, *, site: str = "hq",
            os: str = "Windows Server 2012 R2", **extra: Any) -> dict[str, Any]:
    if isinstance(disks, int):
        disks = [{"name": f"d{i}", "size_gb": 10} for i in range(disks)]
    data: dict[str, Any] = {"name": name, "site": site, "kind": "vmware", "os": os, "vcpus": 1,
                            "memory_gb": 1, "disks": disks}
    data.update(extra)
    return data


def estate(machines: list[dict[str, Any]], *, groups: list[dict[str, Any]] | None = None,
           sites: list[dict[str, Any]] | None = None, quota: int = 100_000,
           planning: dict[str, Any] | None = None, name: str = "golden", profile: str = "asr-2015") -> Estate:
    data: dict[str, Any] = {
        "estate": name,
        "support_profile": profile,
        "azure": {
            "subscription": "00000000-0000-0000-0000-000000000000",
            "region": "westeurope",
            "resource_group": "dr",
            "connectivity": "vpn",
            "network": {"vnet": "v", "address_space": "10.50.0.0/16", "subnet": "s",
                        "subnet_prefix": "10.50.1.0/24"},
            "quota": {"vcpus": quota},
        },
        "sites": sites if sites is not None else [{"name": "hq", "bandwidth_mbps": 1000}],
        "machines": machines,
        "protection_groups": groups if groups is not None else [
            {"name": "all", "members": [m["name"] for m in machines]}
        ] if machines else [],
    }
    if planning:
        data["planning"] = planning
    return Estate.model_validate(data)


def subset(expected: Any, actual: Any, where: str = "plan") -> None:
    """Every key of `expected` is in `actual` with the same value; lists match item by item."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: expected an object, found {actual!r}"
        for key, value in expected.items():
            assert key in actual, f"{where}: missing key {key!r}"
            subset(value, actual[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list), f"{where}: expected a list, found {actual!r}"
        assert len(expected) == len(actual), f"{where}: {len(expected)} items expected, found {len(actual)}: {actual!r}"
        for index, (e, a) in enumerate(zip(expected, actual, strict=False)):
            subset(e, a, f"{where}.{index}")
    else:
        assert expected == actual, f"{where}: expected {expected!r}, found {actual!r}"


def rule_warnings(plan: Plan) -> list[Issue]:
    """The plan's warnings less the ones about retired or retiring sizes (every seed-profile plan has
    them: tests/plan/test_sizes.py checks those)."""
    return [w for w in plan.warnings if w.path != "support_profile"]
