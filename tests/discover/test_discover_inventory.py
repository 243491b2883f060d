"""The inventory round trip: comments and hand-set fields survive, changes are reported, scope is kept."""

from __future__ import annotations

from pathlib import Path

import pytest
from ruamel.yaml import YAML

from dr.discover import inventory
from dr.errors import SpecUnreadable
from dr.model import Disk, Machine, VmwareFacts


def vm(name: str, uuid: str, *, cpus: int = 2, disks: int = 1, vcenter: str = "vc1", firmware: str = "bios") -> Machine:
    return Machine(
        name=name, site="hq", kind="vmware", os="Windows Server 2012 R2", vcpus=cpus, memory_gb=8, tools="running",
        firmware=firmware,
        disks=[Disk(name=f"hard-disk-{i + 1}", label=f"Hard disk {i + 1}", size_gb=100, device=f"scsi0:{i}",
                    controller="lsilogic-sas", datastore="ds1", thin=False) for i in range(disks)],
        vmware=VmwareFacts(instance_uuid=uuid, moid=f"vm-{uuid[-2:]}", vcenter=vcenter, host="esx1"),
    )


def write(path: Path, machines: list[Machine], vcenter: str = "vc1") -> inventory.Outcome:
    return inventory.write_discovery(path, machines, owns=inventory.owned_by_vcenter(vcenter, "hq"),
                                     profile="asr-2015")


def test_a_new_inventory_is_valid_model_data_with_a_header(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    outcome = write(path, [vm("b", "u-02"), vm("a", "u-01")])
    assert [c.kind for c in outcome.changes] == ["added", "added"]
    text = path.read_text()
    assert text.startswith("# Inventory written by `dr discover`; include it from the spec: include: [inventory.yaml]")
    data = YAML(typ="safe").load(text)
    machines = [Machine.model_validate(m) for m in data["machines"]]
    assert [m.name for m in machines] == ["a", "b"]
    assert machines[0].discovery is not None and machines[0].discovery.replicable


def test_comments_hand_fields_and_order_survive_rediscovery(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    write(path, [vm("a", "u-01"), vm("b", "u-02", disks=2)])
    text = path.read_text()
    text = text.replace("machines:\n", "machines:\n  # --- production ---\n", 1)
    text = text.replace("  - name: b\n", "  - name: b  # the database\n    tags: {tier: gold}\n    clustered: false\n")
    text = text.replace("        device: scsi0:1\n", "        device: scsi0:1\n        iops: 900  # vendor sizing\n"
                        "        churn_gb_per_day: 40\n")
    path.write_text(text)
    outcome = write(path, [vm("a", "u-01"), vm("b", "u-02", disks=2)])
    assert outcome.changes == ()
    assert path.read_text() == text  # nothing changed: byte for byte the same file
    outcome = write(path, [vm("a", "u-01"), vm("b", "u-02", cpus=8, disks=3)])
    [change] = outcome.changes
    assert change.kind == "changed" and change.machine == "b"
    assert "vcpus: 2 -> 8" in change.details and "disk hard-disk-3 added (100.0 GB)" in change.details
    after = path.read_text()
    for kept in ("  # --- production ---\n", "  - name: b  # the database\n", "    tags: {tier: gold}\n",
                 "        iops: 900  # vendor sizing\n", "        churn_gb_per_day: 40\n"):
        assert kept in after


def test_a_renamed_vm_is_the_same_entry_and_reports_its_new_name(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    write(path, [vm("old-name", "u-01")])
    hand = "  - name: old-name\n    azure_size: Standard_A4\n"
    path.write_text(path.read_text().replace("  - name: old-name\n", hand))
    outcome = write(path, [vm("new-name", "u-01")])
    [change] = outcome.changes
    assert change.kind == "changed" and "name: 'old-name' -> 'new-name'" in change.details
    assert "azure_size: Standard_A4" in path.read_text()


def test_only_machines_of_the_same_vcenter_are_removed(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    write(path, [vm("a", "u-01"), vm("gone", "u-03")])
    write(path, [vm("other", "u-09", vcenter="vc2")], vcenter="vc2")
    outcome = write(path, [vm("a", "u-01")])
    assert [(c.kind, c.machine) for c in outcome.changes] == [("removed", "gone")]
    names = [m["name"] for m in YAML(typ="safe").load(path.read_text())["machines"]]
    assert names == ["a", "other"]


def test_the_verdict_counts_hand_set_fields(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    write(path, [vm("a", "u-01")])
    path.write_text(path.read_text().replace("  - name: a\n", "  - name: a\n    bitlocker: true\n"))
    outcome = write(path, [vm("a", "u-01")])
    [change] = outcome.changes
    assert change.replicable is False
    assert any("BitLocker" in reason for reason in change.reasons)


def test_profiled_figures_land_on_their_disks(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    write(path, [vm("a", "u-01", disks=2)])
    doc = inventory.load(path)
    assert inventory.disk_devices(doc) == {"u-01": ["scsi0:0", "scsi0:1"]}
    changes = inventory.apply_figures(doc, {"u-01": {"scsi0:1": (120.5, 7.25)}})
    assert changes[0].details == ("disk hard-disk-2 iops: None -> 120.5",
                                  "disk hard-disk-2 churn_gb_per_day: None -> 7.25")
    inventory.save(path, doc)
    disks = YAML(typ="safe").load(path.read_text())["machines"][0]["disks"]
    assert "iops" not in disks[0] and disks[1]["iops"] == 120.5 and disks[1]["churn_gb_per_day"] == 7.25


def test_reports_in_text_and_markdown(tmp_path: Path) -> None:
    outcome = write(tmp_path / "i.yaml", [vm("a", "u-01"), vm("efi", "u-02", firmware="uefi")])
    text = inventory.render_changes(outcome.changes, "text", title="vc1")
    assert text.splitlines()[0] == "vc1: 2 added, 0 changed, 0 removed"
    assert "  + efi  (not replicable)" in text
    markdown = inventory.render_changes(outcome.changes, "markdown", title="vc1")
    assert "| added | `efi` | not replicable: UEFI boot is not supported" in markdown


def test_broken_files_are_unreadable_with_their_place(tmp_path: Path) -> None:
    path = tmp_path / "i.yaml"
    path.write_text("machines: {a: 1}\n")
    with pytest.raises(SpecUnreadable, match="machines: must be a list"):
        inventory.load(path)
    path.write_text("- just\n- a list\n")
    with pytest.raises(SpecUnreadable, match="a mapping with machines"):
        inventory.load(path)
    path.write_text("machines:\n  - name: a\n    clustered: maybe  # a hand-set field gone wrong\n")
    with pytest.raises(SpecUnreadable, match="machine 'a': clustered: Input should be a valid boolean"):
        write(path, [vm("a", "u-01")])
