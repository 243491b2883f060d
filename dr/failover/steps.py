"""The exact steps of a failover, commit, cleanup or failback, computed from the spec before anything
runs (so `--dry-run` prints what a run does, and a job stores its whole list before its first step).

A failover from the primary site to Azure is, in order:
  1. shut the source machines down (planned and unplanned; a test failover never touches them);
  2. planned only: wait for each machine's final recovery point (zero data loss);
  3. choose the recovery point (one per machine, or one multi-VM point for the plan);
  4. each group of the plan in order: its `before` actions, then its machines in parallel (disks
     materialized at the point into the plan's resource group, the VM provisioned or reported),
     then its `after` actions;
  5. switch the Traffic Manager profile to Azure (not in a test failover).
"""

from __future__ import annotations

from typing import Any, Literal

from dr.errors import EXIT_INVALID, DrError
from dr.failover.points import Choice
from dr.failover.provider import recovery_group, recovery_network, vm_size
from dr.model import Action, Estate, RecoveryPlan
from dr.server.jobs import NewStep

FailoverType = Literal["test", "planned", "unplanned"]
Direction = Literal["primary-to-azure", "azure-to-primary"]
TYPES: tuple[FailoverType, ...] = ("test", "planned", "unplanned")


class PlanNotRunnable(DrError):
    """The plan cannot run as asked (unknown plan, physical machine failback, wrong job state)."""

    exit_code = EXIT_INVALID


def find_plan(estate: Estate, name: str) -> RecoveryPlan:
    for plan in estate.recovery_plans:
        if plan.name == name:
            return plan
    known = ", ".join(p.name for p in estate.recovery_plans) or "none"
    raise PlanNotRunnable(f"no recovery plan {name!r} in estate {estate.estate} (plans: {known}): check the name")


def plan_machines(plan: RecoveryPlan) -> list[str]:
    return [m for group in plan.groups for m in group.machines]


def _action_step(action: Action, *, group_no: int, group: str, when: str) -> NewStep:
    timeout = int(action.timeout.total_seconds())
    if action.kind == "script":
        title = f"group {group_no} ({group}), {when}: run script {action.script} (timeout {timeout} s)"
    elif action.kind == "runbook":
        title = f"group {group_no} ({group}), {when}: run runbook {action.runbook} with the plan context"
    else:
        title = f"group {group_no} ({group}), {when}: manual step, wait for confirmation: {action.manual}"
    detail: dict[str, Any] = {"action": action.model_dump(mode="json", exclude_none=True), "when": when,
                              "group_no": group_no}
    return NewStep(kind=action.kind, title=title, group=group, detail=detail)


def _groups(estate: Estate, plan: RecoveryPlan, failover_type: str, direction: Direction,
            machine_kind: str) -> list[NewStep]:
    steps: list[NewStep] = []
    rg = recovery_group(estate, plan, failover_type)
    network = recovery_network(estate, failover_type)
    for number, group in enumerate(plan.groups, start=1):
        steps.extend(_action_step(a, group_no=number, group=group.name, when="before") for a in group.before)
        for name in group.machines:
            machine = estate.machine(name)
            if direction == "primary-to-azure":
                size, _ = vm_size(estate, machine)
                title = (f"group {number} ({group.name}): fail over {name}: materialize {len(machine.disks)} "
                         f"disk(s) at the chosen point into {rg}, then the {size} VM on {network}")
            else:
                title = f"group {number} ({group.name}): fail back {name} to its vSphere VM"
            steps.append(NewStep(kind=machine_kind, title=title, group=group.name, machine=name,
                                 detail={"group_no": number}))
        steps.extend(_action_step(a, group_no=number, group=group.name, when="after") for a in group.after)
    return steps


def failover_steps(estate: Estate, plan: RecoveryPlan, failover_type: FailoverType, choice: Choice,
                   *, automatic_shutdown: bool) -> list[NewStep]:
    machines = plan_machines(plan)
    steps: list[NewStep] = []
    if failover_type != "test":
        for name in machines:
            how = "automatically" if automatic_shutdown else "by the operator (manual: confirm when done)"
            suffix = "; a failure does not stop an unplanned failover" if failover_type == "unplanned" else ""
            steps.append(NewStep(kind="shutdown", title=f"shut down source machine {name} {how}{suffix}",
                                 machine=name, detail={"automatic": automatic_shutdown,
                                                       "best_effort": failover_type == "unplanned"}))
    if failover_type == "planned":
        for name in machines:
            steps.append(NewStep(kind="drain", machine=name,
                                 title=f"wait until {name}'s final recovery point is applied (zero data loss)"))
        point_text = "the drained final points"
    else:
        point_text = str(choice)
    steps.append(NewStep(kind="choose_point", title=f"choose the recovery point: {point_text} "
                                                    f"for {', '.join(machines)}",
                         detail={"choice": str(choice)}))
    steps.extend(_groups(estate, plan, failover_type, "primary-to-azure", "failover_machine"))
    if plan.traffic_manager is not None and failover_type != "test":
        tm = plan.traffic_manager
        steps.append(NewStep(kind="traffic_manager",
                             title=f"switch Traffic Manager profile {tm.profile} from {tm.on_premises_endpoint} "
                                   "to the Azure endpoint",
                             detail={"profile": tm.profile, "from": tm.on_premises_endpoint,
                                     "to": tm.azure_endpoint or "azure"}))
    return steps


def cleanup_steps(estate: Estate, plan: RecoveryPlan) -> list[NewStep]:
    rg = recovery_group(estate, plan, "test")
    return [NewStep(kind="delete_group", title=f"remove the test failover's resources: resource group {rg}",
                    detail={"resource_group": rg})]


def commit_steps(plan: RecoveryPlan) -> list[NewStep]:
    return [NewStep(kind="commit", machine=name, title=f"commit {name}: drop its other recovery points")
            for name in plan_machines(plan)]


def change_point_steps(estate: Estate, plan: RecoveryPlan, failover_type: FailoverType,
                       choice: Choice) -> list[NewStep]:
    steps = [NewStep(kind="choose_point", title=f"choose the new recovery point: {choice}",
                     detail={"choice": str(choice)})]
    rg = recovery_group(estate, plan, failover_type)
    for name in plan_machines(plan):
        steps.append(NewStep(kind="failover_machine", machine=name,
                             title=f"re-materialize {name}'s disks at the new point into {rg}"))
    return steps


def failback_steps(estate: Estate, plan: RecoveryPlan) -> list[NewStep]:
    """Reprotect (reverse replication to the on-premises master target), then fail back in plan order.

    Refused when any machine of the plan is physical: ASR fails back only to VMware VMs (the seed);
    and when the plan says `failback: false`."""
    physical = [m for m in plan_machines(plan) if estate.machine(m).kind == "physical"]
    if physical:
        raise PlanNotRunnable(
            f"failback of physical machine(s) {', '.join(physical)} is not supported: a physical server "
            "fails back only to a VMware VM (as in ASR); recover it to a vSphere VM and protect that, "
            "or rebuild the server from its Azure VM"
        )
    if not plan.failback:
        raise PlanNotRunnable(
            f"plan {plan.name} says failback: false: its machines stay in Azure; to fail back, set "
            "`failback: true` on the plan in the spec (VMware machines only) and run the failback again"
        )
    steps = [NewStep(kind="reprotect", machine=name,
                     title=f"reprotect {name}: reverse replication from Azure to the on-premises master target")
             for name in plan_machines(plan)]
    for name in plan_machines(plan):
        steps.append(NewStep(kind="shutdown", machine=name, title=f"shut down {name}'s Azure VM by the operator "
                                                                  "(manual: confirm when done)",
                             detail={"automatic": False, "best_effort": False}))
    steps.extend(_groups(estate, plan, "planned", "azure-to-primary", "failback_machine"))
    if plan.traffic_manager is not None:
        tm = plan.traffic_manager
        steps.append(NewStep(kind="traffic_manager",
                             title=f"switch Traffic Manager profile {tm.profile} back to {tm.on_premises_endpoint}",
                             detail={"profile": tm.profile, "from": tm.azure_endpoint or "azure",
                                     "to": tm.on_premises_endpoint}))
    return steps


def render(steps: list[NewStep]) -> list[str]:
    return [f"{number:>3}. {step.title}" for number, step in enumerate(steps, start=1)]
