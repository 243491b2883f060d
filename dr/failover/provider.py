"""What the recovery-plan runner acts on, behind small interfaces so the data path plugs in.

    Catalog        the recovery points of each disk (the configuration server's catalog, which the
                   master targets report)
    Exporter       a disk's bytes at a recovery point, into a local file (the data path's export
                   from where the configuration server's catalog says the point is:
                   `dr.failover.datapath.ReplicaExporter`)
    DiskStore      where recovered disks go in Azure: page blobs, one container per failed-over
                   plan's resource group (Azurite in tests)
    SourceControl  shuts a source machine down (vSphere power-off, SSH for a physical server); when
                   none is configured the shutdown is a manual step the operator confirms
    Replication    the data path's control: drain after shutdown, commit, reverse replication

`Environment` bundles them for one run. Provisioning the recovery VMs belongs to the Pulumi stack;
where the Pulumi CLI is absent the runner materializes the disks and reports the VMs it would create
(`provisioning_report`).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from dr.errors import EXIT_INVALID, DrError, MissingExtra
from dr.failover.points import Point
from dr.model import Estate, Machine, RecoveryPlan
from dr.server.store import Store

# Azure page blobs are made of 512-byte pages (Azure Storage docs, "Overview of page blobs").
PAGE_BYTES = 512
# One Put Page carries at most 4 MiB (Azure Storage REST docs, "Put Page").
PUT_PAGE_MAX_BYTES = 4 * 1024 * 1024
# A drain waits at most this long for the final point of a shut-down machine (seconds; our choice,
# ASR's planned failover allows about as long for its final sync).
DRAIN_TIMEOUT_S = 15 * 60
# How often a drain re-reads the catalog (seconds).
DRAIN_POLL_S = 1.0


class FailoverError(DrError):
    """A failover step cannot be done: the message names the step, the machine and the fix."""

    exit_code = EXIT_INVALID


class Catalog(Protocol):
    def points(self, machine: str, disk: str) -> list[Point]: ...


class Exporter(Protocol):
    def export(self, machine: str, disk: str, point_id: str, dest: Path) -> int:
        """Write the disk at the point to `dest` (FILE.vhd: a fixed VHD; FILE.img: raw); return its size."""


class DiskStore(Protocol):
    def put_disk(self, group: str, name: str, source: Path) -> str:
        """Upload `source` as page blob `name` in the resource group's container; return its URL."""

    def list_disks(self, group: str) -> list[str]: ...

    def delete_group(self, group: str) -> int:
        """Remove everything of the resource group; return how many disks were removed."""


class SourceControl(Protocol):
    def shutdown(self, machine: Machine) -> str:
        """Shut the source machine down (idempotent); return what was done."""


class Replication(Protocol):
    def reprotect(self, machine: Machine, *, job: str, group: str) -> str:
        """Replicate the recovered machine (its disks in resource group `group`) back to the
        on-premises master target."""

    def failback(self, machine: Machine, *, job: str, group: str) -> str:
        """After the Azure VM is shut down: send its last changes, mark the final point, and restore
        the on-premises VM's disks at it."""

    def commit(self, machine: Machine, point_id: str) -> str:
        """Drop the other recovery points of the machine: the failover can no longer change point."""


@dataclass(frozen=True, kw_only=True)
class StoreCatalog:
    """The configuration server's catalog (what master targets report through the API)."""

    store: Store

    def points(self, machine: str, disk: str) -> list[Point]:
        rows = self.store.query(
            "SELECT point_id, time, kind, group_id, processed FROM recovery_points "
            "WHERE machine = ? AND disk = ? ORDER BY time",
            (machine, disk),
        )
        return [Point(point_id=r["point_id"], time=r["time"], kind=r["kind"], group_id=r["group_id"],
                      processed=bool(r["processed"])) for r in rows]

    def drain(self, machine: Machine, *, since: float, timeout_s: float = DRAIN_TIMEOUT_S,
              sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.time) -> Point:
        """Wait until every disk of the shut-down machine has a processed point at or after `since`
        (the final bookmark the agent inserts at shutdown, applied by the master target): nothing the
        source acknowledged is left behind. Returns that point."""
        deadline = clock() + timeout_s
        while True:
            finals = []
            for disk in machine.disks:
                fresh = [p for p in self.points(machine.name, disk.name) if p.time >= since and p.processed]
                finals.append({p.point_id: p for p in fresh})
            common = set(finals[0]).intersection(*finals[1:])
            if common:
                best = max(common, key=lambda pid: finals[0][pid].time)
                return finals[0][best]
            if clock() >= deadline:
                raise FailoverError(
                    f"{machine.name}: no final recovery point after shutdown within {timeout_s:.0f} s "
                    "(is its process server reaching the master target? see `dr status`); "
                    "resume the job once replication caught up, or run an unplanned failover"
                )
            sleep(DRAIN_POLL_S)

    def commit(self, machine: Machine, point_id: str) -> str:
        with self.store.transaction() as tx:
            rows = tx.query("SELECT COUNT(*) AS n FROM recovery_points WHERE machine = ? AND point_id <> ?",
                            (machine.name, point_id))
            tx.execute("DELETE FROM recovery_points WHERE machine = ? AND point_id <> ?", (machine.name, point_id))
        return f"{machine.name}: committed at point {point_id}, {rows[0]['n']} other point record(s) dropped"


def container_name(group: str) -> str:
    """An Azure container name for a resource group (the stack's recovery VMs import from it)."""
    from dr.azure.naming import recovered_disk_container

    return recovered_disk_container(group)


@dataclass(frozen=True, kw_only=True)
class BlobDiskStore:
    """Recovered disks as page blobs (azure-storage-blob), one container per resource group."""

    connection_string: str

    def _service(self) -> Any:
        try:
            from azure.storage.blob import BlobServiceClient
        except ImportError:
            raise MissingExtra(
                "materializing disks needs the 'agent' extra: pip install 'dr-as-code[agent]'"
            ) from None
        return BlobServiceClient.from_connection_string(self.connection_string)

    def put_disk(self, group: str, name: str, source: Path) -> str:
        from azure.core.exceptions import ResourceExistsError

        container = self._service().get_container_client(container_name(group))
        try:
            container.create_container()
        except ResourceExistsError:
            pass
        size = source.stat().st_size
        padded = -(-size // PAGE_BYTES) * PAGE_BYTES
        blob = container.get_blob_client(name)
        blob.create_page_blob(size=padded)
        with source.open("rb") as handle:
            offset = 0
            while offset < size:
                chunk = handle.read(PUT_PAGE_MAX_BYTES)
                length = -(-len(chunk) // PAGE_BYTES) * PAGE_BYTES
                chunk = chunk.ljust(length, b"\0")
                if chunk.count(0) != len(chunk):  # zero pages are already zero in a new page blob
                    blob.upload_page(chunk, offset=offset, length=length)
                offset += length
        return str(blob.url)

    def list_disks(self, group: str) -> list[str]:
        from azure.core.exceptions import ResourceNotFoundError

        container = self._service().get_container_client(container_name(group))
        try:
            return sorted(b.name for b in container.list_blobs())
        except ResourceNotFoundError:
            return []

    def delete_group(self, group: str) -> int:
        from azure.core.exceptions import ResourceNotFoundError

        count = len(self.list_disks(group))
        try:
            self._service().delete_container(container_name(group))
        except ResourceNotFoundError:
            return 0
        return count


@dataclass(frozen=True, kw_only=True)
class Environment:
    """Everything a run acts on. `source` None: source shutdowns are manual steps."""

    catalog: StoreCatalog
    exporter: Exporter
    disks: DiskStore
    source: SourceControl | None = None
    replication: Replication | None = None
    workdir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()))


def recovery_group(estate: Estate, plan: RecoveryPlan, failover_type: str) -> str:
    """One resource group per failed-over plan; a test failover gets its own, removed by cleanup."""
    from dr.azure.naming import failover_resource_group

    name = failover_resource_group(estate.azure.resource_group, plan.name)
    return f"{name}-test" if failover_type == "test" else name


def recovery_network(estate: Estate, failover_type: str) -> str:
    network = estate.azure.network
    if failover_type == "test":
        return network.test_vnet or f"{network.vnet}-test"
    return network.vnet


def vm_size(estate: Estate, machine: Machine) -> tuple[str, str]:
    """The recovery VM size the plan chose, and why: the planner's own decision (the one `dr plan`
    shows and the stack declares, its catalog's checks included), never sized again here."""
    from dr.plan import make_plan

    vm = next((v for v in make_plan(estate).failover_vms if v.machine == machine.name), None)
    if vm is None:
        raise FailoverError(f"the plan sizes no recovery VM for {machine.name}: run `dr plan` to see why")
    return vm.size, "; ".join(vm.reasons) or ("azure_size in the spec" if vm.overridden else "the plan's size")


def provisioning_report(estate: Estate, plan: RecoveryPlan, machine: Machine, failover_type: str,
                        disk_urls: Sequence[str]) -> dict[str, Any]:
    size, reason = vm_size(estate, machine)
    return {
        "vm": machine.name,
        "resource_group": recovery_group(estate, plan, failover_type),
        "region": estate.azure.region,
        "size": size,
        "size_reason": reason,
        "network": recovery_network(estate, failover_type),
        "subnet": estate.azure.network.subnet,
        "nics": machine.nics,
        "os_disk": disk_urls[0] if disk_urls else None,
        "data_disks": list(disk_urls[1:]),
        "provisioned": False,
        "note": "the Pulumi CLI is not installed here: disks are materialized, the VM is reported",
    }
