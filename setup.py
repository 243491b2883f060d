"""The parts of dr-as-code's metadata that derive from the one version source.

`dr_agent.__version__` (agent/dr_agent/__init__.py) is the version of both packages; dr-as-code
depends on dr-agent of exactly that version (dr imports dr_agent.contract always), and its `agent`
extra on dr-agent's data-path extras of that version. Everything else is in pyproject.toml.
"""

from __future__ import annotations

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
# The checkout keeps the agent in ./agent; a copy that builds the two packages side by side
# (`dr lab`'s scratch tree: dr-as-code/ beside agent/) has it one level up.
CANDIDATES = (HERE / "agent" / "dr_agent" / "__init__.py", HERE.parent / "agent" / "dr_agent" / "__init__.py")


def agent_version() -> str:
    for candidate in CANDIDATES:
        if candidate.is_file():
            found = re.search(r'^__version__ = "([^"]+)"$', candidate.read_text(encoding="utf-8"), re.M)
            if found:
                return found.group(1)
    raise SystemExit(f"dr-as-code: no __version__ in {' or '.join(map(str, CANDIDATES))}; build from the checkout")


VERSION = agent_version()

setup(
    version=VERSION,
    # The templates stay at the top of the repository (blueprints/) and install as `dr_blueprints`.
    packages=[*find_packages(include=["dr", "dr.*"]), "dr_blueprints"],
    package_dir={"dr_blueprints": "blueprints"},
    install_requires=[
        f"dr-agent=={VERSION}",
        "pydantic>=2.6",
        "ruamel.yaml>=0.18",
        "jinja2>=3.1",
        "click>=8.1",
        "rich>=13",
    ],
    extras_require={
        # The Pulumi program and `dr preview` (pulumi-azure-native is ~350 MB: only this extra pulls it).
        "azure": ["pulumi>=3.100", "pulumi-azure-native>=3.0"],
        # `dr discover` / `dr profile`: vSphere through pyvmomi, physical servers over SSH.
        "vmware": ["pyvmomi>=8.0", "paramiko>=3.4"],
        # The replication data path: the dr-agent package of the same version, with its extras.
        "agent": [f"dr-agent[capture,azure,metrics]=={VERSION}"],
        # The configuration server, its API, dashboard and notifications.
        "server": ["fastapi>=0.110", "uvicorn>=0.29", "httpx>=0.27", "prometheus-client>=0.20", "cryptography>=42"],
        # PostgreSQL for the configuration server of a large estate (SQLite is the default).
        "postgres": ["psycopg[binary]>=3.1"],
        # The documentation site (docs/mkdocs.yml) and its generated pages.
        "docs": ["mkdocs>=1.6", "mkdocs-material>=9.5", "mkdocs-click>=0.8"],
        "dev": [
            "pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6.100", "jsonschema>=4.21", "trustme>=1.1",
            "aiosmtpd>=1.4", "mypy>=1.10", "ruff>=0.4", "httpx>=0.27",
        ],
    },
)
