"""`dr discover vcenter|esxi` against govmomi's simulator: facts, verdicts, validate/plan, rediscovery."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dr.cli import cli
from tests.discover.support import PASSWORD, REPLICABLE, SEED_RULES, SPEC, USER, vsphere_args
from tests.vcsim import ops
from tests.vcsim.simulator import Vcsim


def run(args: list[str]) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def discover(sim: Vcsim, inventory: Path, *extra: str, rules: tuple[str, ...] = SEED_RULES) -> dict[str, Any]:
    code, out, err = run(["discover", "vcenter", *vsphere_args(sim, inventory, "--site", "hq", *rules,
                                                                "--format", "json", *extra)])
    assert code == 0, err
    assert PASSWORD not in out + err
    data: dict[str, Any] = json.loads(out)
    return data


def load(path: Path) -> dict[str, Any]:
    from ruamel.yaml import YAML

    data: dict[str, Any] = YAML(typ="safe").load(path.read_text())
    return data


def test_discovers_every_vm_of_every_host_with_its_facts(vcsim: Vcsim, password_env: str, estate: dict[str, str],
                                                         tmp_path: Path) -> None:
    report = discover(vcsim, tmp_path / "inventory.yaml")
    assert report["source"]["product"] == "VirtualCenter"
    assert report["source"]["version"] == "6.5"
    machines = {m["name"]: m for m in load(tmp_path / "inventory.yaml")["machines"]}
    assert len(machines) == 12
    assert len({m["vmware"]["host"] for m in machines.values()}) == 4
    vm = machines["DC0_C0_RP0_VM0"]
    assert vm["kind"] == "vmware" and vm["site"] == "hq"
    assert vm["os"] == "Windows Server 2012 R2"
    assert vm["firmware"] == "bios" and vm["power_state"] == "on" and vm["tools"] == "running"
    assert vm["vcpus"] == 1 and vm["memory_gb"] > 0 and vm["nics"] == 1
    facts = vm["vmware"]
    assert facts["datacenter"] == "DC0" and facts["cluster"] == "DC0_C0" and facts["host"].startswith("DC0_C0_H")
    assert facts["moid"].startswith("vm-") and len(facts["instance_uuid"]) == 36
    assert facts["guest_id"] == "windows8Server64Guest" and facts["vcenter_version"] == "6.5"
    assert facts["networks"] == ["DC0_DVPG0"] and facts["ip_addresses"][0].startswith("10.0.0.")
    assert vm["disks"][0] == {"name": "disk-202-0", "size_gb": 0.001, "label": "disk-202-0", "device": "scsi0:0",
                              "controller": "pvscsi", "datastore": "LocalDS_0", "thin": True}
    assert "cluster" not in machines["DC0_H0_VM0"]["vmware"]  # a standalone host's VM
    for name in REPLICABLE:
        assert machines[name]["discovery"] == {"replicable": True}
    verdicts = {m["name"]: m for m in report["machines"]}
    assert all(verdicts[name]["replicable"] for name in REPLICABLE)


@pytest.mark.parametrize("name", ["DC0_H0_VM0", "DC0_H0_VM1", "DC0_H0_VM2", "DC0_H0_VM3", "DC0_H0_VM4",
                                  "DC0_H0_VM5"])
def test_each_vm_made_non_replicable_is_listed_with_its_reason(vcsim: Vcsim, password_env: str,
                                                               estate: dict[str, str], tmp_path: Path,
                                                               name: str) -> None:
    report = discover(vcsim, tmp_path / "inventory.yaml")
    verdict = next(m for m in report["machines"] if m["name"] == name)
    assert verdict["replicable"] is False
    assert len(verdict["reasons"]) == 1, verdict["reasons"]
    assert estate[name] in verdict["reasons"][0]
    written = next(m for m in load(tmp_path / "inventory.yaml")["machines"] if m["name"] == name)
    assert written["discovery"] == {"replicable": False, "reasons": verdict["reasons"]}


def test_text_and_markdown_reports_name_the_reasons(vcsim: Vcsim, password_env: str, estate: dict[str, str],
                                                    tmp_path: Path) -> None:
    code, out, _ = run(["discover", "vcenter", *vsphere_args(vcsim, tmp_path / "i.yaml", "--site", "hq",
                                                               *SEED_RULES)])
    assert code == 0
    assert "12 added, 0 changed, 0 removed" in out
    assert "6 of 12 machines can be replicated; 6 cannot:" in out
    assert "UEFI boot is not supported" in out
    code, out, _ = run(["discover", "vcenter", *vsphere_args(vcsim, tmp_path / "i.yaml", "--site", "hq",
                                                               *SEED_RULES, "--format", "markdown")])
    assert code == 0
    assert "0 added, 0 changed, 0 removed." in out
    assert "| `DC0_H0_VM3` | 2048 GB, at most 1023 GB per disk" in out




def test_a_spec_including_the_inventory_validates_and_plans(vcsim: Vcsim, password_env: str,
                                                            estate: dict[str, str], tmp_path: Path) -> None:
    discover(vcsim, tmp_path / "inventory.yaml")
    spec = tmp_path / "dr.yaml"
    spec.write_text(SPEC.format(user=USER, members=", ".join(REPLICABLE)))
    code, out, err = run(["validate", str(spec)])
    assert code == 0, out + err
    assert "inventory only" in out + err  # the non-replicable VMs are warnings, not errors
    code, out, err = run(["plan", str(spec), "--format", "json"])
    assert code == 0, out + err
    # Protecting a non-replicable VM is an error that points into the inventory.
    spec.write_text(SPEC.format(user=USER, members=", ".join([*REPLICABLE, "DC0_H0_VM1"])))
    code, out, err = run(["validate", str(spec)])
    assert code == 1
    assert "inventory.yaml" in out + err and "UEFI" in out + err


def test_rediscovery_keeps_comments_and_hand_set_fields_and_reports_changes(
        vcsim: Vcsim, vsphere: Any, password_env: str, estate: dict[str, str], tmp_path: Path) -> None:
    # The default profile, so that the hand-set size is one deployable today: every size of the seed's
    # profile is retired or retiring, which discovery reports as a reason (a change of VM1's verdict).
    inventory = tmp_path / "inventory.yaml"
    discover(vcsim, inventory, rules=())
    text = inventory.read_text()
    text = text.replace("  - name: DC0_C0_RP0_VM1\n",
                        "  # payroll: owned by finance, fails over first\n  - name: DC0_C0_RP0_VM1\n"
                        "    tags: {owner: finance}  # kept by rediscovery\n    azure_size: Standard_D4s_v5\n", 1)
    text = text.replace("        thin: true\n", "        thin: true\n        iops: 250  # measured by hand\n", 1)
    inventory.write_text(text)
    ops.clone_vm(vsphere, "DC0_C0_RP0_VM2", "DC0_C0_RP0_NEW")
    ops.set_cpus(ops.find_vm(vsphere, "DC0_C0_RP0_VM3"), 4)
    try:
        report = discover(vcsim, inventory, rules=())
        changes = {(c["change"], c["machine"]): c for c in report["changes"]}
        assert set(changes) == {("added", "DC0_C0_RP0_NEW"), ("changed", "DC0_C0_RP0_VM3")}
        assert "vcpus: 1 -> 4" in changes[("changed", "DC0_C0_RP0_VM3")]["details"]
        after = inventory.read_text()
        assert "  # payroll: owned by finance, fails over first\n  - name: DC0_C0_RP0_VM1\n" in after
        assert "    tags: {owner: finance}  # kept by rediscovery\n" in after
        assert "    azure_size: Standard_D4s_v5\n" in after
        assert "        iops: 250  # measured by hand\n" in after
        assert after.count("- name: DC0_C0_RP0_NEW") == 1
        code, out, _ = run(["discover", "vcenter", *vsphere_args(vcsim, inventory, "--site", "hq", "--dry-run")])
        assert code == 0 and "0 added, 0 changed, 0 removed" in out
    finally:
        ops.destroy_vm(vsphere, "DC0_C0_RP0_NEW")
        ops.set_cpus(ops.find_vm(vsphere, "DC0_C0_RP0_VM3"), 1)
    report = discover(vcsim, inventory, rules=())
    kinds = {(c["change"], c["machine"]) for c in report["changes"]}
    assert kinds == {("removed", "DC0_C0_RP0_NEW"), ("changed", "DC0_C0_RP0_VM3")}
    assert "- name: DC0_C0_RP0_NEW" not in inventory.read_text()
    assert "# payroll: owned by finance" in inventory.read_text()


def test_a_standalone_esxi_host_is_discovered_the_same_way(password_env: str, tmp_path: Path) -> None:
    from tests.vcsim.simulator import unavailable

    if unavailable():
        pytest.skip(str(unavailable()))
    with Vcsim.start("-esx", "-vm", "3", "-username", USER, "-password", PASSWORD) as esx:
        code, out, err = run(["discover", "esxi", *vsphere_args(esx, tmp_path / "inventory.yaml", "--site", "branch",
                                                                 "--declare-site", "--format", "json")])
    assert code == 0, err
    report = json.loads(out)
    assert report["source"]["product"] == "HostAgent"
    data = load(tmp_path / "inventory.yaml")
    assert len(data["machines"]) == 3
    assert all("cluster" not in m["vmware"] for m in data["machines"])
    assert data["sites"][0]["name"] == "branch"
    assert data["sites"][0]["esxi_hosts"][0]["password"] == {"env": password_env}
    assert PASSWORD not in (tmp_path / "inventory.yaml").read_text()
