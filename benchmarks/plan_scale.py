"""Planner at scale: a synthetic estate of 10,000 machines and 30,000 disks, planned.

Prints, for 2,500, 5,000 and 10,000 machines (3 disks each): the time to validate the estate's
models (the baseline, measured in the same run), the time to plan it, their ratio, and the peak
memory the plan allocates (tracemalloc, in a separate run so that tracing does not slow the timing).
Goal (issue 3): 10,000 machines / 30,000 disks plan in under 2 s on the 2-core CI machine, memory
growing linearly.

    python benchmarks/plan_scale.py            # all three sizes
    python benchmarks/plan_scale.py 10000      # one size
"""

from __future__ import annotations

import random
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dr.model import Estate
from dr.plan import make_plan

DISKS_PER_MACHINE = 3
SITES = 10
GROUP_SIZE = 4  # machines per protection group; every 5th group is multi-VM consistent


def synthetic(machines: int, seed: int = 2015) -> dict[str, Any]:
    """A deterministic estate: Windows and Linux machines, IOPS and churn in realistic ranges."""
    rng = random.Random(seed)
    rows = []
    for i in range(machines):
        windows = i % 3 != 0
        rows.append({
            "name": f"vm{i:05d}",
            "site": f"site{i % SITES}",
            "kind": "vmware",
            "os": "Windows Server 2012 R2" if windows else "CentOS 6.5",
            "vcpus": rng.choice([1, 2, 4, 8]),
            "memory_gb": rng.choice([2, 4, 8, 16, 32]),
            "disks": [
                {"name": f"d{j}", "size_gb": rng.choice([40, 100, 200, 500]), "iops": rng.randint(10, 400),
                 "churn_gb_per_day": round(rng.uniform(0.1, 12), 2)}
                for j in range(DISKS_PER_MACHINE)
            ],
        })
    groups = []
    for g, start in enumerate(range(0, machines, GROUP_SIZE)):
        groups.append({
            "name": f"g{g:05d}",
            "members": [r["name"] for r in rows[start:start + GROUP_SIZE]],
            "policy": {"multi_vm_consistency": g % 5 == 0},
        })
    return {
        "estate": "bench",
        "azure": {
            "subscription": "00000000-0000-0000-0000-000000000000", "region": "westeurope",
            "resource_group": "dr", "connectivity": "expressroute",
            "network": {"vnet": "v", "address_space": "10.50.0.0/16", "subnet": "s", "subnet_prefix": "10.50.1.0/24"},
            "quota": {"vcpus": 100_000},
        },
        "sites": [{"name": f"site{s}", "bandwidth_mbps": 1000} for s in range(SITES)],
        "machines": rows,
        "protection_groups": groups,
        "planning": {"max_storage_accounts": 10_000},
    }


def best_of(runs: int, fn: Any) -> tuple[float, float]:
    """The best wall-clock and the best CPU seconds of `runs` calls (CPU time shows a busy machine)."""
    wall = cpu = float("inf")
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - start_cpu)
    return wall, cpu


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [2_500, 5_000, 10_000]
    make_plan(Estate.model_validate(synthetic(10)))  # load the size catalog once, as a CLI run does
    print(f"{'machines':>8} {'disks':>6} {'validate s':>10} {'plan s':>7} {'plan cpu s':>10} {'ratio':>6} "
          f"{'peak MiB':>8} {'KiB/machine':>11}  servers/accounts")
    for count in sizes:
        data = synthetic(count)
        validate_s, _ = best_of(3, lambda data=data: Estate.model_validate(data))
        estate = Estate.model_validate(data)
        plan_s, plan_cpu = best_of(3, lambda estate=estate: make_plan(estate))
        tracemalloc.start()
        plan = make_plan(estate)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert not plan.errors, plan.errors[:3]
        print(f"{count:>8} {plan.protected_disks:>6} {validate_s:>10.3f} {plan_s:>7.3f} {plan_cpu:>10.3f} "
              f"{plan_s / validate_s:>6.2f} "
              f"{peak / 2**20:>8.1f} {peak / 1024 / count:>11.2f}  "
              f"{len(plan.config_servers)} CS, {len(plan.process_servers)} PS, {len(plan.master_targets)} MTS, "
              f"{len(plan.storage_accounts)} accounts")
    print("ratio: plan time / time to validate the same estate's models; "
          "goal: 10,000 machines / 30,000 disks under 2 s")


if __name__ == "__main__":
    main()
