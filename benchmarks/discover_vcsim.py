"""Discovery of 1,000 simulated VMs (govmomi's vcsim): time, and ratios against baselines of the same run.

    python benchmarks/discover_vcsim.py [--vms 1000]

Baselines, measured against the same simulator in the same run:
  names      one PropertyCollector retrieval of only the VM names (the floor of any discovery)
  per-VM     reading the same facts with one round trip per VM (pyvmomi attribute access), timed on a
             sample of VMs and scaled to all of them: what the container view + one retrieval avoids
Goal (issue 5): 1,000 VMs in under 60 s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dr.discover import inventory
from dr.discover.vcenter import Source, connect, disconnect, discover, retrieve_names
from tests.vcsim.simulator import Vcsim

USER, PASSWORD = "bench", "bench-password"  # the simulator's login (test data)
GOAL_S = 60.0  # issue 5: 1,000 VMs discovered in under 60 s


def per_vm_seconds(source: Source, sample: int) -> tuple[float, int]:
    """Read name, hardware, guest and runtime of `sample` VMs one property access at a time."""
    from pyVmomi import vim

    si = connect(source)
    try:
        content = si.RetrieveContent()
        view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
        vms = list(view.view)[:sample]
        start = time.perf_counter()
        for vm in vms:
            _ = (vm.name, vm.config.hardware.device, vm.config.guestId, vm.guest.toolsRunningStatus,
                 vm.runtime.powerState, vm.runtime.host.name, [n.name for n in vm.network])
        elapsed = time.perf_counter() - start
        view.Destroy()
        return elapsed, len(vms)
    finally:
        disconnect(si)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vms", type=int, default=1000, help="simulated VMs (split over a cluster and a host)")
    parser.add_argument("--per-vm-sample", type=int, default=50, help="VMs timed for the per-VM baseline")
    options = parser.parse_args()
    per_pool = max(1, options.vms // 2)  # one cluster resource pool + one standalone host
    started = time.perf_counter()
    with Vcsim.start("-cluster", "1", "-host", "3", "-standalone-host", "1", "-vm", str(per_pool),
                     "-username", USER, "-password", PASSWORD, timeout=600) as sim:
        boot = time.perf_counter() - started
        source = Source(host=sim.host, port=sim.port, user=USER, password=PASSWORD, protocol="http")
        si = connect(source)
        try:
            from pyVmomi import vim

            start = time.perf_counter()
            names = retrieve_names(si, vim.VirtualMachine)
            names_s = time.perf_counter() - start
        finally:
            disconnect(si)
        start = time.perf_counter()
        found = discover(source, site="bench")
        discover_s = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "inventory.yaml"
            start = time.perf_counter()
            inventory.write_discovery(path, found.machines, owns=inventory.owned_by_vcenter(found.vcenter, "bench"),
                                      profile="asr-2015")
            write_s = time.perf_counter() - start
            start = time.perf_counter()
            outcome = inventory.write_discovery(path, found.machines,
                                                owns=inventory.owned_by_vcenter(found.vcenter, "bench"),
                                                profile="asr-2015")
            rewrite_s = time.perf_counter() - start
            size_kib = path.stat().st_size / 1024
        sample_s, sampled = per_vm_seconds(source, options.per_vm_sample)
    per_vm_total = sample_s / max(sampled, 1) * len(found.machines)
    total = discover_s + write_s
    print(f"simulator: {len(names)} VMs on 4 hosts (started in {boot:.1f} s)")
    print(f"baseline names only (1 retrieval):  {names_s:8.2f} s")
    print(f"discovery (1 retrieval + mapping):  {discover_s:8.2f} s   x{discover_s / names_s:.1f} the names baseline")
    print(f"inventory write ({size_kib:.0f} KiB):         {write_s:8.2f} s")
    print(f"rediscovery write, {len(outcome.changes)} changes:     {rewrite_s:8.2f} s")
    print(f"per-VM round trips (scaled from {sampled}): {per_vm_total:8.2f} s   "
          f"x{per_vm_total / discover_s:.1f} the single retrieval")
    verdict = "meets" if total < GOAL_S else "MISSES"
    print(f"discover + write {len(found.machines)} VMs: {total:.2f} s, {verdict} the {GOAL_S:.0f} s goal "
          f"({total / GOAL_S:.2f} of it)")


if __name__ == "__main__":
    main()
