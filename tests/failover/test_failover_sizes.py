"""A failover provisions the size the plan chose: the runner asks the planner, it never sizes again.

The runner once re-implemented the planner's choice without its checks, so a UEFI machine could be
reported on a size that cannot boot its Generation 2 disk.
"""

from __future__ import annotations

import pytest

from dr.failover.provider import FailoverError, vm_size
from dr.model import Estate
from dr.plan import make_plan
from dr.sizes import by_name


def _with(estate: Estate, machine: str, **changes: object) -> Estate:
    machines = [m.model_copy(update=changes) if m.name == machine else m for m in estate.machines]
    return estate.model_copy(update={"machines": machines})


def test_the_failover_size_is_the_plans_for_every_machine(sharepoint: Estate) -> None:
    planned = {v.machine: v.size for v in make_plan(sharepoint).failover_vms}
    assert {m.name: vm_size(sharepoint, m)[0] for m in sharepoint.machines} == planned


@pytest.mark.parametrize("profile", ["asr-2023", "azure-2026"])
def test_a_uefi_machine_fails_over_on_a_size_that_boots_generation_2(sharepoint: Estate, profile: str) -> None:
    # asr-2023 allows UEFI and still lists Generation 1-only sizes: the smallest fit by vCPU and
    # memory alone (the runner's old choice) was one of them
    estate = _with(sharepoint.model_copy(update={"support_profile": profile}), "dc01", firmware="uefi")
    size, reason = vm_size(estate, estate.machine("dc01"))
    found = by_name(size)
    assert found is not None and found.boots(2), (size, reason)
    assert reason  # the planner's reasons travel with the size


def test_a_machine_the_plan_cannot_size_is_refused_not_guessed(sharepoint: Estate) -> None:
    estate = _with(sharepoint, "web01", azure_size="Standard_Imaginary_v9")
    with pytest.raises(FailoverError, match="run `dr plan`"):
        vm_size(estate, estate.machine("web01"))
