"""A spec with a dozen seeded mistakes: `dr validate` reports every one, at its line and column."""

from __future__ import annotations

import json
import re

from tests.conftest import ROOT, run_dr

DATA = ROOT / "tests/spec/data"


def test_every_seeded_mistake_at_its_line_and_column() -> None:
    result = run_dr("validate", "tests/spec/data/twelve-mistakes.yaml")
    assert result.returncode == 1
    expected = (DATA / "twelve-mistakes.expected").read_text(encoding="utf-8")
    assert result.stdout == expected
    assert "Traceback" not in result.stderr


def test_each_numbered_mistake_is_found_on_its_own_line() -> None:
    """The YAML marks each mistake with `# N:`; every marked line has a finding, and no other line."""
    lines = (DATA / "twelve-mistakes.yaml").read_text(encoding="utf-8").splitlines()
    marked = {i + 1 for i, line in enumerate(lines) if re.search(r"#\s*\d+:", line)}
    assert len(marked) == 12
    data = json.loads(run_dr("validate", "tests/spec/data/twelve-mistakes.yaml", "--format", "json").stdout)
    found = data["files"][0]["findings"]
    lines_found = {f["line"] for f in found}
    # the `vcpu:` typo also makes `vcpus` missing, reported at the start of that machine
    assert marked <= lines_found
    assert lines_found - marked == {48}
    assert all(f["severity"] == "error" for f in found)
