"""Source shutdown through the vCenter API, against govmomi's vCenter simulator (a real peer)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from dr.failover.provider import FailoverError
from dr.failover.source import VsphereSource
from dr.model import Estate, Machine, VmwareFacts
from tests.vcsim.simulator import Vcsim, unavailable

USER = "dr-failover@vsphere.local"
PASSWORD = "failover-Pa55"  # the simulator's accepted password (test data, not a secret)


@pytest.fixture(scope="module")
def vcsim() -> Iterator[Vcsim]:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    with Vcsim.start("-dc", "1", "-cluster", "1", "-host", "1", "-vm", "3",
                     "-username", USER, "-password", PASSWORD) as sim:
        yield sim


@pytest.fixture
def source(vcsim: Vcsim) -> VsphereSource:
    from dr.discover.vcenter import Source

    return VsphereSource(sources={"hq": Source(host=vcsim.host, port=vcsim.port, user=USER, password=PASSWORD,
                                               protocol="http")}, guest_timeout_s=5)


def _vm(vcsim: Vcsim, name: str) -> Any:
    from pyVim.connect import SmartConnect

    from tests.vcsim.ops import find_vm

    si = SmartConnect(protocol="http", host=vcsim.host, port=vcsim.port, user=USER, pwd=PASSWORD)
    return find_vm(si, name)


def _machine(sharepoint: Estate, name: str, uuid: str | None = None) -> Machine:
    base = sharepoint.machine("dc01")
    return base.model_copy(update={"name": name, "vmware": VmwareFacts(instance_uuid=uuid) if uuid else None})


def test_a_vm_is_shut_down_once(vcsim: Vcsim, source: VsphereSource, sharepoint: Estate) -> None:
    vm = _vm(vcsim, "DC0_C0_RP0_VM0")
    assert str(vm.runtime.powerState) == "poweredOn"
    # Found by the instance UUID discovery recorded, whatever the spec calls the machine.
    machine = _machine(sharepoint, "dc01", uuid=vm.config.instanceUuid)
    done = source.shutdown(machine)
    assert done.startswith("dc01 ") and done.endswith(f"through http://{vcsim.host}:{vcsim.port}")
    assert str(vm.runtime.powerState) == "poweredOff"
    assert source.shutdown(machine) == "dc01 was already powered off"


def test_found_by_name_and_errors_are_one_line(vcsim: Vcsim, source: VsphereSource, sharepoint: Estate) -> None:
    vm = _vm(vcsim, "DC0_C0_RP0_VM1")
    source.shutdown(_machine(sharepoint, "DC0_C0_RP0_VM1"))
    assert str(vm.runtime.powerState) == "poweredOff"
    with pytest.raises(FailoverError, match=r"nosuch: no VM with instance UUID None or that name"):
        source.shutdown(_machine(sharepoint, "nosuch"))
    physical = _machine(sharepoint, "srv").model_copy(update={"kind": "physical"})
    with pytest.raises(FailoverError, match=r"srv is a physical server: shut it down by hand"):
        source.shutdown(physical)
    from dr.discover.vcenter import Source

    wrong = VsphereSource(sources={"hq": Source(host=vcsim.host, port=vcsim.port, user=USER, password="wrong",
                                                protocol="http")})
    with pytest.raises(Exception, match=r"password was refused") as refused:
        wrong.shutdown(_machine(sharepoint, "DC0_C0_RP0_VM2"))
    assert "wrong" not in str(refused.value)
