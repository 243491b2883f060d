"""The exact steps, computed before anything runs (what --dry-run prints)."""

from __future__ import annotations

import json

import pytest

from dr.failover.points import Choice
from dr.failover.provider import vm_size
from dr.failover.steps import PlanNotRunnable, failback_steps, failover_steps, find_plan, render
from dr.model import Action, Estate, Machine
from dr.server.jobs import StepRecord


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


# ---------------------------------------------------------------- step kinds and their details


def test_every_step_kind_has_one_handler_and_one_detail_shape() -> None:
    from dr.failover.runner import HANDLERS, Runner
    from dr.failover.steps import DETAILS, StepKind

    assert set(HANDLERS) == set(StepKind), f"no handler for {set(StepKind) - set(HANDLERS)}"
    assert set(DETAILS) == set(StepKind), f"no detail shape for {set(StepKind) - set(DETAILS)}"
    # Each handler is a method of the runner, and no two kinds share one.
    assert all(getattr(Runner, h.__name__) is h for h in HANDLERS.values())
    assert len(set(HANDLERS.values())) == len(HANDLERS)


def _stored(kind: str, detail: object, idx: int = 1) -> StepRecord:
    return StepRecord(idx=idx, kind=kind, title="t", group=None, machine="sql01", detail=detail,  # type: ignore[arg-type]
                      state="pending", started=None, finished=None, output="", confirmed_by=None)


def test_every_step_written_reads_back_as_written(sharepoint: Estate) -> None:
    """What the steps store is what `detail` reads: each kind's JSON round-trips through its shape."""
    from dr.failover.steps import DETAILS, StepKind, change_point_steps, cleanup_steps, commit_steps, detail

    plan = find_plan(sharepoint, "sharepoint")
    gate = Action.model_validate({"script": "gate.sh", "timeout": "1m"})
    first = plan.groups[0].model_copy(update={"before": [gate]})
    plan = plan.model_copy(update={"groups": [first, *plan.groups[1:]]})  # the example has no script
    allowed = plan.model_copy(update={"failback": True})
    written = [
        *failover_steps(sharepoint, plan, "planned", Choice.parse("latest"), automatic_shutdown=True),
        *failover_steps(sharepoint, plan, "test", Choice.parse("latest-multi-vm"), automatic_shutdown=False),
        *failback_steps(sharepoint, allowed), *cleanup_steps(sharepoint, plan), *commit_steps(plan),
        *change_point_steps(sharepoint, plan, "planned", Choice.parse("latest-app")),
    ]
    assert {s.kind for s in written} == set(StepKind)  # every kind is written by some job
    for step in written:
        stored = json.loads(json.dumps(step.detail))
        shape = DETAILS[StepKind(step.kind)]
        assert detail(_stored(step.kind, stored), shape).to_json() == stored, step


# Details exactly as earlier versions stored them (keys and JSON types): they must still load.
EARLIER = [
    ("shutdown", {"automatic": True, "best_effort": False}),
    ("drain", {}),
    ("drain", {"point": {"machine": "sql01", "point_id": "final", "time": 1764547200.5, "kind": "app",
                         "group_id": None}}),
    ("choose_point", {"choice": "latest-multi-vm",
                      "chosen": {"sql01": {"machine": "sql01", "point_id": "mv-2", "time": 1764547200,
                                           "kind": "crash", "group_id": "g2"}}}),
    ("failover_machine", {}),  # a change of point's step, before it ran
    ("failover_machine", {"group_no": 2, "point": {"machine": "sql01", "point_id": "mv-2", "time": 1.0,
                                                   "kind": "crash", "group_id": "g2"},
                          "disks": ["http://127.0.0.1/devstoreaccount1/rg/sql01/c.vhd"],
                          "report": {"vm": "sql01", "size": "Standard_D4s_v5", "provisioned": False}}),
    ("failback_machine", {"group_no": 1}),
    ("script", {"action": {"script": "scripts/gate.sh", "timeout": "10m"}, "when": "before", "group_no": 3}),
    ("runbook", {"action": {"runbook": "announce", "timeout": "10m"}, "when": "after", "group_no": 4}),
    ("manual", {"action": {"manual": "check 1"}}),
    ("traffic_manager", {"profile": "contoso-sharepoint", "from": "sharepoint.contoso.com", "to": "azure"}),
    ("delete_group", {"resource_group": "contoso-dr-sharepoint-failover-test"}),
    ("commit", {}),
    ("reprotect", {}),
]


@pytest.mark.parametrize(("kind", "stored"), EARLIER, ids=[f"{k}-{i}" for i, (k, _) in enumerate(EARLIER)])
def test_details_stored_by_earlier_versions_still_load(kind: str, stored: dict[str, object]) -> None:
    from dr.failover.steps import DETAILS, StepKind, detail

    parsed = detail(_stored(kind, stored), DETAILS[StepKind(kind)])
    again = parsed.to_json()
    # Written back, nothing the earlier version stored is lost or changed (an action's default timeout
    # is written out: the same action).
    for key, value in stored.items():
        if key == "action":
            assert Action.model_validate(again[key]) == Action.model_validate(value)
        else:
            assert again[key] == value, key


@pytest.mark.parametrize(("kind", "stored", "what"), [
    ("defragment", {}, r"a 'defragment' step, which this version of dr does not know"),
    ("choose_point", {"point": "latest"}, r"step 7 \(choose_point\) holds a detail .*\(no 'choice'\)"),
    ("shutdown", {"automatic": "yes"}, r"'automatic' is str 'yes'"),
    ("failover_machine", {"group_no": True}, r"'group_no' is bool True"),
    ("script", {"action": {"runbook": "announce"}}, r"\(a runbook action\)"),
    ("manual", {"action": {"manual": "x", "script": "y.sh"}}, r"exactly one of script, runbook or manual"),
    ("drain", ["not", "an", "object"], r"a list, not an object"),
])
def test_a_step_of_another_version_is_one_line_naming_it(kind: str, stored: object, what: str) -> None:
    from dr.failover.provider import FailoverError
    from dr.failover.steps import DETAILS, StepKind, detail

    shape = DETAILS.get(StepKind(kind)) if kind in set(StepKind) else DETAILS[StepKind.DRAIN]
    with pytest.raises(FailoverError, match=what) as err:
        detail(_stored(kind, stored, idx=7), shape)
    assert "\n" not in str(err.value) and str(err.value).endswith("resume it with that version, or start a new job")
