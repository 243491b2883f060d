# mypy: disable-error-code="no-untyped-call"
"""Changes tests make to simulated VMs through the real vSphere API (pyvmomi), as an admin would."""

from __future__ import annotations

from typing import Any

from pyVim.task import WaitForTask
from pyVmomi import vim

KIB_PER_GB = 1024**2


def find_vm(si: Any, name: str) -> Any:
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    try:
        for vm in view.view:
            if vm.name == name:
                return vm
    finally:
        view.Destroy()
    raise LookupError(name)


def vm_names(si: Any) -> list[str]:
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    try:
        return sorted(vm.name for vm in view.view)
    finally:
        view.Destroy()


def reconfigure(vm: Any, spec: Any) -> None:
    WaitForTask(vm.ReconfigVM_Task(spec=spec))


def set_guest(vm: Any, *, guest_id: str, full_name: str, tools: str = "guestToolsRunning",
              ip: str | None = None) -> None:
    """What VMware tools would report: guest OS, tools state and (optionally) an IP address."""
    extra = [
        vim.option.OptionValue(key="SET.guest.guestFullName", value=full_name),
        vim.option.OptionValue(key="SET.guest.guestId", value=guest_id),
        vim.option.OptionValue(key="SET.guest.toolsRunningStatus", value=tools),
        vim.option.OptionValue(key="SET.guest.toolsStatus",
                               value="toolsOk" if tools == "guestToolsRunning" else "toolsNotRunning"),
    ]
    if ip is not None:
        extra.append(vim.option.OptionValue(key="SET.guest.ipAddress", value=ip))
    reconfigure(vm, vim.vm.ConfigSpec(guestId=guest_id, extraConfig=extra))


def set_firmware(vm: Any, firmware: str) -> None:
    reconfigure(vm, vim.vm.ConfigSpec(firmware=firmware))


def set_cpus(vm: Any, cpus: int) -> None:
    reconfigure(vm, vim.vm.ConfigSpec(numCPUs=cpus))


def power_off(vm: Any) -> None:
    WaitForTask(vm.PowerOffVM_Task())


def add_disks(vm: Any, count: int, size_gb: float = 1.0, *, thin: bool = True) -> None:
    """Add `count` disks on new paravirtual SCSI controllers (15 disks per controller, unit 7 reserved)."""
    devices = vm.config.hardware.device
    bus = 1 + max((d.busNumber for d in devices if isinstance(d, vim.vm.device.VirtualSCSIController)), default=-1)
    datastore = vm.datastore[0]
    changes: list[Any] = []
    key = -100
    units = [u for u in range(16) if u != 7]
    added = 0
    while added < count:
        controller = vim.vm.device.ParaVirtualSCSIController(key=key, busNumber=bus, sharedBus="noSharing")
        changes.append(vim.vm.device.VirtualDeviceSpec(operation="add", device=controller))
        for unit in units:
            if added == count:
                break
            backing = vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
                fileName=f"[{datastore.name}]", diskMode="persistent", thinProvisioned=thin, datastore=datastore)
            disk = vim.vm.device.VirtualDisk(key=key - 1 - unit, controllerKey=key, unitNumber=unit,
                                             capacityInKB=int(size_gb * KIB_PER_GB), backing=backing)
            changes.append(vim.vm.device.VirtualDeviceSpec(operation="add", fileOperation="create", device=disk))
            added += 1
        key -= 100
        bus += 1
    reconfigure(vm, vim.vm.ConfigSpec(deviceChange=changes))


def clone_vm(si: Any, source_name: str, name: str) -> Any:
    """A new VM like `source_name` (same folder, pool and host), powered on."""
    source = find_vm(si, source_name)
    spec = vim.vm.CloneSpec(location=vim.vm.RelocateSpec(pool=source.resourcePool, host=source.runtime.host),
                            powerOn=True)
    WaitForTask(source.CloneVM_Task(folder=source.parent, name=name, spec=spec))
    return find_vm(si, name)


def destroy_vm(si: Any, name: str) -> None:
    vm = find_vm(si, name)
    if vm.runtime.powerState == "poweredOn":
        WaitForTask(vm.PowerOffVM_Task())
    WaitForTask(vm.Destroy_Task())
