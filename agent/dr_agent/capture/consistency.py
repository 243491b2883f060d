"""Consistency points: bookmark ids and application-consistent freeze/thaw.

* A **crash-consistent** point is a bookmark inserted in a disk's ordered change stream
  (`Splitter.bookmark("crash")`): everything before it, nothing after.
* An **application-consistent** point runs the application's pre scripts (a database flushes and
  quiesces), freezes the file systems (FIFREEZE: dirty data is written, new writes block), inserts
  the bookmark, thaws, and runs the post scripts: `with app_consistent(...): sp.bookmark("app")`.
  Thaw happens in a `finally`, whatever failed: a writer blocked on a frozen file system cannot
  even be killed, so a forgotten thaw hangs the machine's workload.
* A **multi-VM** point puts the same bookmark id in every disk stream of a protection group: the
  coordinator in the process server of the group's site (dr_agent.ps_coordinator) pauses every
  member, then marks and resumes them; an agent takes part through dr_agent.coordination.GroupMember,
  with the splitter's or tracking agent's `pause`/`mark`/`resume`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from dr_agent.capture import _linux
from dr_agent.capture.errors import FreezeError, ScriptFailed

log = logging.getLogger(__name__)

SCRIPT_TIMEOUT = 300.0  # seconds; ASR's default pre/post script timeout is 5 minutes (ASR docs)


def new_bookmark_id() -> str:
    """A sortable unique bookmark id: UTC time in milliseconds, then 8 random hex digits."""
    return f"{time.time_ns() // 1_000_000:013d}-{uuid.uuid4().hex[:8]}"


# -- application consistency ------------------------------------------------------------------
Script = str | Sequence[str]


def run_script(script: Script, *, timeout: float = SCRIPT_TIMEOUT) -> None:
    """Run one pre/post script: a string through `/bin/sh -c`, a sequence as argv. Raises ScriptFailed."""
    argv = ["/bin/sh", "-c", script] if isinstance(script, str) else list(script)
    shown = script if isinstance(script, str) else " ".join(script)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
    except OSError as err:
        raise ScriptFailed(shown, 127, str(err)) from None
    try:
        out, err_text = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise ScriptFailed(shown, None, f"no exit after {timeout:g} s") from None
    if proc.returncode != 0:
        raise ScriptFailed(shown, proc.returncode, err_text)
    log.info("script %s ran: %s", shown, out.strip()[-200:])


@contextlib.contextmanager
def app_consistent(mount_points: Sequence[Path | str], pre_scripts: Sequence[Script] = (),
                   post_scripts: Sequence[Script] = (), *,
                   script_timeout: float = SCRIPT_TIMEOUT) -> Iterator[None]:
    """Pre scripts, freeze every mount point, yield (insert the bookmark), ALWAYS thaw, post scripts.

    Post scripts always run (they undo what the pre scripts did, even if a pre script or the
    freeze failed). Errors: the first failure is raised after every thaw and post script ran;
    a failure inside the block wins over a failing post script.
    """
    frozen: list[Path] = []
    try:
        for script in pre_scripts:
            run_script(script, timeout=script_timeout)
        for mount_point in map(Path, mount_points):
            if not os.path.ismount(mount_point):  # FIFREEZE on any path freezes that path's whole file system
                raise FreezeError(f"{mount_point} is not a mount point; list the mount points of the protected "
                                  "file systems (see `findmnt`)")
            try:
                _linux.freeze(mount_point)
            except OSError as err:
                raise FreezeError(
                    f"could not freeze {mount_point}: {err.strerror}; it must be the mount point of a "
                    "file system that supports FIFREEZE (ext4, xfs, btrfs) and the agent must run as root"
                ) from None
            frozen.append(mount_point)
        yield
    except BaseException:
        _thaw_all(frozen, raise_errors=False)
        _run_post(post_scripts, script_timeout, raise_errors=False)
        raise
    else:
        thaw_error = _thaw_all(frozen, raise_errors=False)
        post_error = _run_post(post_scripts, script_timeout, raise_errors=False)
        if thaw_error is not None:
            raise thaw_error
        if post_error is not None:
            raise post_error


def _thaw_all(frozen: list[Path], *, raise_errors: bool) -> FreezeError | None:
    first: FreezeError | None = None
    for mount_point in reversed(frozen):
        try:
            _linux.thaw(mount_point)
        except OSError as err:
            log.error("could not thaw %s: %s", mount_point, err)
            first = first or FreezeError(f"could not thaw {mount_point}: {err.strerror}; "
                                         f"run `fsfreeze --unfreeze {mount_point}` now")
    if first is not None and raise_errors:
        raise first
    return first


def _run_post(scripts: Sequence[Script], timeout: float, *, raise_errors: bool) -> ScriptFailed | None:
    first: ScriptFailed | None = None
    for script in scripts:
        try:
            run_script(script, timeout=timeout)
        except ScriptFailed as err:
            log.error("%s", err)
            first = first or err
    if first is not None and raise_errors:
        raise first
    return first
