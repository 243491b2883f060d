"""Start govmomi's vCenter simulator (tests/vcsim/main.go) on a loopback port, for tests and benchmarks.

The binary is built by .ci/setup.d/30-vcsim.sh; when it is missing (or older than main.go) and Go and
Debian's govmomi sources are installed, it is built here once. `Vcsim` reads the URL the simulator
prints and kills the process on `close()`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

HERE = Path(__file__).resolve().parent
BINARY = HERE / "vcsim"
SOURCE = HERE / "main.go"
GOPATH = Path("/usr/share/gocode")
GOVMOMI = GOPATH / "src/github.com/vmware/govmomi/simulator"
_BUILD_LOCK = threading.Lock()


def unavailable() -> str | None:
    """Why the simulator cannot run here (for a skip reason), or None."""
    if BINARY.exists() and BINARY.stat().st_mtime >= SOURCE.stat().st_mtime:
        return None
    if shutil.which("go") is None or not GOVMOMI.is_dir():
        return "vcsim is not built and Go/govmomi are missing: run bash .ci/setup.d/30-vcsim.sh"
    return None


def build() -> Path:
    with _BUILD_LOCK:
        if BINARY.exists() and BINARY.stat().st_mtime >= SOURCE.stat().st_mtime:
            return BINARY
        env = {**os.environ, "GOPATH": str(GOPATH), "GO111MODULE": "off", "GOFLAGS": ""}
        subprocess.run(["go", "build", "-o", str(BINARY), str(SOURCE)], check=True, env=env,
                       capture_output=True, timeout=600)
    return BINARY


@dataclass
class Vcsim:
    """A running simulator. `url` is the SDK URL without credentials."""

    process: subprocess.Popen[str]
    url: str

    @property
    def host(self) -> str:
        return urlparse(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlparse(self.url).port or 80

    @property
    def scheme(self) -> str:
        return urlparse(self.url).scheme

    @classmethod
    def start(cls, *args: str, timeout: float = 120.0) -> Vcsim:
        binary = build()
        process = subprocess.Popen([str(binary), "-listen", "127.0.0.1:0", *args], stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, text=True)
        assert process.stdout is not None
        line: list[str] = []

        def read() -> None:
            assert process.stdout is not None
            line.append(process.stdout.readline().strip())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        if not line or not line[0].startswith("http"):
            process.kill()
            process.wait()
            raise RuntimeError(f"vcsim did not print its URL within {timeout} s (args {args})")
        return cls(process=process, url=line[0])

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> Vcsim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
