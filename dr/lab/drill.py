"""`dr lab drill SPEC [--plan P] [--chaos]`: a disaster-recovery drill of a recovery plan, in one command.

    1. the lab up (`Lab.up`, when it is not already running)
    2. initial replication done: a multi-VM point of the plan's machines at the configuration server
       (its API, an operator token)
    3. [--chaos] SIGKILL a process server, a master target and an agent at random moments while the
       workloads write; their supervisors (`dr-agent supervise`) start them again
    4. pause every workload of the plan (every write durable) and record the manifest: each disk's
       files and their sha256, the data that was there before any agent as well as the workload's
    5. wait for a multi-VM point newer than the pause, as `dr failover --point latest-multi-vm`
       chooses it (dr.failover.points.choose over the server's catalog)
    6. `dr failover PLAN --type test --point latest-multi-vm` (the product's command on the lab's
       configuration server state); a manual step is confirmed with `dr failover confirm`, and the
       drill says so
    7. every failed-over disk: its recovered page blob downloaded from Azurite, the VHD footer
       checked and cut, a loop device, `e2fsck -fn` clean (after the journal replay a boot would
       do), mounted read-only, every file equal by sha256 to the manifest, no file more or less
    8. `dr failover cleanup JOB`, the workloads resumed (always, even when a step failed)

RPO is the age of the chosen point when the failover started; RTO is from the failover's start to
the last disk verified. The last line: `drill: N/N disks verified, RPO X s, RTO Y s`.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import ssl
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dr.azure.naming import recovered_disk_blob
from dr.lab.errors import LabError
from dr.lab.host import run, tool

Progress = Callable[[str], None]
# Seconds the drill waits for the first multi-VM point after the lab is up (initial replication of
# every disk, then the group's schedule): the lab's disks are small, the schedule is the spec's.
INITIAL_POINT_TIMEOUT_S = 900.0
# Seconds between looks at the configuration server's catalog.
POLL_S = 2.0
# Seconds of workload during which --chaos kills its three components (each at a random moment).
CHAOS_WINDOW_S = (5.0, 30.0)
# Seconds a killed component has to be running again (its unit's RestartSec is 2 s).
CHAOS_RECOVERY_TIMEOUT_S = 120.0
# Seconds the failover command may take for the whole plan.
FAILOVER_TIMEOUT_S = 1800.0
LOST_FOUND = "lost+found"


@dataclass(frozen=True)
class DiskVerdict:
    machine: str
    disk: str
    ok: bool
    files: int                   # files compared
    seed_files: int              # of which were on the disk before any agent
    detail: str = ""


@dataclass(frozen=True)
class DrillReport:
    plan: str
    job: str
    point: str
    rpo_s: float
    rto_s: float
    disks: tuple[DiskVerdict, ...]
    chaos: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def verified(self) -> int:
        return sum(d.ok for d in self.disks)

    @property
    def ok(self) -> bool:
        return bool(self.disks) and self.verified == len(self.disks)

    @property
    def line(self) -> str:
        return (f"drill: {self.verified}/{len(self.disks)} disks verified, RPO {self.rpo_s:.1f} s, "
                f"RTO {self.rto_s:.1f} s")

    def to_json(self) -> dict[str, Any]:
        return {"plan": self.plan, "job": self.job, "point": self.point, "rpo_s": round(self.rpo_s, 3),
                "rto_s": round(self.rto_s, 3), "verified": self.verified, "disks": [d.__dict__ for d in self.disks],
                "chaos": list(self.chaos), "notes": list(self.notes), "ok": self.ok}


# -- the configuration server's API ----------------------------------------------------------------
@dataclass(frozen=True)
class Api:
    """The configuration server's API from the host, as an operator. The server's certificate is
    checked against the vault CA; the host reaches it by address (the lab's names resolve only
    inside the lab's namespaces), so the name in the certificate is not compared."""

    base: str
    token: str = field(repr=False)
    ca_file: Path

    def get(self, path: str) -> Any:
        import http.client

        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.check_hostname = False
        url = urllib.parse.urlsplit(self.base)
        conn = http.client.HTTPSConnection(url.hostname or "", url.port, context=ctx, timeout=30)
        try:
            conn.request("GET", path, headers={"Authorization": f"Bearer {self.token}"})
            answer = conn.getresponse()
            body = answer.read()
        except OSError as err:
            raise LabError(f"the configuration server {self.base} did not answer {path} ({err})") from None
        finally:
            conn.close()
        if answer.status != 200:
            raise LabError(f"the configuration server answered {path} with {answer.status}: {body[:200]!r}")
        return json.loads(body)


def _catalog(api: Api, machines: list[str]) -> dict[str, dict[str, list[Any]]]:
    """{machine: {disk: [Point]}} as the server holds it (what `dr failover` chooses from)."""
    from dr.failover.points import Point

    out: dict[str, dict[str, list[Any]]] = {}
    for m in machines:
        disks: dict[str, list[Any]] = {}
        for row in api.get(f"/api/v1/machines/{urllib.parse.quote(m)}/recovery-points"):
            disks.setdefault(row["disk"], []).append(Point(
                point_id=row["point_id"], time=float(row["time"]), kind=row["kind"], group_id=row.get("group_id"),
                processed=bool(row.get("processed", True))))
        out[m] = disks
    return out


def multi_vm_point(api: Api, machines: list[str], disks: dict[str, list[str]]) -> tuple[str, float] | None:
    """The point `--point latest-multi-vm` would choose now (id, time), or None while there is none."""
    from dr.errors import DrError
    from dr.failover.points import Choice, choose

    catalog = _catalog(api, machines)
    for m in machines:
        have = catalog.get(m, {})
        if any(d not in have for d in disks[m]):
            return None  # a disk without points yet: still in its initial sync
    try:
        chosen = choose(catalog, Choice.parse("latest-multi-vm"))
    except DrError:  # NoRecoveryPoint: the group has none yet
        return None
    first = chosen[machines[0]]
    return first.point_id, float(first.time)


# -- chaos -----------------------------------------------------------------------------------------
class Chaos:
    """SIGKILL one process server, one master target and one agent, each at a random moment of the
    window, on a thread; `wait()` returns what was killed once all three are running again."""

    def __init__(self, lab: Any, machines: list[str], progress: Progress, *, seed: int | None = None) -> None:
        from dr.lab.topology import NodeKind

        rng = random.Random(seed)
        ps = [n.name for n in lab.topology.servers if n.kind is NodeKind.PROCESS_SERVER]
        mt = [n.name for n in lab.topology.servers if n.kind is NodeKind.MASTER_TARGET]
        if not ps or not mt or not machines:
            raise LabError("--chaos needs a process server, a master target and an agent in the plan's lab")
        lo, hi = CHAOS_WINDOW_S
        self.victims = [(rng.uniform(lo, hi), name) for name in (rng.choice(ps), rng.choice(mt), rng.choice(machines))]
        self.victims.sort()
        self.lab = lab
        self.progress = progress
        self.killed: list[str] = []
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, name="drill-chaos", daemon=True)
        self.start = time.monotonic()

    def begin(self) -> Chaos:
        self.start = time.monotonic()
        self.thread.start()
        return self

    def _run(self) -> None:
        for at, name in self.victims:
            time.sleep(max(0.0, self.start + at - time.monotonic()))
            try:
                pids = self.lab.kill(name, signal.SIGKILL)
            except LabError as err:
                self.errors.append(str(err))
                continue
            what = f"{name}" if pids else f"{name} (was not running)"
            self.killed.append(f"t+{at:.1f}s SIGKILL {what} pid {','.join(map(str, pids)) or '-'}")
            self.progress(f"chaos: SIGKILL {what} (pid {','.join(map(str, pids)) or '-'}) at t+{at:.1f} s")

    def wait(self) -> list[str]:
        self.thread.join()
        if self.errors:
            raise LabError(f"chaos: {self.errors[0]}")
        deadline = time.monotonic() + CHAOS_RECOVERY_TIMEOUT_S
        names = {name if name not in self.lab.machines else f"agent:{name}" for _, name in self.victims}
        while True:
            status = self.lab.status()
            down = [c.name for c in status.components if c.name in names and not c.running]
            if not down:
                self.progress("chaos: every killed component runs again (restarted by dr-agent supervise)")
                return self.killed
            if time.monotonic() > deadline:
                raise LabError(f"chaos: {', '.join(down)} did not come back within {CHAOS_RECOVERY_TIMEOUT_S:.0f} s "
                               "after SIGKILL: see its supervisor's log")
            time.sleep(1.0)


# -- verification of a recovered disk --------------------------------------------------------------
def _blob(connection_string: str, url: str) -> Any:
    from azure.storage.blob import BlobServiceClient

    path = urllib.parse.unquote(urllib.parse.urlsplit(url).path).lstrip("/")
    parts = path.split("/")
    # Azurite's URLs carry the account first (http://host:10000/<account>/<container>/<blob>)
    service = BlobServiceClient.from_connection_string(connection_string)
    if parts and parts[0] == service.account_name:
        parts = parts[1:]
    container, blob = parts[0], "/".join(parts[1:])
    return service.get_blob_client(container, blob)


def download_disk(connection_string: str, url: str, dest: Path) -> int:
    """The recovered page blob as a raw image at `dest` (.img; sparse: only written page ranges are
    read), the fixed-VHD footer checked and cut; the image's size. Read through the data path's
    exporter (`dr_agent.export`): the page ranges are listed once, then read in ranged GETs."""
    from dr_agent.errors import AgentError
    from dr_agent.export import export_location
    from dr_agent.pageblob import read_range
    from dr_agent.vhd import FOOTER_SIZE, parse_footer

    blob = _blob(connection_string, url)
    try:
        size = int(blob.get_blob_properties().size)
        if size < FOOTER_SIZE:
            raise LabError(f"{url}: {size} bytes, too small for a VHD")
        footer = read_range(blob, size - FOOTER_SIZE, FOOTER_SIZE)
        try:
            virtual = int(parse_footer(footer))
        except ValueError as err:
            raise LabError(f"{url}: the last 512 bytes are not a fixed-VHD footer ({err})") from None
        export_location({"kind": "pageblob", "container": blob.container_name, "blob": blob.blob_name},
                        None, dest, size=virtual, connection_string=connection_string)
    except AgentError as err:
        raise LabError(f"{url}: {err}") from None
    finally:
        blob.close()
    return virtual


def files_of(mount: Path) -> dict[str, str]:
    """{relative path: sha256} of every regular file (lost+found left out), as the workload lists them."""
    from dr.lab.workload import file_manifest

    return file_manifest({"d": mount})["d"]


@contextmanager
def attached(image: Path) -> Iterator[str]:
    done = run(["losetup", "--find", "--show", str(image)], what=f"attach {image.name} to a loop device")
    device = done.stdout.strip()
    try:
        yield device
    finally:
        run(["losetup", "-d", device], what=f"detach {device}", check=False)


@contextmanager
def mounted_ro(device: str, where: Path) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    run(["mount", "-t", "ext4", "-o", "ro,noexec,nodev,nosuid", device, str(where)],
        what=f"mount {device} read-only")
    try:
        yield where
    finally:
        run(["umount", str(where)], what=f"unmount {where}", check=False)
        with suppress(OSError):
            where.rmdir()


def fsck(device: str) -> tuple[bool, str]:
    """`e2fsck -fn` (force, change nothing); when the file system was captured mounted (its journal
    still to be replayed, as a recovered VM's first mount does), the journal is replayed first."""
    e2fsck = tool("e2fsck")
    note = ""
    sb = subprocess.run([tool("dumpe2fs"), "-h", device], capture_output=True, text=True, check=False)
    if "needs_recovery" in sb.stdout:
        subprocess.run([e2fsck, "-E", "journal_only", "-p", device], capture_output=True, text=True, check=False)
        note = "journal replayed, then "
    done = subprocess.run([e2fsck, "-fn", device], capture_output=True, text=True, check=False)
    if done.returncode == 0:
        return True, f"{note}e2fsck -fn clean"
    lines = [ln for ln in (done.stdout + done.stderr).splitlines() if ln.strip()]
    return False, f"{note}e2fsck -fn exit {done.returncode}: {'; '.join(lines[-3:])[:300]}"


def verify_disk(machine: str, disk: str, image: Path, expected: dict[str, str], seed: dict[str, str],
                work: Path) -> DiskVerdict:
    """A recovered disk's image: fsck clean, mounts read-only, files exactly the manifest."""
    with attached(image) as device:
        clean, how = fsck(device)
        if not clean:
            return DiskVerdict(machine, disk, False, 0, 0, how)
        with mounted_ro(device, work / f"mnt-{machine}-{disk}") as mnt:
            found = files_of(mnt)
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    differ = sorted(p for p in set(expected) & set(found) if expected[p] != found[p])
    seed_bad = sorted(p for p in seed if found.get(p) != seed[p])
    problems = []
    for what, paths in (("missing", missing), ("not in the manifest", extra), ("different", differ),
                        ("seed data lost or changed", seed_bad)):
        if paths:
            problems.append(f"{len(paths)} {what} ({', '.join(paths[:3])}{', ...' if len(paths) > 3 else ''})")
    if problems:
        return DiskVerdict(machine, disk, False, len(found), 0, f"{how}; " + "; ".join(problems))
    return DiskVerdict(machine, disk, True, len(found), len(seed), f"{how}; {len(found)} files equal "
                                                                   f"({len(seed)} from before the agent)")


# -- the drill -------------------------------------------------------------------------------------
class Drill:
    def __init__(self, lab: Any, *, plan: str | None, chaos: bool, progress: Progress,
                 seed: int | None = None) -> None:
        from dr.failover.steps import find_plan, plan_machines

        self.lab = lab
        plans = lab.estate.recovery_plans
        if not plans:
            raise LabError(f"{lab.spec} has no recovery plan: add one (recovery_plans:) to drill it")
        self.plan = find_plan(lab.estate, plan) if plan else plans[0]
        self.machines = plan_machines(self.plan)
        self.disks = {m: [d.name for d in lab.estate.machine(m).disks] for m in self.machines}
        self.chaos = chaos
        self.seed = seed
        self.progress = progress
        self.work = lab.directory / "drill"
        self.job_id = ""             # the failover's job, once `dr failover` named it
        self.env = self._env()

    # -- the product's commands, as a user runs them -----------------------------------------------
    def _env(self) -> dict[str, str]:
        from dr.azure.naming import storage_env
        from dr.server.settings import STORAGE_ENV

        conn = self.lab.storage_connection_string
        env = {**os.environ, STORAGE_ENV: conn, "AZURE_STORAGE_CONNECTION_STRING": conn,
               "DR_STATE": self.lab.state_url, "DR_SPEC": str(self.lab.spec),
               "DR_WORKDIR": str(self.lab.directory / "drill" / "workdir")}
        for mt in self.lab.plan.master_targets:
            for d in mt.disks:
                env[storage_env(d.storage_account)] = conn
        # the lab's one storage account (Azurite's), which the master targets report as the replicas'
        account = re.search(r"AccountName=([^;]+)", conn)
        if account:
            env[storage_env(account.group(1))] = conn
        return env

    def dr(self, *args: str, timeout: float = 600.0) -> subprocess.CompletedProcess[str]:
        argv = [str(self.lab.artifacts.dr), *args]
        return subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=timeout, check=False)

    def _token(self) -> str:
        done = self.dr("config-server", "token", "--name", "drill", "--state", self.lab.state_url,
                       "--passphrase-file", str(self.lab.passphrase_file), "--format", "json")
        if done.returncode != 0:
            raise LabError(f"dr config-server token failed: {_last(done)}")
        return str(json.loads(done.stdout)["token"])

    def api(self) -> Api:
        from dr_agent.contract import CS_PORT

        return Api(base=f"https://{self.lab.topology.azure.ip}:{CS_PORT}", token=self._token(),
                   ca_file=self.lab.ca_file)

    # -- steps -------------------------------------------------------------------------------------
    def wait_point(self, api: Api, *, after: float, timeout: float, what: str) -> tuple[str, float]:
        deadline = time.monotonic() + timeout
        while True:
            found = multi_vm_point(api, self.machines, self.disks)
            if found is not None and found[1] > after:
                return found
            if time.monotonic() > deadline:
                have = f"the newest is {found[0]} at {_ts(found[1])}" if found else "there is none yet"
                raise LabError(f"no multi-VM point {what} of plan {self.plan.name} within {timeout:.0f} s ({have}); "
                               f"see `dr lab status {self.lab.spec}` and the services' logs under {self.lab.directory}")
            time.sleep(POLL_S)

    def failover(self) -> str:
        """`dr failover PLAN --type test --point latest-multi-vm`, confirming manual steps; the job id."""
        argv = [str(self.lab.artifacts.dr), "failover", self.plan.name, "--type", "test", "--point", "latest-multi-vm",
                "--spec", str(self.lab.spec), "--state", self.lab.state_url,
                "--storage", self.lab.storage_connection_string]
        self.progress("$ dr failover " + " ".join(argv[2:-2]) + " --storage <Azurite>")
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env,
                                stdin=subprocess.DEVNULL)
        job = ""
        output: list[str] = []
        timer = threading.Timer(FAILOVER_TIMEOUT_S, proc.kill)
        timer.start()
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.rstrip("\n")
                output.append(line)
                self.progress(f"  {line}")
                m = re.match(r"job (\S+):", line)
                if m and not job:
                    job = self.job_id = m.group(1)
                waiting = re.match(r"\[(\d+)\] waiting: (.*)", line)
                if waiting and job:
                    self.confirm(job, int(waiting.group(1)), waiting.group(2))
            status = proc.wait()
        finally:
            timer.cancel()
        if status != 0 or not job:
            raise LabError(f"dr failover {self.plan.name} --type test failed (exit {status}): "
                           f"{output[-1] if output else 'no output'}" + (f" (job {job})" if job else ""))
        return job

    def confirm(self, job: str, step: int, text: str) -> None:
        done = self.dr("failover", "confirm", job, str(step), "--by", "dr lab drill", "--state", self.lab.state_url)
        if done.returncode != 0:
            raise LabError(f"dr failover confirm {job} {step} failed: {_last(done)}")
        self.progress(f"drill: confirmed manual step {step} of job {job} ({text.split('  ')[0].strip()}): "
                      f"dr failover confirm {job} {step}")

    def job(self, job: str) -> dict[str, Any]:
        done = self.dr("failover", "show", job, "--state", self.lab.state_url, "--format", "json")
        if done.returncode != 0:
            raise LabError(f"dr failover show {job} failed: {_last(done)}")
        record: dict[str, Any] = json.loads(done.stdout)
        return record

    def cleanup(self, job: str) -> None:
        done = self.dr("failover", "cleanup", job, "--spec", str(self.lab.spec), "--state", self.lab.state_url,
                       "--storage", self.lab.storage_connection_string, timeout=FAILOVER_TIMEOUT_S)
        if done.returncode != 0:
            raise LabError(f"dr failover cleanup {job} failed: {_last(done)}")
        self.progress(f"drill: test failover cleaned up (dr failover cleanup {job})")

    def run(self) -> DrillReport:
        lab = self.lab
        if not lab.is_up or not lab.status().all_running:
            self.progress(f"drill: bringing the lab of {lab.topology.estate} up")
            lab.up(progress=self.progress)
        self.work.mkdir(parents=True, exist_ok=True)
        api = self.api()
        self.progress(f"drill: plan {self.plan.name}: {len(self.machines)} machine(s), "
                      f"{sum(len(d) for d in self.disks.values())} disk(s); waiting for a multi-VM point "
                      "(initial replication first)")
        first = self.wait_point(api, after=0.0, timeout=INITIAL_POINT_TIMEOUT_S, what="at all")
        self.progress(f"drill: multi-VM point {first[0]} at {_ts(first[1])}")
        killed: list[str] = []
        if self.chaos:
            killed = Chaos(lab, self.machines, self.progress, seed=self.seed).begin().wait()
        paused: list[str] = []
        job = ""
        try:
            manifests: dict[str, dict[str, dict[str, str]]] = {}
            for m in self.machines:
                lab.workload(m).pause()
                paused.append(m)
            pause_time = time.time()
            for m in self.machines:
                manifests[m] = lab.workload(m).manifest()
            seeds = {m: lab.seed_manifest(m) for m in self.machines}
            count = sum(len(f) for d in manifests.values() for f in d.values())
            self.progress(f"drill: workloads paused at {_ts(pause_time)}; manifest of {count} files recorded")
            point, point_time = self.wait_point(api, after=pause_time, timeout=INITIAL_POINT_TIMEOUT_S,
                                                what="after the pause")
            self.progress(f"drill: multi-VM point {point} at {_ts(point_time)} covers the pause")
            start = time.time()
            try:
                job = self.failover()
            finally:
                job = job or self.job_id
            record = self.job(job)
            verdicts = self.verify(record, manifests, seeds, point)
            end = time.time()
            chosen = {s["machine"]: s["detail"].get("point", {}) for s in record["steps"]
                      if s["kind"] == "failover_machine"}
            used = {str(c.get("point_id")) for c in chosen.values()}
            notes = [] if used == {point} else [f"the failover chose point(s) {', '.join(sorted(used))}, not {point}"]
            point_times = [float(c["time"]) for c in chosen.values() if "time" in c]
            rpo = start - (min(point_times) if point_times else point_time)
            report = DrillReport(plan=self.plan.name, job=job, point=",".join(sorted(used)) or point, rpo_s=rpo,
                                 rto_s=end - start, disks=tuple(verdicts), chaos=tuple(killed), notes=tuple(notes))
            self.cleanup(job)
            job = ""
            return report
        finally:
            if job:  # the drill stopped after the failover started: its test resources go all the same
                try:
                    self.cleanup(job)
                except LabError as err:
                    self.progress(f"drill: {err}")
            for m in paused:
                try:
                    lab.workload(m).resume()
                except LabError as err:
                    self.progress(f"drill: could not resume the workload of {m}: {err}")
            if paused:
                self.progress(f"drill: workloads resumed on {', '.join(paused)}")

    def verify(self, record: dict[str, Any], manifests: dict[str, Any], seeds: dict[str, Any],
               point: str) -> list[DiskVerdict]:
        verdicts: list[DiskVerdict] = []
        steps = {s["machine"]: s for s in record["steps"] if s["kind"] == "failover_machine"}
        folder = self.work / record["id"]
        folder.mkdir(parents=True, exist_ok=True)
        try:
            for m in self.machines:
                step = steps.get(m)
                urls = list(step["detail"].get("disks", [])) if step else []
                for disk in self.disks[m]:
                    blob = recovered_disk_blob(m, disk)
                    url = next((u for u in urls if urllib.parse.unquote(u).endswith(f"/{blob}")), None)
                    if url is None:
                        verdicts.append(DiskVerdict(m, disk, False, 0, 0, "the failover recorded no recovered disk"))
                        continue
                    image = folder / f"{m}-{disk}.img"
                    try:
                        download_disk(self.lab.storage_connection_string, url, image)
                        verdict = verify_disk(m, disk, image, manifests[m].get(disk, {}), seeds[m].get(disk, {}),
                                              folder)
                    except LabError as err:
                        verdict = DiskVerdict(m, disk, False, 0, 0, str(err))
                    finally:
                        image.unlink(missing_ok=True)
                    verdicts.append(verdict)
                    mark = "verified" if verdict.ok else "FAILED"
                    self.progress(f"drill: {m}/{disk}: {mark}: {verdict.detail}")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return verdicts


def _last(done: subprocess.CompletedProcess[str]) -> str:
    lines = (done.stderr or done.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit {done.returncode}"


def _ts(t: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1000):03d}Z"


def drill(spec: Path, *, plan: str | None = None, chaos: bool = False, progress: Progress = print,
          seed: int | None = None, root: Path | None = None) -> DrillReport:
    """The drill of `spec`'s lab (at `root`: the lab's default, or a test's own)."""
    from dr.lab import Lab

    lab = Lab.load(spec) if root is None else Lab.load(spec, root=root)
    return Drill(lab, plan=plan, chaos=chaos, progress=progress, seed=seed).run()
