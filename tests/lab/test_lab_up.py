"""`dr lab up`, `status`, `down` as a user runs them, on both bundled examples (root, slow).

Each test's lab lives under its own --root (so it never meets a user's lab, nor another test's):
its own namespaces, subnet and loop devices. Checked: every component runs (status JSON), the
source disks hold the data written before any agent, a second `up` keeps what runs, and `down`
leaves nothing (`losetup -a`, `ip netns`, /proc/mounts, processes) — also after an `up` killed
half-way.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dr.lab import Lab, LabError
from dr.lab.services import azurite_binary

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = [REPO / "examples/linux-estate/dr.yaml", REPO / "examples/sharepoint/dr.yaml"]
HEALTHY_WITHIN_S = 60.0   # the bar: Healthy within a minute of the lab being up
DISK_SIZE = "16M"   # the smallest the lab takes: every byte is replicated on a shared 2-core machine

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture(autouse=True)
def _needs_root_and_azurite() -> None:
    if os.geteuid() != 0:
        pytest.skip("dr lab needs root (network namespaces, loop devices, mounts)")
    try:
        azurite_binary()
    except LabError as err:  # the message says what to install
        pytest.skip(str(err))


def _dr(*args: str, root: Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dr", "lab", *args, "--root", str(root)], capture_output=True,
                          text=True, timeout=timeout, check=False, cwd=REPO)


def _left_behind(lab: Lab) -> list[str]:
    root = str(lab.directory.parent)
    left = [ln for ln in subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout.splitlines()
            if root in ln]
    left += [ln for ln in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines()
             if ln.startswith(lab.topology.netns_prefix)]
    left += [ln for ln in Path("/proc/mounts").read_text().splitlines() if root in ln]
    left += [ln for ln in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout.splitlines()
             if f"dl{lab.topology.key}" in ln]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if root in cmd and int(pid) != os.getpid():
            left.append(f"process {pid}: {cmd[:200]}")
    return left


# Up, health and down of a whole lab took 164 s (linux-estate) and 224 s (sharepoint) with eight
# test runs sharing 2 cores (--durations, 2026-12-01): four times the slower, not the suite's default.
@pytest.mark.timeout(900)
@pytest.mark.parametrize("spec", EXAMPLES, ids=lambda p: p.parent.name)
def test_up_runs_every_component_on_pre_agent_data_and_down_leaves_nothing(spec: Path, tmp_path: Path) -> None:
    root = tmp_path / "labs"
    lab = Lab.load(spec, root=root)
    try:
        up = _dr("up", str(spec), "--disk-size", DISK_SIZE, "--format", "json", root=root)
        assert up.returncode == 0, up.stderr[-4000:]
        status = json.loads(_dr("status", str(spec), "--format", "json", root=root).stdout)
        stopped = [c["name"] for c in status["components"] if not c["running"]]
        assert status["up"] and not stopped, f"not running: {stopped}"
        kinds = [c["kind"] for c in status["components"]]
        assert kinds.count("agent") == kinds.count("sshd") == kinds.count("workload") == len(lab.estate.machines)
        assert kinds.count("process_server") == len(lab.plan.process_servers)
        assert kinds.count("master_target") == len(lab.plan.master_targets)
        assert {"azurite", "config_server"} <= set(kinds)
        assert len(status["disks"]) == sum(len(m.disks) for m in lab.estate.machines)
        assert all(d["mounted"] and d["device"].startswith("/dev/loop") for d in status["disks"])

        # no faults: the configuration server sees every machine and server Healthy within a minute,
        # from heartbeats and catalogs the services send by themselves
        deadline, health = time.monotonic() + HEALTHY_WITHIN_S, {}
        while time.monotonic() < deadline:
            done = subprocess.run([sys.executable, "-m", "dr", "status", str(spec), "--state", status["state"],
                                   "--format", "json"], capture_output=True, text=True, check=False, cwd=REPO)
            if done.returncode == 0:
                report = json.loads(done.stdout)
                health = {x["name"]: x["health"]["state"] for x in [*report["machines"], *report["components"]]}
                if len(health) == len(lab.estate.machines) + len(lab.servers) and set(health.values()) == {"Healthy"}:
                    break
            time.sleep(2)
        assert set(health) == {*lab.machines, *lab.servers} and set(health.values()) == {"Healthy"}, health

        # the data that was on each disk before its agent was installed is there, byte for byte
        for name in lab.machines:
            seed = lab.seed_manifest(name)
            now = lab.workload(name).manifest()
            for disk, files in seed.items():
                mount = lab.disk_path(name, disk)
                assert files and all(hashlib.sha256((mount / rel).read_bytes()).hexdigest() == sha
                                     for rel, sha in files.items())
                assert {rel: now[disk][rel] for rel in files} == files
                assert any(rel.startswith("workload/") for rel in now[disk])   # and the workload writes

        # a second `up` keeps what runs
        pids = {c["name"]: c["pids"] for c in status["components"] if c["kind"] != "agent"}
        again = _dr("up", str(spec), "--disk-size", DISK_SIZE, "--format", "json", root=root)
        assert again.returncode == 0, again.stderr[-4000:]
        assert {c["name"]: c["pids"] for c in json.loads(again.stdout)["components"] if c["kind"] != "agent"} == pids
    finally:
        down = _dr("down", str(spec), root=root)
    assert down.returncode == 0, down.stderr[-4000:]
    assert _left_behind(lab) == []
    assert not lab.directory.exists()


def test_down_after_an_up_killed_half_way_leaves_nothing(tmp_path: Path) -> None:
    spec = EXAMPLES[1]
    root = tmp_path / "labs"
    lab = Lab.load(spec, root=root)
    proc = subprocess.Popen([sys.executable, "-m", "dr", "lab", "up", str(spec), "--root", str(root),
                             "--disk-size", DISK_SIZE], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=REPO)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            st = lab.state
            if st is not None and st.process("config-server") is not None:   # network, disks, Azurite, the server
                break
            time.sleep(0.2)
        assert proc.poll() is None, "up ended before it could be killed half-way"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        assert _left_behind(lab)                                            # it did leave things behind
    finally:
        if proc.poll() is None:
            proc.kill()
        down = _dr("down", str(spec), root=root)
    assert down.returncode == 0, down.stderr[-4000:]
    assert _left_behind(lab) == []
