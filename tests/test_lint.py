"""The code stays as the project's linters want it: ruff (pyproject's rules) everywhere, mypy strict
on the two packages, the Pulumi program and the benchmarks. Cheap to run (about 10 s), so a change
that breaks either fails here rather than in review."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_is_clean() -> None:
    if shutil.which("ruff") is None:
        pytest.skip("ruff is not installed: pip install -e '.[dev]'")
    result = _run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean() -> None:
    result = _run("mypy", "dr", "agent/dr_agent", "stacks", "benchmarks")
    assert result.returncode == 0, result.stdout + result.stderr
