"""A finding is one problem in a spec: severity, where (file:line:col and dotted path), and what to do.

Rendered as the validator prints it, Ansible-style::

    examples/bad.yaml:14:18: machines.1.disks.0.size_gb: at most 1023 GB per disk in asr-2015, found 2048
        - {name: c, size_gb: 2048}
                             ^~~~
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Severity = Literal["error", "warning"]
Path = tuple[str | int, ...]


@dataclass(frozen=True, order=True)
class Location:
    """A place in a source file; line and column are 1-based."""

    file: str
    line: int
    col: int
    length: int = 1  # how many characters the caret underlines

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Finding:
    severity: Severity
    path: Path
    message: str
    location: Location | None = field(default=None, compare=False)

    @property
    def dotted(self) -> str:
        return dotted(self.path)

    def header(self) -> str:
        where = f"{self.location}: " if self.location else ""
        label = "" if self.severity == "error" else "warning: "
        subject = f"{self.dotted}: " if self.path else ""
        return f"{where}{label}{subject}{self.message}"

    def to_json(self) -> dict[str, object]:
        loc = self.location
        return {
            "severity": self.severity,
            "path": self.dotted,
            "message": self.message,
            "file": loc.file if loc else None,
            "line": loc.line if loc else None,
            "col": loc.col if loc else None,
        }


def dotted(path: Path) -> str:
    return ".".join(str(part) for part in path)


def sort_key(finding: Finding) -> tuple[object, ...]:
    loc = finding.location
    return (loc.file if loc else "~", loc.line if loc else 0, loc.col if loc else 0, finding.dotted)


def excerpt(location: Location, lines: list[str]) -> str:
    """The source line and a caret under the mistake (empty when the line is not known)."""
    if not 1 <= location.line <= len(lines):
        return ""
    text = lines[location.line - 1].rstrip("\n").expandtabs(1)
    caret = " " * (location.col - 1) + "^" + "~" * max(0, location.length - 1)
    return f"    {text}\n    {caret}"
