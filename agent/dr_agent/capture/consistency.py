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
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from dr_agent.capture import _linux
from dr_agent.capture.errors import FreezeError, ScriptFailed
from dr_agent.contract import new_bookmark_id as new_bookmark_id  # one id format: the contract's

log = logging.getLogger(__name__)

SCRIPT_TIMEOUT = 300.0  # seconds; ASR's default pre/post script timeout is 5 minutes (ASR docs)


# -- application consistency ------------------------------------------------------------------
Script = str | Sequence[str]


def run_script(script: Script, *, timeout: float = SCRIPT_TIMEOUT, env: Mapping[str, str] | None = None) -> None:
    """Run one pre/post script: a string through `/bin/sh -c`, a sequence as argv. Raises ScriptFailed.

    `env` is added to the agent's environment (the point's DR_POINT_ID and DR_POINT_KIND)."""
    argv = ["/bin/sh", "-c", script] if isinstance(script, str) else list(script)
    shown = script if isinstance(script, str) else " ".join(script)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True,
                                env={**os.environ, **env} if env else None)
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
                   script_timeout: float = SCRIPT_TIMEOUT, env: Mapping[str, str] | None = None) -> Iterator[None]:
    """Pre scripts, freeze every mount point, yield (insert the bookmark), ALWAYS thaw, post scripts.

    Post scripts always run (they undo what the pre scripts did, even if a pre script or the
    freeze failed). Errors: the first failure is raised after every thaw and post script ran;
    a failure inside the block wins over a failing post script. Each file system is frozen
    through a descriptor held open until its thaw, so it cannot be unmounted while frozen.
    `env` reaches the scripts (DR_POINT_ID, DR_POINT_KIND).
    """
    frozen: list[tuple[Path, int]] = []
    try:
        for script in pre_scripts:
            run_script(script, timeout=script_timeout, env=env)
        for mount_point in map(Path, mount_points):
            frozen.append((mount_point, freeze(mount_point)))
        yield
    except BaseException:
        _thaw_all(frozen, raise_errors=False)
        _run_post(post_scripts, script_timeout, raise_errors=False, env=env)
        raise
    else:
        thaw_error = _thaw_all(frozen, raise_errors=False)
        post_error = _run_post(post_scripts, script_timeout, raise_errors=False, env=env)
        if thaw_error is not None:
            raise thaw_error
        if post_error is not None:
            raise post_error


def freeze(mount_point: Path) -> int:
    """Freeze one file system; returns the descriptor `thaw` needs. FreezeError, with the fix."""
    if not os.path.ismount(mount_point):  # FIFREEZE on any path freezes that path's whole file system
        raise FreezeError(f"{mount_point} is not a mount point; list the mount points of the protected "
                          "file systems (see `findmnt`)")
    try:
        return _linux.freeze_held(mount_point)
    except OSError as err:
        raise FreezeError(
            f"could not freeze {mount_point}: {err.strerror}; it must be the mount point of a "
            "file system that supports FIFREEZE (ext4, xfs, btrfs) and the agent must run as root"
        ) from None


def thaw(mount_point: Path, fd: int) -> FreezeError | None:
    """Thaw what `freeze` froze; returns (does not raise) what went wrong, with the fix."""
    try:
        _linux.thaw_held(fd)
    except OSError as err:
        log.error("could not thaw %s: %s", mount_point, err)
        return FreezeError(f"could not thaw {mount_point}: {err.strerror}; run `fsfreeze --unfreeze {mount_point}` now")
    return None


def _thaw_all(frozen: list[tuple[Path, int]], *, raise_errors: bool) -> FreezeError | None:
    first: FreezeError | None = None
    for mount_point, fd in reversed(frozen):
        first = thaw(mount_point, fd) or first
    if first is not None and raise_errors:
        raise first
    return first


def _run_post(scripts: Sequence[Script], timeout: float, *, raise_errors: bool,
              env: Mapping[str, str] | None = None) -> ScriptFailed | None:
    first: ScriptFailed | None = None
    for script in scripts:
        try:
            run_script(script, timeout=timeout, env=env)
        except ScriptFailed as err:
            log.error("%s", err)
            first = first or err
    if first is not None and raise_errors:
        raise first
    return first
