"""The replication data path (`dr_agent`) plugged into the recovery-plan runner.

    ReplicaExporter          the runner's Exporter: a disk at a recovery point, read from where the
                             configuration server's catalog of record says the point's bytes are
                             (the replica's location and the point's snapshot, as its master target
                             reports them), through `dr_agent.export.export_location`
    AgentReverseReplication  reverse replication for failback, on the data path

A spec disk (machine, disk) is the data path's stream `dr_agent.contract.stream_name`. Page blob
replicas are read with their storage account's connection string from the environment, under the
name the master target gets it (`dr.azure.naming.storage_env`). `dr_agent`'s services are imported
inside the functions: they are the 'agent' extra.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dr_agent.contract import stream_name

from dr.azure.naming import recovered_disk_blob, storage_env
from dr.errors import DrError, MissingExtra
from dr.failover.provider import FailoverError
from dr.server.service import ConfigServer


def _agent_catalog(path: Path) -> Any:
    try:
        from dr_agent.catalog import Catalog
    except ImportError:
        raise MissingExtra("the data path needs the 'agent' extra: pip install 'dr-as-code[agent]' ./agent") from None
    if not path.is_file():
        raise FailoverError(f"{path}: no master target catalog there; expected STATE_DIR/catalog.sqlite")
    return Catalog(path)


@dataclass(frozen=True, kw_only=True)
class ReplicaExporter:
    """Materialize a disk at a point from the configuration server's state: which replica (file or
    page blob, in which account and container), and which of its snapshots holds the point. A plan
    spanning several master targets reads each disk from its own."""

    server: ConfigServer
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))

    def connection_string(self, machine: str, disk: str, location: Mapping[str, Any]) -> str | None:
        if location.get("kind") != "pageblob":
            return None
        variable = storage_env(str(location["account"]))
        value = self.environ.get(variable)
        if not value:
            raise FailoverError(
                f"{machine}/{disk}: its replica is a page blob in storage account {location['account']}: "
                f"export {variable} with that account's connection string (as its master target has it)")
        return value

    def export(self, machine: str, disk: str, point_id: str, dest: Path) -> int:
        from dr_agent.errors import AgentError
        from dr_agent.export import export_location

        try:
            replica = self.server.replica(machine, disk)
            snapshot = self.server.point_snapshot(machine, disk, point_id)
        except DrError as err:
            raise FailoverError(f"export of {machine}/{disk} at point {point_id}: {err}") from None
        if snapshot is None:
            raise FailoverError(f"export of {machine}/{disk} at point {point_id}: the catalog names no snapshot "
                                f"for it (reported by an older master target {replica.reporter}?): upgrade it")
        location = {**replica.location, "size": replica.size}
        try:
            export_location(location, snapshot, dest,
                            connection_string=self.connection_string(machine, disk, location))
        except AgentError as err:
            raise FailoverError(f"export of {machine}/{disk} at point {point_id} from {replica.reporter}'s "
                                f"replica failed: {err}") from None
        return dest.stat().st_size


# How long reverse replication waits for the on-premises master target to apply a disk (seconds).
REVERSE_APPLY_TIMEOUT_S = 3600.0


@dataclass(frozen=True, kw_only=True)
class AgentReverseReplication:
    """Reverse replication for failback, on the data path: each recovered disk (a page blob in the
    failed-over plan's resource group, what the Azure VM runs on) is streamed by an agent sink to the
    on-premises process server and master target; failback sends the last state, bookmarks it, and
    exports the on-premises replica at that point as the vSphere VM's disk (`restore_dir`)."""

    connection_string: str                  # the Azure storage holding the recovered disks
    process_server: tuple[str, int]         # the on-premises process server (reverse direction)
    # The recovered machines' agent identities: DIR/<machine>/ (dr_agent.pki.Identity layout), each
    # registered for its machine (`--machine`), as a process server lets an agent's certificate write
    # only the streams of the machine it names; a DIR holding one identity serves a plan of one machine.
    identity_dir: Path
    onprem_catalog: Path                    # the on-premises master target's catalog.sqlite
    restore_dir: Path                       # where the vSphere VM's disks are restored
    onprem_connection_string: str | None = None  # when the on-premises replicas are page blobs
    apply_timeout_s: float = REVERSE_APPLY_TIMEOUT_S
    # One sink per disk for the whole failback: the data path numbers a stream's records, and a new
    # sink that writes before it has connected would restart at 1 (its records then taken for replays).
    sinks: dict[tuple[str, str], Any] = field(default_factory=dict)

    def close(self) -> None:
        for sink in self.sinks.values():
            sink.close()
        self.sinks.clear()

    def _identity_dir(self, machine: str) -> Path:
        from dr_agent.contract import IDENTITY_FILES

        own = self.identity_dir / machine
        return own if (own / IDENTITY_FILES["cert"]).is_file() else self.identity_dir

    def _send(self, machine: Any, group: str, point_id: str, kind: str) -> list[int]:
        from azure.storage.blob import BlobServiceClient
        from dr_agent.errors import AgentError
        from dr_agent.export import open_location, plan_reads
        from dr_agent.pageblob import read_range
        from dr_agent.pki import Identity
        from dr_agent.sink import ProcessServerSink
        from dr_agent.vhd import FOOTER_SIZE, parse_footer

        from dr.failover.provider import container_name

        service = BlobServiceClient.from_connection_string(self.connection_string)
        sent = []
        for disk in machine.disks:
            blob = service.get_blob_client(container_name(group), recovered_disk_blob(machine.name, disk.name))
            total = int(blob.get_blob_properties().size)
            size = total - FOOTER_SIZE
            try:
                footer = read_range(blob, size, FOOTER_SIZE)
            except AgentError as err:
                raise FailoverError(f"{machine.name}/{disk.name}: reading the recovered blob: {err}") from None
            if parse_footer(footer) != size:
                raise FailoverError(f"{machine.name}/{disk.name}: the recovered blob is not a fixed VHD")
            key = (machine.name, disk.name)
            if key not in self.sinks:
                self.sinks[key] = ProcessServerSink(
                    disk=stream_name(machine.name, disk.name), size=size, servers=[self.process_server],
                    identity=Identity(self._identity_dir(machine.name)), patience_s=self.apply_timeout_s)
            sink = self.sinks[key]
            count = 0
            # The data path's reader: the page ranges listed once, then ranged GETs of what is written.
            reader = open_location({"kind": "pageblob", "container": blob.container_name, "blob": blob.blob_name},
                                   None, size=size, connection_string=self.connection_string)
            try:
                for offset, n in plan_reads(reader.ranges()):
                    chunk = reader.read(offset, n)
                    if chunk.count(0) != len(chunk):
                        sink.write(offset, chunk)
                        count += len(chunk)
            except AgentError as err:
                raise FailoverError(f"{machine.name}/{disk.name}: reverse replication failed: {err}") from None
            finally:
                reader.close()
            sink.flush()
            sink.bookmark(point_id, kind, None)
            sink.wait_applied(self.apply_timeout_s)
            sent.append(count)
        return sent

    def commit(self, machine: Any, point_id: str) -> str:
        """Committing a failover drops the Azure-side points (the catalog does that); the reverse
        stream's points are the failback's own and stay until the failback ends."""
        return f"{machine.name}: reverse replication keeps its own points (nothing to drop at {point_id})"

    def reprotect(self, machine: Any, *, job: str, group: str) -> str:
        sent = self._send(machine, group, f"reprotect-{job}", "crash")
        return (f"{machine.name}: reverse replication to the on-premises master target, "
                f"{sum(sent)} byte(s) of {len(sent)} disk(s) sent")

    def failback(self, machine: Any, *, job: str, group: str) -> str:
        from dr_agent.errors import AgentError
        from dr_agent.export import export

        point = f"failback-{job}"
        self._send(machine, group, point, "app")
        catalog = _agent_catalog(self.onprem_catalog)
        restored = []
        try:
            for disk in machine.disks:
                dest = self.restore_dir / machine.name / f"{disk.name}.img"
                dest.parent.mkdir(parents=True, exist_ok=True)
                export(catalog, stream_name(machine.name, disk.name), point, dest,
                       connection_string=self.onprem_connection_string)
                restored.append(str(dest))
        except AgentError as err:
            raise FailoverError(f"{machine.name}: restoring the on-premises disks failed: {err}") from None
        finally:
            catalog.close()
        # The sinks stay open until `close()`: closing one while its reader thread is in a TLS call
        # has been seen to write a TLS alert into whatever file reused its descriptor (a data path
        # issue, reported); the owner closes them when the run is over.
        return f"{machine.name}: failed back at point {point}: " + ", ".join(restored)
