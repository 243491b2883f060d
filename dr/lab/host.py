"""Running the host's tools: as root, with the tools present, each failure one line naming the fix."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence

from dr.lab.errors import LabError

# tool -> the Debian package that provides it (.ci/setup.d/70-lab.sh installs them)
TOOLS = {
    "ip": "iproute2",
    "unshare": "util-linux",
    "nsenter": "util-linux",
    "losetup": "mount",
    "mount": "mount",
    "umount": "mount",
    "mkfs.ext4": "e2fsprogs",
    "sshd": "openssh-server",
    "ssh-keygen": "openssh-client",
}
SBIN = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")


def require_root(action: str) -> None:
    if os.geteuid() != 0:
        raise LabError(f"`dr lab {action}` makes network namespaces, loop devices and mounts: run it as root")


def tool(name: str) -> str:
    """The absolute path of a host tool, or LabError naming its Debian package."""
    found = shutil.which(name) or next((f"{d}/{name}" for d in SBIN if os.access(f"{d}/{name}", os.X_OK)), None)
    if found is None:
        package = TOOLS.get(name, name)
        raise LabError(f"{name} is not installed: apt-get install {package} (or bash .ci/setup.d/70-lab.sh)")
    return found


def require_tools() -> None:
    for name in TOOLS:
        tool(name)


def run(argv: Sequence[str], *, what: str, check: bool = True, input: str | None = None,
        env: dict[str, str] | None = None, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run a host command; on failure LabError: `<what>: <the command's last line of stderr>`."""
    cmd = [tool(argv[0]) if "/" not in argv[0] else argv[0], *argv[1:]]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, input=input, env=env, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        raise LabError(f"{what}: `{' '.join(cmd)}` did not finish in {timeout:.0f} s") from None
    if check and done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise LabError(f"{what}: {lines[-1] if lines else f'exit status {done.returncode}'}")
    return done


def quiet(argv: Sequence[str]) -> bool:
    """Run a teardown command whose failure means 'already gone'; True when it succeeded."""
    try:
        return subprocess.run([tool(argv[0]), *argv[1:]], capture_output=True, timeout=60, check=False).returncode == 0
    except (LabError, subprocess.TimeoutExpired):
        return False
