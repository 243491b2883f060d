"""The project's own wheels, built from the checkout, with their SHA-256: what the servers install.

`build(checkout, out)` builds `dr-agent` (agent/) and `dr-as-code` (the root) with pip, the same
way a user would (`pip wheel --no-deps`), and returns each wheel with its digest. The stack
publishes these files to a private container of the estate's storage and the bootstraps install
them with `pip --require-hashes`; nothing is ever installed by name from a public index (a package
named `dr-agent` on the public index belongs to an unrelated project). Pulumi-free.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
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


def _pip(args: list[str], what: str) -> None:
    """`pip ARGS` with this interpreter; WheelBuildFailed naming `what` and pip's last line when it fails."""
    argv = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise WheelBuildFailed(f"pip did not {what} within {BUILD_TIMEOUT_S} s") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise WheelBuildFailed(f"pip could not {what}: {last}")


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
        _pip(["wheel", "--no-deps", "-w", str(out), str(src / "agent"), str(src)],
             f"build the wheels from {checkout}")
    agent = next(out.glob("dr_agent-*.whl"), None)
    dr = next(out.glob("dr_as_code-*.whl"), None)
    if agent is None or dr is None:
        raise WheelBuildFailed(f"pip built no dr_agent/dr_as_code wheel in {out}")
    return Wheel(agent, digest(agent)), Wheel(dr, digest(dr))


# -- what each server installs, for its platform ----------------------------------------------------
# The servers' Python: Ubuntu 24.04's python3 (3.12) on Linux (the stack's image), the python.org
# 3.11 installer on Windows (dr.azure.bootstrap.PYTHON_WINDOWS_VERSION). Dependency wheels are
# fetched for that interpreter and platform, published beside the project's, and pinned by hash.
@dataclass(frozen=True)
class Target:
    name: str  # "linux" | "windows": the blob folder of the packages container
    python: str  # X.Y
    abi: str
    platforms: tuple[str, ...]


TARGETS: dict[str, Target] = {
    "linux": Target("linux", "3.12", "cp312", ("manylinux_2_28_x86_64", "manylinux2014_x86_64")),
    "windows": Target("windows", "3.11", "cp311", ("win_amd64",)),
}
# What each server role installs (pip requirement, from the wheels of its target only).
ROLE_REQUIREMENTS: dict[str, str] = {
    "configuration-server": "dr-as-code[server]",
    "master-target": "dr-agent[azure,metrics]",
}
ROLE_PROJECT_WHEELS: dict[str, tuple[str, ...]] = {  # our wheels each role installs
    "configuration-server": ("dr_as_code", "dr_agent"),
    "master-target": ("dr_agent",),
}


@dataclass(frozen=True)
class Wheelhouse:
    """Every wheel one server role installs on one target platform, the project's two included."""

    target: str
    role: str
    wheels: tuple[Wheel, ...]

    def requirements(self) -> str:
        """A pip requirements file pinning every wheel by version and SHA-256 (`--require-hashes`)."""
        lines = []
        for wheel in sorted(self.wheels, key=lambda w: w.name.lower()):
            name, version = wheel.name.split("-")[:2]
            lines.append(f"{name.replace('_', '-')}=={version} --hash=sha256:{wheel.sha256}")
        return "\n".join(lines) + "\n"


def _requires(wheel: Wheel, extras: set[str]) -> list[str]:
    """The wheel's Requires-Dist lines that apply with `extras` (their markers name extras only)."""
    with zipfile.ZipFile(wheel.path) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        lines = zf.read(name).decode().splitlines()
    out = []
    for line in lines:
        if not line.startswith("Requires-Dist:"):
            continue
        requirement, _, marker = line.removeprefix("Requires-Dist:").strip().partition(";")
        wanted = re.search(r'extra\s*==\s*"([^"]+)"', marker)
        if not marker.strip() or (wanted and wanted.group(1) in extras):
            out.append(requirement.strip())
    return out


def _third_party(project: tuple[Wheel, Wheel], requirement: str) -> list[str]:
    """The requirements of `requirement` (one of ours, with extras) outside the project, following
    our own packages' pins into each other: our names are never looked up on an index (the public
    `dr-agent` is an unrelated project)."""
    ours = {w.distribution.replace("_", "-"): w for w in project}
    todo, seen, out = [requirement], set(), []
    while todo:
        item = todo.pop()
        found = re.match(r"([A-Za-z0-9_.-]+)(?:\[([^\]]*)\])?", item)
        assert found is not None, item
        name = found.group(1).lower().replace("_", "-")
        extras = {e.strip() for e in (found.group(2) or "").split(",") if e.strip()}
        if name in ours:
            if (name, frozenset(extras)) in seen:
                continue
            seen.add((name, frozenset(extras)))
            todo.extend(_requires(ours[name], extras))
        elif item not in out:
            out.append(item)
    return sorted(out)


def collect(project: tuple[Wheel, Wheel], role: str, target: str | Target, out: Path) -> Wheelhouse:
    """The project's wheels plus every dependency wheel of `role`'s requirement for `target` (a key
    of TARGETS, or another interpreter and platform), downloaded with pip for that platform (binary
    wheels only: nothing is built on a server)."""
    spec = TARGETS[target] if isinstance(target, str) else target
    target = spec.name
    folder = out / target / role
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    requirement = ROLE_REQUIREMENTS[role]
    needed = _third_party(project, requirement)
    _pip(["download", "--only-binary=:all:", "--python-version", spec.python, "--implementation", "cp",
          "--abi", spec.abi, "--abi", "abi3", "--abi", "none", *[a for p in spec.platforms for a in ("--platform", p)],
          "--platform", "any", "-d", str(folder), *needed],
         f"collect the {target} dependency wheels of {requirement}")
    stray = [p.name for p in folder.glob("dr_agent-*") if p.is_file()] + [p.name for p in folder.glob("dr_as_code-*")]
    if stray:  # a third-party package depending on a name of ours: refuse rather than mix them
        raise WheelBuildFailed(f"a dependency of {requirement} pulled {', '.join(stray)} from an index")
    used = {n for n in ROLE_PROJECT_WHEELS[role]}
    for wheel in project:
        if wheel.distribution in used:
            shutil.copy2(wheel.path, folder / wheel.name)
    found = tuple(Wheel(p, digest(p)) for p in sorted(folder.glob("*.whl")))
    return Wheelhouse(target=target, role=role, wheels=found)
