"""Constants and helpers shared by the discovery tests (the fixtures are in conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.vcsim.simulator import Vcsim

USER = "dr-discovery@vsphere.local"
PASSWORD = "s3cret-Pa55"  # the simulator's only accepted password (test data, not a secret)
PASSWORD_ENV = "DR_TEST_VCENTER_PASSWORD"
# 1 datacenter, 1 cluster of 3 hosts + 1 standalone host, 6 VMs per resource pool: 4 hosts, 12 VMs.
TOPOLOGY = ("-dc", "1", "-cluster", "1", "-host", "3", "-standalone-host", "1", "-vm", "6")

# The estate the simulator is turned into for the session: every VM a Windows Server 2012 R2 guest with
# VMware tools running (replicable), then one VM per support-matrix rule broken on the standalone host.
REPLICABLE_OS = ("windows8Server64Guest", "Microsoft Windows Server 2012 R2 (64-bit)")
BROKEN: dict[str, str] = {
    "DC0_H0_VM0": "33 disks, at most 32 per machine",
    "DC0_H0_VM1": "UEFI boot is not supported",
    "DC0_H0_VM2": "the machine is powered off",
    "DC0_H0_VM3": "2048 GB, at most 1023 GB per disk",
    "DC0_H0_VM4": "VMware tools are not running",
    "DC0_H0_VM5": "'Windows Server 2016' is not supported in asr-2015",
}
REPLICABLE = [f"DC0_C0_RP0_VM{i}" for i in range(6)]
# BROKEN breaks the seed's rules (asr-2015), which are not the default profile: discovery names them.
SEED_RULES = ("--profile", "asr-2015")


@dataclass(frozen=True)
class Sshd:
    port: int
    user: str
    key_file: Path
    known_hosts: Path


def vsphere_args(sim: Vcsim, inventory: Path, *extra: str) -> list[str]:
    return ["--host", sim.host, "--port", str(sim.port), "--http", "--user", USER, "--password-env", PASSWORD_ENV,
            "--inventory", str(inventory), *extra]


# A spec that includes the discovered inventory and protects `members` (format with user, members).
SPEC = """\
estate: lab
support_profile: asr-2015
include: [inventory.yaml]
azure:
  subscription: 00000000-0000-0000-0000-000000000000
  region: westeurope
  resource_group: lab-dr
  connectivity: vpn
  network: {{vnet: lab-vnet, address_space: 10.50.0.0/16, subnet: recovery, subnet_prefix: 10.50.1.0/24}}
  quota: {{vcpus: 100}}
sites:
  - name: hq
    vcenter: {{host: 127.0.0.1, version: "5.5", user: {user}, password: {{env: VCENTER_PASSWORD}}}}
    process_servers:
      - {{name: ps01, address: 10.0.0.20, os: Windows Server 2012 R2}}
    bandwidth_mbps: 100
protection_groups:
  - name: apps
    members: [{members}]
"""
