"""Shutting source machines down at failover: vSphere VMs through the vCenter API (pyvmomi).

A planned failover shuts the source down before draining it, so nothing is written after its final
recovery point. With VMware tools running the guest is asked to shut down cleanly (ShutdownGuest)
and given `guest_timeout_s` to power off; otherwise, or past that, the VM is powered off. A VM that
is already off is left as it is (a resumed job repeats the step). The VM is found by the instance
UUID discovery recorded (`machine.vmware.instance_uuid`), else by its name.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dr.failover.provider import FailoverError
from dr.model import Estate, Machine

# How long a guest gets to shut itself down before the VM is powered off (seconds; ASR's planned
# failover also waits for a clean guest shutdown first; our figure).
GUEST_SHUTDOWN_TIMEOUT_S = 300
# How often the power state is polled during a guest shutdown (seconds).
POLL_S = 1.0


def sources_from_spec(estate: Estate) -> dict[str, Any]:
    """One vCenter connection description per site that has one (credentials resolved now)."""
    from dr.discover.vcenter import Source
    from dr.secrets import resolve

    sources: dict[str, Any] = {}
    for site in estate.sites:
        if site.vcenter is None:
            continue
        vc = site.vcenter
        sources[site.name] = Source(host=vc.host, port=vc.port, user=vc.user, insecure=vc.insecure,
                                    password=resolve(vc.password, what=f"the vCenter password of site {site.name}"))
    return sources


@dataclass(frozen=True, kw_only=True)
class VsphereSource:
    """SourceControl for vSphere machines; `sources` maps a site name to its `dr.discover.vcenter.Source`."""

    sources: Mapping[str, Any]
    guest_timeout_s: float = GUEST_SHUTDOWN_TIMEOUT_S

    def shutdown(self, machine: Machine) -> str:
        if machine.kind != "vmware":
            raise FailoverError(
                f"{machine.name} is a physical server: shut it down by hand and confirm, "
                "or run the failover without source automation"
            )
        source = self.sources.get(machine.site)
        if source is None:
            raise FailoverError(f"{machine.name}: site {machine.site} has no vcenter in the spec to shut it down with")
        from dr.discover.vcenter import connect, disconnect, translate

        si = connect(source)
        try:
            vm = self._find(si, machine)
            state = str(vm.runtime.powerState)
            if state == "poweredOff":
                return f"{machine.name} was already powered off"
            how = self._stop(vm)
        except FailoverError:
            raise
        except Exception as err:  # vSphere faults and socket errors become one line
            raise FailoverError(f"{machine.name}: {translate(source, err)}") from None
        finally:
            disconnect(si)
        return f"{machine.name} {how} through {source.where}"

    def _find(self, si: Any, machine: Machine) -> Any:
        from pyVmomi import vim

        content = si.RetrieveContent()
        uuid = machine.vmware.instance_uuid if machine.vmware else None
        if uuid:
            vm = content.searchIndex.FindByUuid(None, uuid, True, True)
            if vm is not None:
                return vm
        view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
        try:
            for vm in view.view:
                if vm.name == machine.name:
                    return vm
        finally:
            view.Destroy()
        raise FailoverError(
            f"{machine.name}: no VM with instance UUID {uuid} or that name in the vCenter; run `dr discover` again"
        )

    def _stop(self, vm: Any) -> str:
        from pyVim.task import WaitForTask

        if str(vm.guest.toolsRunningStatus) == "guestToolsRunning":
            vm.ShutdownGuest()
            deadline = time.monotonic() + self.guest_timeout_s
            while time.monotonic() < deadline:
                if str(vm.runtime.powerState) == "poweredOff":
                    return "shut down by its guest"
                time.sleep(POLL_S)
        WaitForTask(vm.PowerOffVM_Task())  # type: ignore[no-untyped-call]
        return "powered off"
