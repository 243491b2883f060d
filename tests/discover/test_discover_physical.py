"""`dr discover physical` over a real sshd on a loopback port: the "remote" facts are this machine's own."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from dr_agent.facts import collect_local
from ruamel.yaml import YAML

from dr.cli import cli
from tests.discover.support import Sshd


def physical(sshd: Sshd, inventory: Path, *extra: str) -> Any:
    return CliRunner().invoke(cli, [
        "discover", "physical", "127.0.0.1", "--port", str(sshd.port), "--user", sshd.user,
        "--key-file", str(sshd.key_file), "--inventory", str(inventory), "--site", "hq", *extra,
    ], catch_exceptions=False)


def test_physical_server_facts_over_ssh(sshd: Sshd, tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.yaml"
    result = physical(sshd, inventory, "--known-hosts", str(sshd.known_hosts), "--name", "app07", "--format", "json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["changes"][0]["change"] == "added" and report["changes"][0]["machine"] == "app07"
    machine = YAML(typ="safe").load(inventory.read_text())["machines"][0]
    local = collect_local()
    assert machine["kind"] == "physical" and machine["address"] == "127.0.0.1" and machine["site"] == "hq"
    assert machine["os"] == local.os.display
    assert machine["vcpus"] == int(subprocess.run(["nproc"], capture_output=True, text=True).stdout)
    assert abs(machine["memory_gb"] - os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 1024**3) < 0.01
    assert machine["firmware"] == ("uefi" if Path("/sys/firmware/efi").is_dir() else "bios")
    assert [d["device"] for d in machine["disks"]] == [d.path for d in local.disks]
    assert [d["size_gb"] for d in machine["disks"]] == [round(d.size_bytes / 1024**3, 3) for d in local.disks]
    root = next(m for m in local.data_mounts if m.target == "/")
    assert any("/" in d.get("mount_points", []) for d in machine["disks"]) == any(
        root.source in {x.path for x in d.walk()} for d in local.disks)
    assert machine["nics"] == max(len(local.nics), 1)
    assert "tools" not in machine
    assert machine["discovery"]["replicable"] in (True, False)
    assert "discovery" in machine


def test_rediscovery_of_a_physical_server_keeps_hand_fields(sshd: Sshd, tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("# hand-kept estate\nmachines:\n  - name: db01  # written by hand\n    site: hq\n"
                         "    kind: physical\n    address: 10.0.0.9\n    os: CentOS 6.5\n    vcpus: 2\n"
                         "    memory_gb: 8\n    disks: [{name: sda, size_gb: 100}]\n")
    first = physical(sshd, inventory, "--known-hosts", str(sshd.known_hosts), "--name", "app07")
    assert first.exit_code == 0, first.stderr
    text = inventory.read_text().replace("  - name: app07\n", "  - name: app07\n    clustered: true  # by hand\n")
    inventory.write_text(text)
    second = physical(sshd, inventory, "--known-hosts", str(sshd.known_hosts), "--name", "app07", "--format", "json")
    assert second.exit_code == 0, second.stderr
    changes = json.loads(second.stdout)["changes"]
    assert [c["machine"] for c in changes] == ["app07"]  # the verdict now includes the clustered rule
    after = inventory.read_text()
    assert after.startswith("# hand-kept estate\n")
    assert "  - name: db01  # written by hand\n" in after  # another source's machine is never removed
    assert "    clustered: true  # by hand\n" in after
    assert "clustered servers cannot be protected" in after


def test_unknown_host_key_is_refused_with_a_hint(sshd: Sshd, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    result = physical(sshd, tmp_path / "inventory.yaml", "--known-hosts", str(empty))
    assert result.exit_code == 2
    assert "host key is not in" in result.stderr and "--accept-new-host-key" in result.stderr
    accepted = physical(sshd, tmp_path / "inventory.yaml", "--known-hosts", str(empty), "--accept-new-host-key")
    assert accepted.exit_code == 0, accepted.stderr


def test_wrong_key_is_bad_credentials(sshd: Sshd, tmp_path: Path) -> None:
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    result = CliRunner().invoke(cli, [
        "discover", "physical", "127.0.0.1", "--port", str(sshd.port), "--user", sshd.user, "--key-file", str(other),
        "--known-hosts", str(sshd.known_hosts), "--inventory", str(tmp_path / "i.yaml"), "--site", "hq"])
    assert result.exit_code == 2
    assert result.stderr.startswith("dr: error: ") and "authentication refused" in result.stderr
    assert not (tmp_path / "i.yaml").exists()
