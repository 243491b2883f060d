"""The exact steps, computed before anything runs (what --dry-run prints)."""

from __future__ import annotations

import pytest

from dr.failover.points import Choice
from dr.failover.provider import vm_size
from dr.failover.steps import PlanNotRunnable, failback_steps, failover_steps, find_plan, render
from dr.model import Estate, Machine


def test_test_failover_of_the_sharepoint_plan(sharepoint: Estate) -> None:
    plan = find_plan(sharepoint, "sharepoint")
    lines = render(failover_steps(sharepoint, plan, "test", Choice.parse("latest-multi-vm"), automatic_shutdown=False))
    rg = "contoso-dr-sharepoint-failover-test"
    # Sizes come from the VM size catalog (dr.sizes, its own tests); this test is about the steps.
    size = {m.name: vm_size(sharepoint, m)[0] for m in sharepoint.machines}
    assert lines == [
        "  1. choose the recovery point: latest-multi-vm for dc01, sql01, app01, web01, web02",
        f"  2. group 1 (directory): fail over dc01: materialize 1 disk(s) at the chosen point into {rg}, "
        f"then the {size['dc01']} VM on contoso-dr-vnet-test",
        f"  3. group 2 (database): fail over sql01: materialize 3 disk(s) at the chosen point into {rg}, "
        f"then the {size['sql01']} VM on contoso-dr-vnet-test",
        f"  4. group 3 (application): fail over app01: materialize 1 disk(s) at the chosen point into {rg}, "
        f"then the {size['app01']} VM on contoso-dr-vnet-test",
        f"  5. group 4 (web): fail over web01: materialize 1 disk(s) at the chosen point into {rg}, "
        f"then the {size['web01']} VM on contoso-dr-vnet-test",
        f"  6. group 4 (web): fail over web02: materialize 1 disk(s) at the chosen point into {rg}, "
        f"then the {size['web02']} VM on contoso-dr-vnet-test",
        "  7. group 4 (web), after: manual step, wait for confirmation: Check that the SharePoint home page "
        "answers on its Azure address",
        "  8. group 4 (web), after: run runbook open-traffic-manager-endpoint with the plan context",
    ]


def test_planned_failover_shuts_down_drains_and_switches_traffic(sharepoint: Estate) -> None:
    plan = find_plan(sharepoint, "sharepoint")
    steps = failover_steps(sharepoint, plan, "planned", Choice.parse("latest"), automatic_shutdown=True)
    kinds = [s.kind for s in steps]
    assert kinds[:5] == ["shutdown"] * 5 and kinds[5:10] == ["drain"] * 5 and kinds[10] == "choose_point"
    assert steps[0].title == "shut down source machine dc01 automatically"
    assert steps[10].title.startswith("choose the recovery point: the drained final points")
    assert steps[-1].title == ("switch Traffic Manager profile contoso-sharepoint from sharepoint.contoso.com "
                               "to the Azure endpoint")
    assert "into contoso-dr-sharepoint-failover," in steps[11].title and steps[11].title.endswith("on contoso-dr-vnet")

    unplanned = failover_steps(sharepoint, plan, "unplanned", Choice.parse("latest"), automatic_shutdown=False)
    assert unplanned[0].title == ("shut down source machine dc01 by the operator (manual: confirm when done); "
                                  "a failure does not stop an unplanned failover")
    assert "drain" not in [s.kind for s in unplanned]


def test_failback_of_a_physical_machine_is_refused(sharepoint: Estate) -> None:
    db = sharepoint.machine("sql01")
    physical = Machine.model_validate({**db.model_dump(), "kind": "physical"})
    estate = sharepoint.model_copy(update={"machines": [physical if m.name == "sql01" else m
                                                        for m in sharepoint.machines]})
    with pytest.raises(PlanNotRunnable, match=r"failback of physical machine.s. sql01 is not supported.*VMware VM"):
        failback_steps(estate, find_plan(estate, "sharepoint"))
    # The example's plan says nothing of failback, so it has none (the model's default: failback: false).
    with pytest.raises(PlanNotRunnable, match=r"plan sharepoint says failback: false.*set `failback: true`"):
        failback_steps(sharepoint, find_plan(sharepoint, "sharepoint"))
    allowed = find_plan(sharepoint, "sharepoint").model_copy(update={"failback": True})
    lines = render(failback_steps(sharepoint, allowed))
    assert lines[0] == "  1. reprotect dc01: reverse replication from Azure to the on-premises master target"
    assert lines[-1].endswith("switch Traffic Manager profile contoso-sharepoint back to sharepoint.contoso.com")


def test_an_unknown_plan_names_the_known_ones(sharepoint: Estate) -> None:
    with pytest.raises(PlanNotRunnable, match=r"no recovery plan 'nope' .*plans: sharepoint"):
        find_plan(sharepoint, "nope")
