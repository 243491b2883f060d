"""No service of the data path imports another: the three meet only through the contract, the
transport and the shared formats, so each can be read (and replaced) on its own."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "agent" / "dr_agent"
# Each service and the modules that are its own.
SERVICES = {
    "agent": {"agent", "sink", "heal", "coordination"},
    "process_server": {"process_server", "ps_coordinator", "ps_disks", "ps_forward", "ps_ingest", "ps_monitor",
                       "ps_resync"},
    "master_target": {"master_target", "target", "pageblob", "retention"},
}


def _imports(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dr_agent."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("dr_agent.")}
    return found


def crossings() -> list[str]:
    found = []
    for service, own in SERVICES.items():
        others = set().union(*(mods for name, mods in SERVICES.items() if name != service))
        for module in sorted(own):
            found += [f"{module} ({service}) imports {peer}" for peer in sorted(_imports(module) & others)]
    return found


def test_no_service_imports_another() -> None:
    assert crossings() == []


def test_the_check_sees_an_import() -> None:
    assert "transport" in _imports("process_server")  # it reads the real import lines
