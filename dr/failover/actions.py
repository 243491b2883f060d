"""Before/after actions of a recovery-plan group: scripts, runbooks and manual steps.

A script is a file (relative to the spec's folder) run on the runner with a timeout (default 600 s,
ASR's). A runbook is a named script in `runbooks/` beside the spec, given the plan context as JSON on
stdin: plan, failover type, direction, group, and the machine map (source -> recovery VM, its
resource group, network and disks). Both also get the context file's path in `DR_CONTEXT` and the
basics in `DR_PLAN`, `DR_FAILOVER_TYPE`, `DR_DIRECTION`, `DR_GROUP`, `DR_JOB`. A non-zero exit or a
timeout fails the step, and the job stops there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dr.failover.provider import FailoverError

# Output kept in the job's step record (characters, tail; our choice: enough for an error message).
OUTPUT_KEEP_CHARS = 4000


@dataclass(frozen=True, kw_only=True)
class ActionResult:
    output: str


def find_runbook(base: Path, name: str) -> Path:
    folder = base / "runbooks"
    exact = folder / name
    if exact.is_file():
        return exact
    matches = sorted(p for p in folder.glob(f"{name}.*") if p.is_file()) if folder.is_dir() else []
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise FailoverError(
            f"runbook {name!r} not found: expected {folder}/{name} or {folder}/{name}.<ext> beside the spec"
        )
    raise FailoverError(f"runbook {name!r} is ambiguous ({', '.join(p.name for p in matches)}): keep one")


def _command(path: Path) -> list[str]:
    if path.suffix == ".py":
        return [sys.executable, str(path)]
    if os.access(path, os.X_OK):
        return [str(path)]
    return ["/bin/sh", str(path)]


def run_script(path: Path, *, context: dict[str, Any], timeout_s: float, workdir: Path,
               stdin_context: bool) -> ActionResult:
    if not path.is_file():
        raise FailoverError(f"script {path} does not exist: fix the path in the plan (relative to the spec)")
    workdir.mkdir(parents=True, exist_ok=True)
    context_file = workdir / f"context-{context['job']}-{context['group']}.json"
    context_file.write_text(json.dumps(context, indent=2))
    env = {
        **os.environ,
        "DR_CONTEXT": str(context_file), "DR_PLAN": context["plan"], "DR_FAILOVER_TYPE": context["failover_type"],
        "DR_DIRECTION": context["direction"], "DR_GROUP": context["group"], "DR_JOB": context["job"],
    }
    process = subprocess.Popen(
        _command(path), cwd=path.parent, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        output, _ = process.communicate(json.dumps(context) if stdin_context else "", timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        raise FailoverError(
            f"{path.name} did not finish within its timeout of {timeout_s:.0f} s and was killed; "
            "raise `timeout:` on the action or fix the script"
        ) from None
    output = (output or "")[-OUTPUT_KEEP_CHARS:]
    if process.returncode != 0:
        last = (output.strip().splitlines() or ["no output"])[-1]
        raise FailoverError(f"{path.name} exited with status {process.returncode}: {last}")
    return ActionResult(output=output)
