"""The product's own artifacts: the agent wheel and the dr wheel, built from the source tree into the
lab's directory, and the lab's virtual environment with both installed from those wheels.

Everything the lab starts on its servers (the configuration server, process servers, master
targets, the workload) runs from this environment's entry points, never from the checkout; the
agent wheel is what `dr agent push` installs on each source machine.

The sources (what git would commit: tracked and unignored new files) are copied to a scratch
directory first, so building leaves nothing in the checkout.
The environment sees the host's site-packages (--system-site-packages) for the two packages'
dependencies: the lab installs no dependency from a network.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from dr.lab.errors import LabError
from dr.push import EXTRAS as AGENT_EXTRAS  # a lab machine's agent is installed as `dr agent push` installs it


@dataclass(frozen=True)
class Artifacts:
    agent_wheel: Path
    dr_wheel: Path
    venv: Path

    @property
    def agent_wheelhouse(self) -> Path:
        """The agent wheel and every dependency's wheel: what `dr agent push --wheel` is given."""
        return self.agent_wheel.parent.parent / "agent-wheels"

    @property
    def dr(self) -> Path:
        return self.venv / "bin" / "dr"

    @property
    def dr_agent(self) -> Path:
        return self.venv / "bin" / "dr-agent"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


def source_tree() -> Path:
    """The checkout the running `dr` comes from (the lab builds what it runs)."""
    import dr

    root = Path(dr.__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file() or not (root / "agent" / "pyproject.toml").is_file():
        raise LabError(f"dr lab builds the product's wheels from its source tree, and {root} is not one: "
                       "run dr from a checkout (pip install -e . ./agent)")
    return root


def _files(root: Path) -> list[str]:
    """The tree as a commit of it would hold it: tracked files and new ones git does not ignore
    (no build output, caches or node_modules)."""
    done = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                          capture_output=True, check=False, timeout=120)
    if done.returncode != 0:
        raise LabError(f"dr lab builds from a git checkout, and `git ls-files` failed in {root}: "
                       f"{done.stderr.decode(errors='replace').strip()[:200]}")
    return [f for f in done.stdout.decode().split("\0") if f and (root / f).is_file()]


def _run(argv: list[str], what: str, log: Path) -> None:
    with open(log, "a") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False, timeout=900)
    if done.returncode != 0:
        raise LabError(f"{what} failed (exit {done.returncode}): see {log}")


def build(directory: Path, *, log: Path) -> Artifacts:
    """Build both wheels and install them into `directory/venv` (rebuilt every time: the tree changes)."""
    root = source_tree()
    scratch, wheels, venv = directory / "build", directory / "wheels", directory / "venv"
    for d in (scratch, wheels):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    src = scratch / "src"
    for rel in _files(root):
        dest = src / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, dest)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _run([*pip, "wheel", "--no-deps", "-w", str(wheels), str(src / "agent")], "building the agent wheel", log)
    _run([*pip, "wheel", "--no-deps", "-w", str(wheels), str(src)], "building the dr wheel", log)
    agent_wheel = next(wheels.glob("dr_agent-*.whl"))
    dr_wheel = next(wheels.glob("dr_as_code-*.whl"))
    # what a source machine installs: the agent wheel and its dependencies' wheels (the machines
    # have no package index: the lab's network reaches nothing outside the lab)
    house = directory / "agent-wheels"
    house.mkdir(exist_ok=True)
    for old in house.glob("dr_agent-*.whl"):
        old.unlink()
    shutil.copy2(agent_wheel, house / agent_wheel.name)
    _run([*pip, "wheel", "-w", str(house), f"{house / agent_wheel.name}[{AGENT_EXTRAS}]"],
         "collecting the agent's dependency wheels", log)
    if not (venv / "bin" / "python").exists():
        _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], "creating the lab's venv", log)
    _run([str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q", "install", "--no-deps",
          "--no-index", "--force-reinstall", str(agent_wheel), str(dr_wheel)], "installing the wheels", log)
    shutil.rmtree(scratch, ignore_errors=True)
    return Artifacts(agent_wheel=agent_wheel, dr_wheel=dr_wheel, venv=venv)


def artifacts(directory: Path) -> Artifacts:
    """The artifacts of a lab that is up (LabError when they were not built)."""
    wheels, venv = directory / "wheels", directory / "venv"
    agent = next(iter(wheels.glob("dr_agent-*.whl")), None) if wheels.is_dir() else None
    dr_wheel = next(iter(wheels.glob("dr_as_code-*.whl")), None) if wheels.is_dir() else None
    if agent is None or dr_wheel is None or not (venv / "bin" / "dr").exists():
        raise LabError(f"the lab's wheels are not built under {directory}: run `dr lab up SPEC`")
    return Artifacts(agent_wheel=agent, dr_wheel=dr_wheel, venv=venv)
