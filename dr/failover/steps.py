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

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Literal, Protocol, Self, TypeVar

from pydantic import ValidationError

from dr.errors import EXIT_INVALID, DrError
from dr.failover.points import Choice, Point
from dr.failover.provider import FailoverError, recovery_group, recovery_network, vm_size
from dr.model import Action, Estate, RecoveryPlan
from dr.server.jobs import NewStep, StepRecord

FailoverType = Literal["test", "planned", "unplanned"]
Direction = Literal["primary-to-azure", "azure-to-primary"]
TYPES: tuple[FailoverType, ...] = ("test", "planned", "unplanned")


class PlanNotRunnable(DrError):
    """The plan cannot run as asked (unknown plan, physical machine failback, wrong job state)."""

    exit_code = EXIT_INVALID


class StepKind(StrEnum):
    """Every kind of step a job holds: a closed set, each with one handler in the runner
    (`dr.failover.runner.HANDLERS`) and one detail shape (`DETAILS`). The values are what the job
    store holds: never rename one (stored jobs must still load)."""

    SHUTDOWN = "shutdown"                  # shut a source machine (or, failing back, its Azure VM) down
    DRAIN = "drain"                        # planned: wait for a machine's final recovery point
    CHOOSE_POINT = "choose_point"          # pick the recovery point of every machine of the plan
    FAILOVER_MACHINE = "failover_machine"  # materialize a machine's disks at its point; report its VM
    SCRIPT = "script"                      # a plan action: a script on the runner
    RUNBOOK = "runbook"                    # a plan action: a runbook given the plan context
    MANUAL = "manual"                      # a plan action: wait for an operator's confirmation
    TRAFFIC_MANAGER = "traffic_manager"    # switch the plan's Traffic Manager profile
    DELETE_GROUP = "delete_group"          # cleanup of a test failover: remove its resource group
    COMMIT = "commit"                      # drop a machine's other recovery points
    REPROTECT = "reprotect"                # reverse replication, Azure to the on-premises master target
    FAILBACK_MACHINE = "failback_machine"  # fail a machine back to its vSphere VM


def step_kind(step: StepRecord) -> StepKind:
    """The kind of a stored step; a kind this version does not know is a job written by another version."""
    try:
        return StepKind(step.kind)
    except ValueError:
        raise FailoverError(
            f"step {step.idx} is a {step.kind!r} step, which this version of dr does not know: the job was "
            "written by another version of dr; resume it with that version, or start a new job"
        ) from None


class _BadDetail(Exception):
    """A stored detail that does not have its kind's shape (turned into a FailoverError by `detail`)."""


def _field(raw: Mapping[str, Any], key: str, kind: type | tuple[type, ...], *, default: Any = ...) -> Any:
    if key not in raw or raw[key] is None:
        if default is ...:
            raise _BadDetail(f"no {key!r}")
        return default
    value = raw[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):  # a bool is an int
        raise _BadDetail(f"{key!r} is {type(value).__name__} {value!r}")
    return value


# ---------------------------------------------------------------- the detail of each kind of step
# A frozen dataclass per kind: `from_json` reads what the job store holds (jobs written by earlier
# versions included: every field added later has a default), `to_json` writes the same keys back.


@dataclass(frozen=True, kw_only=True)
class PointRef:
    """The recovery point a machine's disks are materialized at (a choice, a drain, a commit)."""

    machine: str
    point_id: str
    time: float
    kind: str                   # "crash" or "app"
    group_id: str | None = None  # the multi-VM point's group id

    @classmethod
    def of(cls, machine: str, point: Point) -> PointRef:
        return cls(machine=machine, point_id=point.point_id, time=point.time, kind=point.kind,
                   group_id=point.group_id)

    @classmethod
    def from_json(cls, raw: Any) -> PointRef:
        if not isinstance(raw, Mapping):
            raise _BadDetail(f"a point is {type(raw).__name__} {raw!r}")
        return cls(machine=_field(raw, "machine", str), point_id=_field(raw, "point_id", str),
                   time=float(_field(raw, "time", (int, float))), kind=_field(raw, "kind", str),
                   group_id=_field(raw, "group_id", str, default=None))

    def to_json(self) -> dict[str, Any]:
        return {"machine": self.machine, "point_id": self.point_id, "time": self.time, "kind": self.kind,
                "group_id": self.group_id}


def _points(raw: Any) -> dict[str, PointRef]:
    if not isinstance(raw, Mapping):
        raise _BadDetail(f"the points are {type(raw).__name__} {raw!r}")
    return {str(machine): PointRef.from_json(point) for machine, point in raw.items()}


class Detail(Protocol):
    def to_json(self) -> dict[str, Any]: ...


@dataclass(frozen=True, kw_only=True)
class ShutdownDetail:
    automatic: bool = False     # by the source provider (vCenter); else the operator confirms
    best_effort: bool = False   # unplanned failover: a failed shutdown does not stop the job

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Self:
        return cls(automatic=_field(raw, "automatic", bool, default=False),
                   best_effort=_field(raw, "best_effort", bool, default=False))

    def to_json(self) -> dict[str, Any]:
        return {"automatic": self.automatic, "best_effort": self.best_effort}


@dataclass(frozen=True, kw_only=True)
class DrainDetail:
    point: PointRef | None = None  # the final point, once drained

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Self:
        point = raw.get("point")
        return cls(point=None if point is None else PointRef.from_json(point))

    def to_json(self) -> dict[str, Any]:
        return {} if self.point is None else {"point": self.point.to_json()}


@dataclass(frozen=True, kw_only=True)
class ChoosePointDetail:
    choice: str                                  # as given (`Choice.parse` reads it)
    chosen: Mapping[str, PointRef] | None = None  # machine -> point, once chosen

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Self:
        chosen = raw.get("chosen")
        return cls(choice=_field(raw, "choice", str), chosen=None if chosen is None else _points(chosen))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"choice": self.choice}
        if self.chosen is not None:
            out["chosen"] = {m: p.to_json() for m, p in self.chosen.items()}
        return out


@dataclass(frozen=True, kw_only=True)
class FailoverMachineDetail:
    group_no: int | None = None          # the plan group (none in a change of point)
    point: PointRef | None = None        # once materialized: the point, the disks' URLs, the VM report
    disks: tuple[str, ...] = ()
    report: Mapping[str, Any] | None = None  # dr.failover.provider.provisioning_report (JSON)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Self:
        point, report = raw.get("point"), raw.get("report")
        disks = _field(raw, "disks", list, default=[])
        if not all(isinstance(d, str) for d in disks):
            raise _BadDetail(f"'disks' is {disks!r}")
        if report is not None and not isinstance(report, Mapping):
            raise _BadDetail(f"'report' is {type(report).__name__}")
        return cls(group_no=_field(raw, "group_no", int, default=None),
                   point=None if point is None else PointRef.from_json(point), disks=tuple(disks),
                   report=None if report is None else dict(report))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {} if self.group_no is None else {"group_no": self.group_no}
        if self.point is not None:
            out.update(point=self.point.to_json(), disks=list(self.disks), report=dict(self.report or {}))
        return out


@dataclass(frozen=True, kw_only=True)
class FailbackMachineDetail:
    group_no: int | None = None

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Self:
        return cls(group_no=_field(raw, "group_no", int, default=None))

    def to_json(self) -> dict[str, Any]:
        return {} if self.group_no is None else {"group_no": self.group_no}


@dataclass(frozen=True, kw_only=True)
class ActionDetail:
    """A script, runbook or manual step: the plan's action as the spec gave it."""

    action: Action
    when: str = ""                 # "before" or "after" its group's machines
    group_no: int | None = None

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Self:
        action = _field(raw, "action", Mapping)
        try:
            parsed = Action.model_validate(dict(action))
        except ValidationError as err:
            raise _BadDetail(f"'action' {dict(action)!r}: {err.errors()[0]['msg']}") from None
        return cls(action=parsed, when=_field(raw, "when", str, default=""),
                   group_no=_field(raw, "group_no", int, default=None))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.action.model_dump(mode="json", exclude_none=True), "when": self.when}
        if self.group_no is not None:
            out["group_no"] = self.group_no
        return out


@dataclass(frozen=True, kw_only=True)
class TrafficManagerDetail:
    profile: str
    from_endpoint: str
    to_endpoint: str

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Self:
        return cls(profile=_field(raw, "profile", str), from_endpoint=_field(raw, "from", str),
                   to_endpoint=_field(raw, "to", str))

    def to_json(self) -> dict[str, Any]:
        return {"profile": self.profile, "from": self.from_endpoint, "to": self.to_endpoint}


@dataclass(frozen=True, kw_only=True)
class DeleteGroupDetail:
    resource_group: str

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Self:
        return cls(resource_group=_field(raw, "resource_group", str))

    def to_json(self) -> dict[str, Any]:
        return {"resource_group": self.resource_group}


@dataclass(frozen=True, kw_only=True)
class CommitDetail:
    # The point the disks hold, recorded when the commit was started (a job written before that was
    # recorded has none: the failover's own choice is committed).
    point: PointRef | None = None

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Self:
        point = raw.get("point")
        return cls(point=None if point is None else PointRef.from_json(point))

    def to_json(self) -> dict[str, Any]:
        return {} if self.point is None else {"point": self.point.to_json()}


@dataclass(frozen=True, kw_only=True)
class ReprotectDetail:
    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Self:
        return cls()

    def to_json(self) -> dict[str, Any]:
        return {}


# The detail shape of each kind (tests/failover/test_steps.py checks every kind has one).
DETAILS: Mapping[StepKind, type[Any]] = MappingProxyType({
    StepKind.SHUTDOWN: ShutdownDetail,
    StepKind.DRAIN: DrainDetail,
    StepKind.CHOOSE_POINT: ChoosePointDetail,
    StepKind.FAILOVER_MACHINE: FailoverMachineDetail,
    StepKind.SCRIPT: ActionDetail,
    StepKind.RUNBOOK: ActionDetail,
    StepKind.MANUAL: ActionDetail,
    StepKind.TRAFFIC_MANAGER: TrafficManagerDetail,
    StepKind.DELETE_GROUP: DeleteGroupDetail,
    StepKind.COMMIT: CommitDetail,
    StepKind.REPROTECT: ReprotectDetail,
    StepKind.FAILBACK_MACHINE: FailbackMachineDetail,
})

D = TypeVar("D")


def detail(step: StepRecord, shape: type[D]) -> D:
    """A stored step's detail in its kind's shape: the one place a job's JSON becomes typed. A kind
    or a detail this version cannot read is a one-line FailoverError (a job of another version)."""
    kind = step_kind(step)
    expected: type[Any] = DETAILS[kind]
    if expected is not shape:
        raise TypeError(f"a {kind} step's detail is a {expected.__name__}, not a {shape.__name__}")
    try:
        if not isinstance(step.detail, Mapping):
            raise _BadDetail(f"a {type(step.detail).__name__}, not an object")
        parsed: D = DETAILS[kind].from_json(step.detail)
        if isinstance(parsed, ActionDetail) and parsed.action.kind != kind:
            raise _BadDetail(f"a {parsed.action.kind} action")
    except _BadDetail as err:
        raise FailoverError(
            f"step {step.idx} ({kind}) holds a detail this version of dr cannot read ({err}): the job was "
            "written by another version of dr; resume it with that version, or start a new job"
        ) from None
    return parsed


def new_step(kind: StepKind, title: str, step_detail: Detail, *, group: str | None = None,
             machine: str | None = None) -> NewStep:
    """A step to store: its kind's value and its detail's JSON (what `detail` reads back)."""
    if not isinstance(step_detail, DETAILS[kind]):
        raise TypeError(f"a {kind} step's detail is a {DETAILS[kind].__name__}, not {type(step_detail).__name__}")
    return NewStep(kind=kind.value, title=title, group=group, machine=machine, detail=step_detail.to_json())


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
    return new_step(StepKind(action.kind), title, ActionDetail(action=action, when=when, group_no=group_no),
                    group=group)


def _groups(estate: Estate, plan: RecoveryPlan, failover_type: str, direction: Direction) -> list[NewStep]:
    steps: list[NewStep] = []
    rg = recovery_group(estate, plan, failover_type)
    network = recovery_network(estate, failover_type)
    machine_kind = StepKind.FAILOVER_MACHINE if direction == "primary-to-azure" else StepKind.FAILBACK_MACHINE
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
            step_detail = (FailoverMachineDetail(group_no=number) if direction == "primary-to-azure"
                           else FailbackMachineDetail(group_no=number))
            steps.append(new_step(machine_kind, title, step_detail, group=group.name, machine=name))
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
            steps.append(new_step(StepKind.SHUTDOWN, f"shut down source machine {name} {how}{suffix}",
                                  ShutdownDetail(automatic=automatic_shutdown,
                                                 best_effort=failover_type == "unplanned"), machine=name))
    if failover_type == "planned":
        for name in machines:
            steps.append(new_step(StepKind.DRAIN, f"wait until {name}'s final recovery point is applied "
                                                  "(zero data loss)", DrainDetail(), machine=name))
        point_text = "the drained final points"
    else:
        point_text = str(choice)
    steps.append(new_step(StepKind.CHOOSE_POINT, f"choose the recovery point: {point_text} "
                                                 f"for {', '.join(machines)}", ChoosePointDetail(choice=str(choice))))
    steps.extend(_groups(estate, plan, failover_type, "primary-to-azure"))
    if plan.traffic_manager is not None and failover_type != "test":
        tm = plan.traffic_manager
        steps.append(new_step(StepKind.TRAFFIC_MANAGER,
                              f"switch Traffic Manager profile {tm.profile} from {tm.on_premises_endpoint} "
                              "to the Azure endpoint",
                              TrafficManagerDetail(profile=tm.profile, from_endpoint=tm.on_premises_endpoint,
                                                   to_endpoint=tm.azure_endpoint or "azure")))
    return steps


def cleanup_steps(estate: Estate, plan: RecoveryPlan) -> list[NewStep]:
    rg = recovery_group(estate, plan, "test")
    return [new_step(StepKind.DELETE_GROUP, f"remove the test failover's resources: resource group {rg}",
                     DeleteGroupDetail(resource_group=rg))]


def commit_steps(plan: RecoveryPlan, held: Mapping[str, PointRef] | None = None) -> list[NewStep]:
    """Commit each machine at the point its disks hold (`held`: recorded in the step, see CommitDetail)."""
    held = held or {}
    return [new_step(StepKind.COMMIT, f"commit {name}: drop its other recovery points",
                     CommitDetail(point=held.get(name)), machine=name)
            for name in plan_machines(plan)]


def change_point_steps(estate: Estate, plan: RecoveryPlan, failover_type: FailoverType,
                       choice: Choice) -> list[NewStep]:
    steps = [new_step(StepKind.CHOOSE_POINT, f"choose the new recovery point: {choice}",
                      ChoosePointDetail(choice=str(choice)))]
    rg = recovery_group(estate, plan, failover_type)
    for name in plan_machines(plan):
        steps.append(new_step(StepKind.FAILOVER_MACHINE, f"re-materialize {name}'s disks at the new point into {rg}",
                              FailoverMachineDetail(), machine=name))
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
    steps = [new_step(StepKind.REPROTECT,
                      f"reprotect {name}: reverse replication from Azure to the on-premises master target",
                      ReprotectDetail(), machine=name)
             for name in plan_machines(plan)]
    for name in plan_machines(plan):
        steps.append(new_step(StepKind.SHUTDOWN, f"shut down {name}'s Azure VM by the operator "
                                                 "(manual: confirm when done)",
                              ShutdownDetail(automatic=False, best_effort=False), machine=name))
    steps.extend(_groups(estate, plan, "planned", "azure-to-primary"))
    if plan.traffic_manager is not None:
        tm = plan.traffic_manager
        steps.append(new_step(StepKind.TRAFFIC_MANAGER,
                              f"switch Traffic Manager profile {tm.profile} back to {tm.on_premises_endpoint}",
                              TrafficManagerDetail(profile=tm.profile, from_endpoint=tm.azure_endpoint or "azure",
                                                   to_endpoint=tm.on_premises_endpoint)))
    return steps


def render(steps: list[NewStep]) -> list[str]:
    return [f"{number:>3}. {step.title}" for number, step in enumerate(steps, start=1)]
