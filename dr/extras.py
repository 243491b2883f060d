"""Optional dependencies: import them where a command needs them, with a one-line install hint."""

from __future__ import annotations

import importlib
from types import ModuleType

from dr.errors import MissingExtra

# Which extra of dr-as-code brings each optional top-level module.
EXTRA_OF: dict[str, str] = {
    "pulumi": "azure", "pulumi_azure_native": "azure", "pyvmomi": "vmware", "pyVmomi": "vmware",
    "paramiko": "vmware", "zstandard": "agent", "azure": "agent", "xxhash": "agent", "dr_agent": "agent",
    "fastapi": "server", "uvicorn": "server", "prometheus_client": "server",
}


def require(module: str, *, feature: str, extra: str | None = None) -> ModuleType:
    """Import `module` or raise MissingExtra: '<feature> needs the 'E' extra: pip install ...'."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        if err.name is not None and not module.startswith(err.name) and not err.name.startswith(module.split(".")[0]):
            raise  # the module is there but broken inside: not a missing extra
        name = extra or EXTRA_OF.get(module.split(".")[0], "dev")
        hint = "pip install ./agent" if module.startswith("dr_agent") else f"pip install 'dr-as-code[{name}]'"
        raise MissingExtra(f"{feature} needs the '{name}' extra ({module} is not installed): {hint}") from None
