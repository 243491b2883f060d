"""The exception tree and the exit codes of the `dr` command, in one place.

    DrError                      root: every error a user can cause; never shown as a traceback
    ├── UsageError               exit 2: the command line is wrong (unknown format, missing file argument)
    ├── SpecUnreadable           exit 2: a file cannot be read or parsed (missing, not YAML, duplicate key,
    │                                    a missing include, an include cycle, a .py file that fails)
    ├── SecretUnavailable        exit 2: a credential reference {env: X} / {file: P} cannot be resolved
    ├── MissingExtra             exit 2: an optional dependency is not installed (the message is the pip line)
    ├── NotFound                 exit 2: a named disk, group, recovery point or job does not exist
    ├── SpecInvalid              exit 1: the spec was read but breaks the model or the support matrix;
    │                                    carries every finding, not only the first
    └── PlanError                exit 1: the spec is valid but cannot be planned (raised by the planner)

Exit codes of `dr` (documented here and nowhere else; the CLI imports them):
    0  success (warnings allowed)
    1  the spec or the plan has errors
    2  unreadable input or usage error
    3  `dr diff`: the new plan needs more vCPU quota than the spec declares (a CI gate)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dr.findings import Finding

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_UNREADABLE = 2
EXIT_USAGE = 2
EXIT_QUOTA = 3


class DrError(Exception):
    """Root of every error a user can cause. `str(error)` is one line: what, and how to fix it."""

    exit_code: int = EXIT_UNREADABLE


class UsageError(DrError):
    exit_code = EXIT_USAGE


class SpecUnreadable(DrError):
    """A file cannot be read or parsed. Message: `FILE[:LINE:COL]: what was wrong; how to fix it`."""

    exit_code = EXIT_UNREADABLE


class SecretUnavailable(DrError):
    """A credential reference cannot be resolved. The message names the variable or file, never a value."""

    exit_code = EXIT_UNREADABLE


class MissingExtra(DrError):
    """An optional dependency is absent. Message: `X needs the 'E' extra: pip install 'dr-as-code[E]'`."""

    exit_code = EXIT_UNREADABLE


class NotFound(DrError):
    """A named thing (disk, multi-VM group, recovery point, job) is not there. The message lists what is."""

    exit_code = EXIT_UNREADABLE


class SpecInvalid(DrError):
    """The spec breaks the model or the support matrix. `findings` holds every problem found."""

    exit_code = EXIT_INVALID

    def __init__(self, findings: list[Finding]) -> None:
        self.findings = findings
        errors = [f for f in findings if f.severity == "error"]
        super().__init__(f"the spec has {len(errors)} error(s); run `dr validate` to see them")


class PlanError(DrError):
    exit_code = EXIT_INVALID
