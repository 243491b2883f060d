"""The services' configs in the lab: what `dr replica configs` renders, for the lab's machines.

Two facts differ between the spec's machines and the lab's, and both are given to the product's
own renderer (`dr.cli.replica.render_configs`, what `dr replica configs` runs), never patched into
its output:
    addresses  every server and machine at its lab address (`dr replica configs --address`)
    disks      each disk is a loop device with ext4 mounted under the lab's directory (a lab machine
               shares the host's root file system, so it cannot be /dev/sdX mounted at /). A disk
               with a mounted file system is an in-use disk, so the renderer gives it tracking mode,
               as it would on a real server.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

# (machine, disk) -> (device, mount point) on the lab machine
Placements = Mapping[tuple[str, str], tuple[str, str]]


def placed(estate: Any, placements: Placements) -> Any:
    """The estate with each placed disk's device and mount point replaced (the rest unchanged)."""
    machines = []
    for m in estate.machines:
        disks = []
        for d in m.disks:
            where = placements.get((m.name, d.name))
            disks.append(d if where is None else d.model_copy(update={"device": where[0], "mount_points": [where[1]]}))
        machines.append(m.model_copy(update={"disks": disks}))
    return estate.model_copy(update={"machines": machines})


def render(estate: Any, plan: Any, *, addresses: Mapping[str, str], placements: Placements, out: Path) -> int:
    """Write every service's config and unit under `out` (`<server>/<file>`); how many files."""
    import shutil

    from dr.cli.replica import render_configs

    files = render_configs(placed(estate, placements), plan, addresses)
    shutil.rmtree(out, ignore_errors=True)
    for rel, text in sorted(files.items()):
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
    return len(files)
