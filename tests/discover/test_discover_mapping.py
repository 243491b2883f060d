# mypy: disable-error-code="no-untyped-call"
"""Mapping vSphere's VM properties onto the model (pure: pyVmomi data objects in, a Machine out)."""

from __future__ import annotations

import pytest
from pyVmomi import vim

from dr.discover.vcenter import Lookup, guest_os, machine_from_properties

LOOKUP = Lookup(
    names={"host-1": "esx1", "domain-c1": "prod", "datacenter-1": "DC", "datastore-1": "san01",
           "network-1": "VM Network"},
    parents={"host-1": "domain-c1", "domain-c1": "group-h1", "group-h1": "datacenter-1"},
    kinds={"host-1": "HostSystem", "domain-c1": "ClusterComputeResource", "group-h1": "Folder",
           "datacenter-1": "Datacenter", "datastore-1": "Datastore", "network-1": "Network"},
)


def props(**overrides: object) -> dict[str, object]:
    datastore = vim.Datastore("datastore-1")
    sas = vim.vm.device.VirtualLsiLogicSASController(key=1000, busNumber=0, deviceInfo=vim.Description(label="SCSI 0"))
    ide = vim.vm.device.VirtualIDEController(key=200, busNumber=1)
    flat = vim.vm.device.VirtualDisk.FlatVer2BackingInfo(fileName="[san01] web/web.vmdk", thinProvisioned=False,
                                                         datastore=datastore)
    rdm = vim.vm.device.VirtualDisk.RawDiskMappingVer1BackingInfo(fileName="[san01] web/web_1.vmdk")
    disks = [
        vim.vm.device.VirtualDisk(key=2000, controllerKey=1000, unitNumber=0, capacityInBytes=80 * 1024**3,
                                  deviceInfo=vim.Description(label="Hard disk 1"), backing=flat),
        vim.vm.device.VirtualDisk(key=2001, controllerKey=1000, unitNumber=1, capacityInKB=500 * 1024**2,
                                  deviceInfo=vim.Description(label="Hard disk 2"), backing=rdm),
        vim.vm.device.VirtualDisk(key=3000, controllerKey=200, unitNumber=0, capacityInBytes=1024**3,
                                  deviceInfo=vim.Description(label=""), backing=flat),
    ]
    nics = [vim.vm.device.VirtualVmxnet3(key=4000, macAddress="00:50:56:aa:bb:cc", addressType="assigned"),
            vim.vm.device.VirtualE1000(key=4001, macAddress="00:50:56:aa:bb:cd", addressType="assigned")]
    base: dict[str, object] = {
        "name": "web01", "config.instanceUuid": "5003a1b2-0000-4000-8000-000000000001",
        "config.guestId": "centos64Guest", "config.guestFullName": "CentOS 4/5/6/7 (64-bit)",
        "guest.guestFullName": "CentOS 6.5 (64-bit)", "guest.guestId": "centos64Guest", "guest.guestFamily": "",
        "config.firmware": "bios", "config.hardware.numCPU": 4, "config.hardware.memoryMB": 12288,
        "config.hardware.device": [sas, ide, *disks, *nics], "runtime.powerState": "poweredOff",
        "runtime.host": vim.HostSystem("host-1"), "guest.toolsRunningStatus": "guestToolsNotRunning",
        "guest.toolsStatus": "toolsNotRunning", "network": [vim.Network("network-1")],
        "guest.net": [vim.vm.GuestInfo.NicInfo(ipAddress=["10.0.0.7", "fe80::1"])],
    }
    base.update(overrides)
    return base


def test_a_vm_maps_onto_the_model() -> None:
    machine = machine_from_properties(props(), "vm-7", LOOKUP, site="hq", vcenter="vc", version="5.5")
    assert (machine.name, machine.kind, machine.os, machine.arch) == ("web01", "vmware", "CentOS 6.5", "x86_64")
    assert (machine.vcpus, machine.memory_gb, machine.nics) == (4, 12.0, 2)
    assert (machine.power_state, machine.tools, machine.firmware) == ("off", "not_running", "bios")
    assert machine.address == "10.0.0.7"
    facts = machine.vmware
    assert facts is not None
    assert (facts.datacenter, facts.cluster, facts.host, facts.moid) == ("DC", "prod", "esx1", "vm-7")
    assert facts.guest_family is None  # empty strings from vSphere are unset, not invalid
    assert facts.networks == ["VM Network"] and facts.ip_addresses == ["10.0.0.7", "fe80::1"]
    first, rdm, ide = machine.disks
    assert (first.name, first.size_gb, first.device, first.controller, first.datastore, first.thin) == (
        "hard-disk-1", 80.0, "scsi0:0", "lsilogic-sas", "san01", False)
    assert (rdm.size_gb, rdm.thin, rdm.datastore, rdm.device) == (500.0, None, "san01", "scsi0:1")
    assert (ide.name, ide.label, ide.controller, ide.device) == ("disk-3000", "disk 3000", "ide", "ide1:0")


def test_efi_and_secure_boot() -> None:
    machine = machine_from_properties(
        props(**{"config.firmware": "efi", "config.bootOptions": vim.vm.BootOptions(efiSecureBootEnabled=True)}),
        "vm-7", LOOKUP, site="hq", vcenter="vc", version="6.7")
    assert machine.firmware == "uefi" and machine.secure_boot is True


@pytest.mark.parametrize(("names", "guest_id", "expected"), [
    (["Microsoft Windows Server 2012 R2 (64-bit)"], "windows8Server64Guest", ("Windows Server 2012 R2", "x86_64")),
    ([None, "Microsoft Windows Server 2008 R2 (64-bit)"], "windows7Server64Guest",
     ("Windows Server 2008 R2", "x86_64")),
    ([None, "Other (32-bit)"], "otherGuest", ("Other", "x86")),
    ([None, None], "rhel6_64Guest", ("RHEL 6", "x86_64")),
    (["SUSE Linux Enterprise 11 (64-bit)"], "sles11_64Guest", ("SUSE Linux Enterprise 11", "x86_64")),
    ([None, None], "winNetStandardGuest", ("Windows Server 2003", "x86")),
])
def test_guest_os_names_the_validator_parses(names: list[str | None], guest_id: str,
                                            expected: tuple[str, str]) -> None:
    assert guest_os(names, guest_id) == expected
