"""The agent's Linux fact parsers, on this machine's real command output and on other distributions' text."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from dr_agent.facts import (
    COMMANDS,
    FactError,
    collect_local,
    facts_from_outputs,
    parse_findmnt,
    parse_ip_addr,
    parse_lsblk,
    parse_meminfo,
    parse_os_release,
)


def run(command: str) -> str:
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout


def test_local_facts_match_this_machine() -> None:
    facts = collect_local()
    assert facts.cpus == int(run("nproc"))
    assert facts.memory_bytes == parse_meminfo(run("cat /proc/meminfo"))
    assert facts.arch == os.uname().machine
    assert facts.hostname == run("hostname").strip()
    lsblk = json.loads(run(COMMANDS["lsblk"]))["blockdevices"]
    assert [d.name for d in facts.block_devices] == [d["name"] for d in lsblk]
    assert all(d.size_bytes > 0 and d.type == "disk" for d in facts.disks)
    assert any(m.target == "/" for m in facts.mounts)
    assert all(m.fstype not in ("proc", "sysfs", "tmpfs") for m in facts.data_mounts)
    assert not any(i.name == "lo" for i in facts.nics)


def test_os_release_of_older_and_other_distributions() -> None:
    centos = parse_os_release('NAME="CentOS Linux"\nVERSION="7 (Core)"\nID="centos"\nVERSION_ID="7"\n'
                              'PRETTY_NAME="CentOS Linux 7 (Core)"\n')
    assert (centos.id, centos.version_id, centos.display) == ("centos", "7", "CentOS Linux 7")
    sles = parse_os_release('NAME="SLES"\nVERSION="11.3"\nVERSION_ID="11.3"\nID="sles"\n# comment\n\n')
    assert sles.display == "SLES 11 SP3"
    ubuntu = parse_os_release("NAME=Ubuntu\nVERSION_ID='22.04'\nID=ubuntu\n")
    assert ubuntu.display == "Ubuntu 22.04"
    with pytest.raises(FactError, match="neither ID nor NAME"):
        parse_os_release("HOME_URL=https://example.org\n")


def test_lsblk_tree_with_partitions_and_lvm() -> None:
    # util-linux 2.27-2.32 (CentOS 7.x's successors, Ubuntu 18.04) print no PATH column: paths are derived.
    text = json.dumps({"blockdevices": [
        {"name": "sda", "type": "disk", "size": 107374182400, "fstype": None,
         "mountpoint": None, "model": "Virtual disk", "rota": "1", "children": [
             {"name": "sda1", "type": "part", "size": 536870912, "fstype": "xfs",
              "mountpoint": "/boot"},
             {"name": "sda2", "type": "part", "size": 106837311488, "fstype": "LVM2_member",
              "mountpoint": None, "children": [
                  {"name": "vg-root", "type": "lvm", "size": 53687091200,
                   "fstype": "ext4", "mountpoint": "/"}]}]},
        {"name": "sr0", "type": "rom", "size": 1073741312},
    ]})
    devices = parse_lsblk(text)
    assert [d.path for d in devices[0].walk()] == ["/dev/sda", "/dev/sda1", "/dev/sda2", "/dev/mapper/vg-root"]
    assert devices[0].rotational is True
    mounts = parse_findmnt(json.dumps({"filesystems": [
        {"target": "/", "source": "/dev/mapper/vg-root", "fstype": "ext4", "children": [
            {"target": "/boot", "source": "/dev/sda1", "fstype": "xfs"},
            {"target": "/proc", "source": "proc", "fstype": "proc"},
            {"target": "/srv", "source": "/dev/sda1[/srv]", "fstype": "xfs"}]}]}))
    outputs = {"os_release": "ID=centos\nVERSION_ID=6.5\nNAME=CentOS\n", "lsblk": text, "ip_addr": "[]",
               "firmware": "bios\n", "findmnt": "", "nproc": "4\n", "meminfo": "MemTotal:  8388608 kB\n",
               "arch": "x86_64\n", "hostname": "db01\n"}
    outputs["findmnt"] = json.dumps({"filesystems": [{"target": m.target, "source": m.source, "fstype": m.fstype}
                                                     for m in mounts]})
    facts = facts_from_outputs(outputs)
    assert [d.name for d in facts.disks] == ["sda"]
    assert sorted(m.target for m in facts.mounts_on(facts.disks[0])) == ["/", "/boot", "/srv"]
    assert facts.volume_manager == "lvm2" and facts.multipath is None
    assert facts.memory_bytes == 8 * 1024**3 and facts.firmware == "bios"


def test_ip_addresses_skip_loopback() -> None:
    interfaces = parse_ip_addr(json.dumps([
        {"ifname": "lo", "link_type": "loopback", "flags": ["LOOPBACK", "UP"], "address": "00:00:00:00:00:00",
         "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8}]},
        {"ifname": "eth0", "link_type": "ether", "flags": ["UP"], "address": "52:54:00:12:34:56",
         "addr_info": [{"family": "inet", "local": "10.0.0.31", "prefixlen": 24},
                       {"family": "inet6", "local": "fe80::1", "prefixlen": 64}]},
    ]))
    assert [i.name for i in interfaces if not i.loopback] == ["eth0"]
    assert interfaces[1].addresses[0].address == "10.0.0.31"


@pytest.mark.parametrize(("parser", "text", "message"), [
    (parse_lsblk, "lsblk: unknown option -- J", "expected JSON"),
    (parse_lsblk, "[]", "blockdevices"),
    (parse_findmnt, "{}", "filesystems"),
    (parse_ip_addr, "{}", "list of interfaces"),
    (parse_meminfo, "MemFree: 1 kB\n", "MemTotal"),
])
def test_unparseable_output_names_the_command(parser: object, text: str, message: str) -> None:
    with pytest.raises(FactError, match=message):
        parser(text)  # type: ignore[operator]
