"""`dr lab`: a whole estate on one Linux machine, from the product's own artifacts.

One module per concept: `topology` (names and addresses, pure), `network` (bridge, namespaces,
hosts files), `disks` (loop devices with ext4 and pre-agent data), `machine` (running a process on a
lab machine), `build` (the wheels and the venv), `services` (Azurite, the configuration server, the
servers, sshd, the workload), `workload` (the source machines' writer and its control client),
`state` (lab.json), and `lab` (`Lab`: up, status, down, and the API the drill drives).
"""

from __future__ import annotations

from dr.lab.errors import LabError
from dr.lab.lab import Component, Lab, LabStatus
from dr.lab.workload import Manifest, Workload

__all__ = ["Component", "Lab", "LabError", "LabStatus", "Manifest", "Workload"]
