"""The replication data path (`dr_agent`, issue 6) plugged into the configuration server and the runner.

    collect_catalog   a master target's recovery point catalog -> the configuration server's
                      catalog (per-disk RPO and points), as the master target reports it
    AgentExporter     the runner's Exporter: `dr_agent.export.export` of a disk at a point

A spec disk (machine, disk) is the data path's stream `<machine>-<disk>` (`stream_name`): the name
the agent opens its sink with, the master target's replica and catalog key. `dr_agent` is imported
inside the functions: it is the 'agent' extra.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dr.errors import MissingExtra
from dr.failover.provider import FailoverError
from dr.model import Estate
from dr.server.schemas import CatalogReport, DiskCatalog, RecoveryPoint
from dr.server.service import ConfigServer, Principal


def stream_name(machine: str, disk: str) -> str:
    """The data path's name of a spec disk (one replica, one catalog entry)."""
    return f"{machine}-{disk}"


def _agent_catalog(path: Path) -> Any:
    try:
        from dr_agent.catalog import Catalog
    except ImportError:
        raise MissingExtra("the data path needs the 'agent' extra: pip install 'dr-as-code[agent]' ./agent") from None
    if not path.is_file():
        raise FailoverError(f"{path}: no master target catalog there; expected STATE_DIR/catalog.sqlite")
    return Catalog(path)


def catalog_report(estate: Estate, catalog_path: Path, *, now: float) -> CatalogReport:
    """What a master target reports: every spec disk it replicates, its points, and its RPO (the age
    of its newest point: nothing after it is recoverable yet)."""
    catalog = _agent_catalog(catalog_path)
    try:
        known = set(catalog.disk_names())
        disks = []
        for machine in estate.machines:
            for disk in machine.disks:
                name = stream_name(machine.name, disk.name)
                if name not in known:
                    continue
                points = [p for p in catalog.points(name) if p.disk == name]
                disks.append(DiskCatalog(
                    machine=machine.name, disk=disk.name,
                    rpo_seconds=max(0.0, now - points[-1].time) if points else None,
                    points=[RecoveryPoint(point_id=p.id, time=p.time, kind=p.kind, group_id=p.group_id,
                                          processed=True) for p in points],
                ))
    finally:
        catalog.close()
    return CatalogReport(disks=disks)


def collect_catalog(server: ConfigServer, master_target: str, catalog_path: Path) -> int:
    """Report a master target's catalog to the configuration server; return the number of points."""
    report = catalog_report(server.estate, catalog_path, now=server.clock())
    server.report_catalog(Principal(name=master_target, role="master_target"), report)
    return sum(len(d.points) for d in report.disks)


@dataclass(frozen=True, kw_only=True)
class AgentExporter:
    """Materialize through the data path: the replica (file or page blob) at a catalog point."""

    catalog_path: Path
    connection_string: str | None = None

    def export(self, machine: str, disk: str, point_id: str, dest: Path) -> int:
        from dr_agent.errors import AgentError
        from dr_agent.export import export

        catalog = _agent_catalog(self.catalog_path)
        try:
            export(catalog, stream_name(machine, disk), point_id, dest, connection_string=self.connection_string)
        except AgentError as err:
            raise FailoverError(f"export of {machine}/{disk} at point {point_id} failed: {err}") from None
        finally:
            catalog.close()
        return dest.stat().st_size
