"""Both packages install anywhere: built as wheels, installed in a fresh virtual environment that
cannot see the checkout (a private mount namespace hides it), then `dr plan --format html` and
`dr replica configs` run on an example there, their templates and data read from the wheels."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from dr.azure import wheels
from tests.conftest import ROOT, require_root

EXAMPLE = ROOT / "examples" / "sharepoint"


def _metadata(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return zf.read(name).decode().splitlines()


@pytest.mark.slow
@pytest.mark.root
def test_wheels_install_and_run_without_the_checkout(tmp_path: Path) -> None:
    require_root("unshare", "mount", devices=())
    agent, dr = wheels.build(ROOT, tmp_path / "wheels")
    assert agent.sha256 == wheels.digest(agent.path) and len(dr.sha256) == 64

    # One version source: both wheels carry dr_agent.__version__, and dr-as-code pins dr-agent to it.
    import dr_agent

    version = dr_agent.__version__
    assert agent.name.startswith(f"dr_agent-{version}-") and dr.name.startswith(f"dr_as_code-{version}-")
    requires = [line.removeprefix("Requires-Dist: ") for line in _metadata(dr.path) if line.startswith("Requires-Dist")]
    assert f"dr-agent=={version}" in requires
    assert f'dr-agent[azure,capture,metrics]=={version}; extra == "agent"' in requires
    with zipfile.ZipFile(dr.path) as zf:
        names = set(zf.namelist())
    assert {"dr_blueprints/cloud-init/master-target.yaml.j2", "dr_blueprints/reports/plan.html.j2",
            "dr/data/vm_sizes.yaml", "dr/data/support/azure-2026.yaml"} <= names

    venv = tmp_path / "venv"  # no --system-site-packages: only what the wheels declare
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", str(agent.path), str(dr.path)], check=True, timeout=600)

    estate = tmp_path / "estate"
    shutil.copytree(EXAMPLE, estate)
    probe = ("import json, dr, dr_agent, dr.blueprints as b; "
             "print(json.dumps([dr.__file__, dr_agent.__file__, str(b.blueprints_root()), dr.__version__]))")
    script = f"""
mount -t tmpfs tmpfs {ROOT}
test ! -e {ROOT}/pyproject.toml
cd {tmp_path}
{venv}/bin/python -c '{probe}'
{venv}/bin/dr plan estate/dr.yaml --format html > plan.html
{venv}/bin/dr replica configs estate/dr.yaml --out configs
"""
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-ec", script],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    where = json.loads(done.stdout.splitlines()[0])
    assert all(str(venv) in path for path in where[:3]), where
    assert where[3] == version
    html = (tmp_path / "plan.html").read_text()
    assert html.startswith("<!doctype html>") and "contoso-sharepoint-mtsw01" in html
    configs = sorted(p.relative_to(tmp_path / "configs").as_posix() for p in (tmp_path / "configs").rglob("*")
                     if p.is_file())
    assert "contoso-sharepoint-mtsw01/master-target.toml" in configs, configs
