"""A replica disk as an Azure page blob laid out as a fixed VHD (azure-storage-blob).

The blob is `vhd.virtual_size(size) + 512` bytes: the disk, zeros up to the next MiB (Azure's rule
for a VHD's virtual size), then the fixed-VHD footer, so at failover it becomes a managed disk as
is. Writes go out as Put Page calls of at most 4 MiB (the service's limit), many
in flight per disk (one page blob accepts about 60 MiB/s, per Azure's scalability targets; one
request at a time reaches a fraction of that). `apply` returns once its calls are queued: the
calls of the next group go out while the previous group's are still in flight, and a call whose
range overlaps one in flight waits for it (the stream's order). The applied sequence number is
stored in the blob's metadata by the commit thread once every call before it succeeded, so the
data and its position travel together. Recovery points are blob snapshots, which Azure stores
incrementally.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from dr_agent import vhd
from dr_agent.errors import TargetError
from dr_agent.target import Committer, Data, Done

log = logging.getLogger(__name__)

# The Put Page limit (bytes), from the Blob service REST reference.
MAX_PUT_PAGE = 4 * 1024 * 1024
# Put Page calls in flight per disk: measured against Azurite on this VM, 8 saturates it; real
# Azure storage gains up to about 16.
PARALLEL_PUTS = 8
# Calls queued or in flight per disk before `apply` waits (bounds the memory they hold: 4 MiB each).
QUEUED_PUTS = 4 * PARALLEL_PUTS
# Bytes per ranged Get Blob when reading (export, resync hashes): 4 MiB, the Put Page size; a
# range of at most 4 MiB may also ask for its MD5 (Blob service REST reference, "Get Blob").
MAX_GET_RANGE = 4 * 1024 * 1024
# Attempts of one ranged read whose body broke off mid-stream (the SDK's own download retries 3 times).
READ_ATTEMPTS = 3
SEQ_KEY = "drseq"


def load_sdk() -> Any:
    """The azure.storage.blob module; TargetError with the pip line when it is not installed."""
    try:
        import azure.storage.blob as sdk
    except ImportError:  # pragma: no cover - an install without the azure extra
        raise TargetError("page blobs need azure-storage-blob: pip install 'dr-agent[azure]'") from None
    return sdk


def _client(conn_str: str, container: str, on_retry: Callable[[str], None] | None = None) -> Any:
    """A container client; `on_retry(why)` is told of every failed attempt the SDK is about to retry
    (its default policy: 3 retries 15 s, 18 s, 24 s apart, so a Put Page to unreachable storage fails
    only after about 90 s, measured against a closed port: the operator hears of it at once)."""
    sdk = load_sdk()
    if on_retry is None:
        return sdk.ContainerClient.from_connection_string(conn_str, container)
    report = on_retry

    class ReportingRetry(sdk.ExponentialRetry):  # type: ignore[misc, name-defined]
        def increment(self, settings: Any, request: Any, response: Any = None, error: Any = None) -> bool:
            if error is not None:
                report(str(error).splitlines()[0])
            elif response is not None:
                report(f"HTTP {response.http_response.status_code}")
            return bool(super().increment(settings, request, response=response, error=error))

    return sdk.ContainerClient.from_connection_string(conn_str, container, retry_policy=ReportingRetry())


class PageBlobTarget:
    def __init__(self, conn_str: str, container: str, blob: str, size: int, *,
                 parallel: int = PARALLEL_PUTS) -> None:
        from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

        self.size = size
        virtual = vhd.virtual_size(size)  # any multiple of 512: the blob is padded to the next MiB
        if size > vhd.largest_disk():
            raise TargetError(f"disk of {size} bytes: a page blob holds at most 8 TiB, a disk of at most "
                              f"{vhd.largest_disk()} bytes ({vhd.PAGE_BLOB_LIMIT_SOURCE})")
        self.container = container
        self.blob_name = blob
        self._health = threading.Lock()
        self._failing = False  # "unreachable" was logged and no commit has succeeded since
        cc = _client(conn_str, container, self._trouble)
        try:
            cc.create_container()
        except ResourceExistsError:
            pass
        self._blob = cc.get_blob_client(blob)
        self._conn_str = conn_str
        try:
            props = self._blob.get_blob_properties()
            if props.size != virtual + vhd.FOOTER_SIZE:
                raise TargetError(f"blob {blob} is {props.size} bytes; expected {virtual + vhd.FOOTER_SIZE} "
                                  f"for a {size}-byte disk (padded to {virtual}, then the VHD footer)")
            self._meta = dict(props.metadata or {})
        except ResourceNotFoundError:
            self._blob.create_page_blob(virtual + vhd.FOOTER_SIZE, metadata={SEQ_KEY: "0"})
            self._blob.upload_page(vhd.footer(virtual), offset=virtual, length=vhd.FOOTER_SIZE)
            self._meta = {SEQ_KEY: "0"}
        self._pool = cf.ThreadPoolExecutor(max_workers=parallel, thread_name_prefix=f"put-{blob}")
        self._inflight: list[tuple[int, int, cf.Future[None]]] = []  # (start, end, call), oldest first
        self._lock = threading.Lock()
        self._failed: BaseException | None = None  # the first failed call not yet reported by drain
        self._committer = Committer(f"meta-{blob}", self._record)

    def _put(self, offset: int, data: Data) -> None:
        self._blob.upload_page(bytes(data), offset=offset, length=len(data))

    def _clear(self, offset: int, length: int) -> None:
        self._blob.clear_page(offset=offset, length=length)

    def _prune(self) -> None:
        """Forget finished calls (lock held), keeping the first failure for the next commit."""
        live = []
        for a, b, f in self._inflight:
            if not f.done():
                live.append((a, b, f))
            elif f.exception() is not None and self._failed is None:
                self._failed = f.exception()
                self._trouble(f"Put Page failed: {str(self._failed).splitlines()[0]}")
        self._inflight = live

    def _queue(self, start: int, end: int, call: Any, *args: Any) -> None:
        """Queue one call after the calls in flight that overlap [start, end)."""
        with self._lock:
            self._prune()
            oldest = self._inflight[0][2] if len(self._inflight) >= QUEUED_PUTS else None
            before = [f for a, b, f in self._inflight if a < end and start < b]
        if oldest is not None:
            cf.wait([oldest])
        cf.wait(before)
        fut = self._pool.submit(call, *args)
        with self._lock:
            self._inflight.append((start, end, fut))

    def _calls(self) -> list[cf.Future[None]]:
        """The calls queued so far and not finished; raises a failure among the finished ones."""
        with self._lock:
            self._prune()
            if self._failed is not None:
                raise TargetError(f"Put Page failed: {self._failed}")
            return [f for _, _, f in self._inflight]

    def apply(self, writes: list[tuple[int, Data]], zeros: list[tuple[int, int]]) -> None:
        for off, n in zeros:
            self._queue(off, off + n, self._clear, off, n)
        for off, data in _coalesce(writes):
            view = memoryview(data)
            for pos in range(0, len(data), MAX_PUT_PAGE):
                part = view[pos:pos + MAX_PUT_PAGE]
                self._queue(off + pos, off + pos + len(part), self._put, off + pos, part)

    def read(self, offset: int, length: int) -> bytes:
        for fut in self._calls():
            fut.result()
        return read_range(self._blob, offset, length)

    def applied_seq(self) -> int:
        return int(self._meta.get(SEQ_KEY, "0"))

    def _record(self, seq: int) -> None:
        # Put Page is durable when it returns; the committer calls this once the pages succeeded.
        if str(seq) == self._meta.get(SEQ_KEY):
            return  # nothing applied since the last commit (a keepalive)
        meta = {**self._meta, SEQ_KEY: str(seq)}
        self._blob.set_blob_metadata(meta)
        self._meta = meta
        with self._health:
            recovered, self._failing = self._failing, False
        if recovered:
            log.warning("page blob %s/%s: storage answers again; applied up to seq %d",
                        self.container, self.blob_name, seq)

    def _trouble(self, why: str) -> None:
        """A request failed: one line per transition at the default level, not one per retry."""
        with self._health:
            first, self._failing = not self._failing, True
        if first:
            log.warning("page blob %s/%s: storage unreachable or refusing requests (%s); retrying, and the "
                        "process server keeps the changes until they are applied", self.container, self.blob_name,
                        why)

    def commit_later(self, seq: int, done: Done) -> None:
        try:
            calls = self._calls()
        except TargetError as err:
            # Reported through the commit thread like any other outcome, so commits finish in the
            # order they were asked for: `done(err)` here would overtake earlier commits still being
            # recorded (seen under load: seq 3's failure reported before seq 1's success).
            failed: cf.Future[None] = cf.Future()
            failed.set_exception(err)
            calls = [failed]
        self._committer.submit(seq, calls, done)

    def commit(self, seq: int) -> None:
        calls = self._calls()
        self._committer.wait(seq, calls)

    def drain(self) -> None:
        with self._lock:
            calls = [f for _, _, f in self._inflight]
        cf.wait(calls)
        with self._lock:
            self._prune()
            failed, self._failed = self._failed, None
        try:
            self._committer.drain()
        finally:
            if failed is not None:
                raise TargetError(f"Put Page failed: {failed}") from failed

    def snapshot(self, point_id: str, seq: int) -> str:
        self.drain()
        snap = self._blob.create_snapshot(metadata={**self._meta, SEQ_KEY: str(seq), "drpoint": point_id})
        return str(snap["snapshot"])

    def delete_snapshot(self, handle: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError
        from azure.storage.blob import BlobClient

        try:
            BlobClient.from_connection_string(self._conn_str, self.container, self.blob_name,
                                              snapshot=handle).delete_blob()
        except ResourceNotFoundError:
            pass

    def location(self) -> dict[str, Any]:
        return {"kind": "pageblob", "container": self.container, "blob": self.blob_name, "size": self.size}

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._committer.close()


def _coalesce(writes: list[tuple[int, Data]]) -> list[tuple[int, Data]]:
    """Merge writes that touch end to end into fewer, larger Put Page calls."""
    runs: list[tuple[int, int, list[Data]]] = []  # (offset, length, parts): each run joined once
    for off, data in sorted(writes, key=lambda w: w[0]):
        if runs and runs[-1][0] + runs[-1][1] == off and runs[-1][1] + len(data) <= MAX_PUT_PAGE:
            start, length, parts = runs[-1]
            parts.append(data)
            runs[-1] = (start, length + len(data), parts)
        else:
            runs.append((off, len(data), [data]))
    return [(off, parts[0] if len(parts) == 1 else b"".join(parts)) for off, _, parts in runs]


def read_range(blob: Any, offset: int, length: int) -> bytes:
    """`length` bytes of `blob` (a BlobClient, of a snapshot or not) at `offset`, in ranged GETs of
    at most MAX_GET_RANGE.

    Through the SDK's generated REST operation, not `download_blob`: for a page blob that one lists
    every page range of the blob before it returns (azure-storage-blob 12.x, _download.py), so
    reading a disk in chunks listed its ranges once per chunk, and the listing grows with the disk
    (measured: 1,233 listings for one 1 GiB export, 68-74 s against 3.6 s for one streamed read)."""
    from azure.core.exceptions import AzureError

    parts = []
    for pos in range(offset, offset + length, MAX_GET_RANGE):
        n = min(MAX_GET_RANGE, offset + length - pos)
        for attempt in range(READ_ATTEMPTS):
            try:
                data = b"".join(blob._client.blob.download(range=f"bytes={pos}-{pos + n - 1}"))
            except AzureError as err:
                if attempt + 1 == READ_ATTEMPTS or getattr(err, "status_code", None):
                    raise TargetError(f"reading {n} bytes at {pos} of blob {blob.blob_name}: "
                                      f"{str(err).splitlines()[0]}") from None
                continue
            if len(data) == n:
                break
            if attempt + 1 == READ_ATTEMPTS:
                raise TargetError(f"reading {n} bytes at {pos} of blob {blob.blob_name}: got {len(data)} bytes")
        parts.append(data)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class PageBlobPoint:
    """A page blob snapshot (or the live blob when `snapshot` is None), read for export.

    `ranges` lists the snapshot's page ranges once (one Get Page Ranges, paged by the SDK);
    `read` is one ranged GET per MAX_GET_RANGE and may be called from several threads at once."""

    def __init__(self, conn_str: str, container: str, blob: str, size: int, snapshot: str | None) -> None:
        self.size = size
        self._blob = load_sdk().BlobClient.from_connection_string(conn_str, container, blob, snapshot=snapshot)

    def ranges(self) -> Iterator[tuple[int, int]]:
        from azure.core.exceptions import AzureError

        try:
            listed = list(self._blob.list_page_ranges())
        except AzureError as err:
            raise TargetError(f"listing the page ranges of blob {self._blob.blob_name}: "
                              f"{str(err).splitlines()[0]}") from None
        for r in listed:
            if r.cleared:
                continue
            start, end = int(r.start or 0), min(int(r.end or 0) + 1, self.size)
            if start < end:
                yield start, end - start

    def read(self, offset: int, length: int) -> bytes:
        return read_range(self._blob, offset, length)

    def close(self) -> None:
        self._blob.close()
