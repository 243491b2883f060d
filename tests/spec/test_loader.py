"""Loading: positions per node and per included file, durations, and the Python DSL."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dr.duration import format_duration, parse_duration
from dr.loader import load_document
from dr.validate import validate_path
from tests.conftest import ROOT


def test_positions_of_keys_and_values() -> None:
    doc = load_document(ROOT / "examples/sharepoint/dr.yaml")
    value = doc.source.locate(("machines", 1, "disks", 1, "size_gb"))
    key = doc.source.locate(("machines", 1, "disks", 1, "size_gb"), key=True)
    assert value is not None and key is not None
    assert (value.line, value.col, value.length) == (50, 31, 3)
    assert (key.line, key.col) == (50, 22)
    line = doc.source.lines[value.file][value.line - 1]
    assert line[value.col - 1:value.col - 1 + value.length] == "500"


def test_included_items_keep_their_own_file_and_line() -> None:
    doc = load_document(ROOT / "examples/linux-estate/dr.yaml")
    names = [m["name"] for m in doc.data["machines"]]
    assert names == ["lb01", "app01", "app02", "pg01", "pg02"]
    loc = doc.source.locate(("machines", 3, "address"))
    assert loc is not None and loc.file.endswith("inventory.yaml") and loc.line == 7


def test_finding_in_an_included_file_points_into_it(tmp_path: Path) -> None:
    (tmp_path / "inv.yaml").write_text(
        "# discovered\nmachines:\n  - name: old01\n    site: hq\n    kind: vmware\n"
        "    os: Windows Server 2012 R2\n    vcpus: 2\n    memory_gb: 4\n"
        "    disks:\n      - {name: c, size_gb: 40000}\n")  # above azure-2026's 32767 GB
    spec = (ROOT / "examples/sharepoint/dr.yaml").read_text()
    spec = spec.replace("members: [dc01, sql01, app01, web01, web02]",
                        "members: [dc01, sql01, app01, web01, web02, old01]")
    (tmp_path / "dr.yaml").write_text("include: [inv.yaml]\n" + spec)
    shutil.copytree(ROOT / "examples/sharepoint/runbooks", tmp_path / "runbooks")  # the plan's runbook
    report = validate_path(tmp_path / "dr.yaml")
    [finding] = report.findings
    assert finding.dotted == "machines.5.disks.0.size_gb"
    assert finding.location is not None and finding.location.file.endswith("inv.yaml")
    assert (finding.location.line, finding.location.col) == (10, 28)


def test_included_file_may_only_add_lists(tmp_path: Path) -> None:
    from dr.errors import SpecUnreadable

    (tmp_path / "inv.yaml").write_text("azure: {region: x}\n")
    (tmp_path / "dr.yaml").write_text("include: inv.yaml\nestate: x\n")
    with pytest.raises(SpecUnreadable, match=r"inv\.yaml:1:1: an included file may only add"):
        load_document(tmp_path / "dr.yaml")


@given(st.integers(min_value=0, max_value=10**8))
def test_duration_round_trip(seconds: int) -> None:
    delta = timedelta(seconds=seconds)
    assert parse_duration(format_duration(delta)) == delta


@pytest.mark.parametrize("text,seconds", [("15m", 900), ("24h", 86400), ("3d", 259200), ("1h30m", 5400),
                                          ("30s", 30), ("0s", 0)])
def test_duration_forms(text: str, seconds: int) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("bad", ["15 minutes", "m15", "1m1h", "", "-5m", True, [1]])
def test_duration_refuses(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)
