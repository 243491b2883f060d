"""The lab's record of what it made: `<lab dir>/lab.json`, rewritten (atomically) after every step of
`up`, so `status` and `down` know what exists even after an `up` that crashed half-way. `down` does
not depend on it alone: it also finds what the lab owns by name (namespaces, interfaces, loops and
mounts under the lab's directory)."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dr.lab.errors import LabError

STATE_FILE = "lab.json"
VERSION = 1


@dataclass(frozen=True)
class Process:
    """A process the lab started (or found) on a node."""

    component: str       # "azurite", "config-server", "sshd:<machine>", "workload:<machine>", a server name
    node: str            # the node it runs on
    pid: int
    log: str
    argv: tuple[str, ...] = ()


@dataclass(frozen=True)
class DiskRecord:
    machine: str
    disk: str
    image: str
    device: str
    mount: str


@dataclass(frozen=True)
class LabState:
    estate: str
    spec: str
    directory: str
    disk_size: int
    started: float
    steps: tuple[str, ...] = ()
    host_dirs: tuple[str, ...] = ()          # empty directories `up` created on the host (mount targets)
    disks: tuple[DiskRecord, ...] = ()
    processes: tuple[Process, ...] = ()
    agents: dict[str, str] = field(default_factory=dict)   # machine -> what the push said (or why not)

    def with_step(self, step: str) -> LabState:
        return dataclasses.replace(self, steps=(*self.steps, step)) if step not in self.steps else self

    def with_process(self, proc: Process) -> LabState:
        rest = tuple(p for p in self.processes if p.component != proc.component)
        return dataclasses.replace(self, processes=(*rest, proc))

    def with_disk(self, disk: DiskRecord) -> LabState:
        rest = tuple(d for d in self.disks if (d.machine, d.disk) != (disk.machine, disk.disk))
        return dataclasses.replace(self, disks=(*rest, disk))

    def with_host_dirs(self, dirs: list[str]) -> LabState:
        return dataclasses.replace(self, host_dirs=tuple(dict.fromkeys((*self.host_dirs, *dirs))))

    def process(self, component: str) -> Process | None:
        return next((p for p in self.processes if p.component == component), None)

    def to_json(self) -> dict[str, Any]:
        return {"version": VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabState:
        try:
            return cls(
                estate=data["estate"], spec=data["spec"], directory=data["directory"],
                disk_size=int(data["disk_size"]), started=float(data["started"]),
                steps=tuple(data.get("steps", ())), host_dirs=tuple(data.get("host_dirs", ())),
                disks=tuple(DiskRecord(**d) for d in data.get("disks", ())),
                processes=tuple(Process(**{**p, "argv": tuple(p.get("argv", ()))}) for p in data.get("processes", ())),
                agents=dict(data.get("agents", {})))
        except (KeyError, TypeError, ValueError) as err:
            raise LabError(f"the lab's state file is damaged ({err}): run `dr lab down SPEC`, which also works "
                           "without it") from None


def load(directory: Path) -> LabState | None:
    path = directory / STATE_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:
        raise LabError(f"{path}: not JSON: run `dr lab down SPEC`, which also works without it") from None
    return LabState.from_json(data)


def save(directory: Path, state: LabState) -> LabState:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / STATE_FILE
    tmp = path.with_name(f".{STATE_FILE}.tmp")
    tmp.write_text(json.dumps(state.to_json(), indent=1))
    os.replace(tmp, path)
    return state
