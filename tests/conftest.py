"""Shared test fixtures: the repository root and a runner for the `dr` command in a subprocess.

Under CI (`CI=true`, as `.ci/run` runs) a skipped test fails: every skip here means a missing
prerequisite (a peer not installed, not root, no loop devices), and CI must install them all, so a
green run can never hide a test that did not run. Elsewhere a skip stays a skip, with its reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from _pytest.reports import CollectReport, TestReport

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


def run_dr(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `python -m dr ARGS` as a user would (a real process, real exit code, real stderr)."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "dr", *args], cwd=cwd or ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def dr_cli():  # type: ignore[no-untyped-def]
    return run_dr


# The test running now, for helpers that must see its marks (set by an autouse fixture).
_RUNNING: dict[str, pytest.Item] = {}


@pytest.fixture(autouse=True)
def _running_item(request: pytest.FixtureRequest) -> Iterator[None]:
    _RUNNING["item"] = request.node
    yield
    _RUNNING.pop("item", None)


def require_root(*tools: str, devices: tuple[str, ...] = ("/dev/loop-control",)) -> None:
    """For tests that need root, loop devices, mounts, FUSE or namespaces.

    Fails when the test lacks `@pytest.mark.root` — as root (CI) the skip below never fires, so
    this is what keeps the mark honest; skips (a failure under CI) when not root, or when a tool or
    device is missing, naming the package that brings it.
    """
    item = _RUNNING.get("item")
    if item is not None and item.get_closest_marker("root") is None:
        pytest.fail(f"{item.nodeid} needs root: mark it @pytest.mark.root")
    if os.geteuid() != 0:
        pytest.skip("needs root: loop devices, mounts, FUSE and namespaces (CI runs the suite as root)")
    missing = [t for t in ("losetup", "mount", "umount", *tools) if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing {', '.join(missing)}: run `bash .ci/setup` (e2fsprogs, util-linux, fuse3, iproute2)")
    absent = [d for d in devices if not os.path.exists(d)]
    if absent:
        pytest.skip(f"{', '.join(absent)} missing: this kernel or container has no loop devices or FUSE")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _fail_skip(report: CollectReport | TestReport) -> None:
    """Turn a skip into a failure that names what was missing (CI only; an xfail stays as it is)."""
    if not in_ci() or not report.skipped or hasattr(report, "wasxfail"):
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    report.outcome = "failed"
    report.longrepr = f"CI=true: a prerequisite is missing, so this test fails instead of skipping: {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    _fail_skip(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):  # type: ignore[no-untyped-def]
    report = yield
    _fail_skip(report)
    return report


# How often wait_for re-checks its predicate (seconds): short against any deadline a test gives.
WAIT_POLL_S = 0.05


def wait_for(predicate: Callable[[], T], timeout: float, what: str) -> T:
    """Wait until `predicate()` is truthy and return its value; fail naming `what` after `timeout`
    seconds. A wait on the thing itself, with a deadline, instead of a sleep that hopes it is enough."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(WAIT_POLL_S)
