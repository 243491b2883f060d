"""The project's own wheels, built from the checkout, with their SHA-256: what the servers install.

`build(checkout, out)` builds `dr-agent` (agent/) and `dr-as-code` (the root) with pip, the same
way a user would (`pip wheel --no-deps`), and returns each wheel with its digest. The stack
publishes these files to a private container of the estate's storage and the bootstraps install
them with `pip --require-hashes`; nothing is ever installed by name from a public index (a package
named `dr-agent` on the public index belongs to an unrelated project). Pulumi-free.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dr.errors import DrError

BUILD_TIMEOUT_S = 600  # pip builds both wheels in about 25 s on the project's 2-core VM (measured)


class WheelBuildFailed(DrError):
    exit_code = 1


@dataclass(frozen=True)
class Wheel:
    path: Path
    sha256: str  # hex digest of the file

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def distribution(self) -> str:
        """`dr_agent` or `dr_as_code` (the wheel file name's first field)."""
        return self.name.split("-", 1)[0]


def digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def checkout_root() -> Path:
    """The checkout this `dr` runs from (the folder holding pyproject.toml, setup.py and agent/)."""
    root = Path(__file__).resolve().parents[2]
    if not ((root / "setup.py").is_file() and (root / "agent" / "pyproject.toml").is_file()):
        raise WheelBuildFailed(
            f"{root} is not a dr checkout (no setup.py and agent/pyproject.toml): build the wheels from "
            "a clone of the repository, or pass the built wheels"
        )
    return root


def _sources(checkout: Path) -> list[str]:
    """What a commit of the checkout holds (tracked files and new ones git does not ignore), so no
    build output or cache gets into a wheel; without git, every file but the usual build debris."""
    done = subprocess.run(["git", "-C", str(checkout), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                          capture_output=True, check=False, timeout=120)
    if done.returncode == 0:
        return [f for f in done.stdout.decode().split("\0") if f and (checkout / f).is_file()]
    skip = {"build", "dist", "__pycache__", ".git", ".mypy_cache", ".ruff_cache", ".pytest_cache", "node_modules"}
    return [p.relative_to(checkout).as_posix() for p in checkout.rglob("*")
            if p.is_file() and not skip & set(p.relative_to(checkout).parts) and ".egg-info" not in p.as_posix()]


def build(checkout: Path, out: Path) -> tuple[Wheel, Wheel]:
    """(dr-agent wheel, dr-as-code wheel) built from a copy of `checkout` into `out` (building
    leaves nothing behind in the checkout)."""
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("dr_agent-*.whl"), *out.glob("dr_as_code-*.whl")]:
        old.unlink()
    with tempfile.TemporaryDirectory(prefix="dr-wheels-") as scratch:
        src = Path(scratch) / "src"
        for rel in _sources(checkout):
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(checkout / rel, src / rel)
        argv = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "wheel", "--no-deps", "-w",
                str(out), str(src / "agent"), str(src)]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise WheelBuildFailed(f"building the wheels took over {BUILD_TIMEOUT_S} s: {' '.join(argv)}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise WheelBuildFailed(f"pip could not build the wheels from {checkout}: {last}")
    agent = next(out.glob("dr_agent-*.whl"), None)
    dr = next(out.glob("dr_as_code-*.whl"), None)
    if agent is None or dr is None:
        raise WheelBuildFailed(f"pip built no dr_agent/dr_as_code wheel in {out}")
    return Wheel(agent, digest(agent)), Wheel(dr, digest(dr))
