"""The exception tree and the exit codes of the `dr` command, in one place.

Every `DrError` subclass anywhere in `dr` is listed here with its exit code (tests/test_errors.py
walks the classes and fails on one that is missing or whose code differs). Errors of the data path
(`dr_agent.errors.AgentError`) that reach a `dr` command become `UsageError`/`NotFound` where the
command catches them; their own tree is in agent/dr_agent/errors.py.

    DrError                          exit 2  root: every error a user can cause; never shown as a traceback
    ├── UsageError                   exit 2  the command line is wrong (unknown format, missing argument)
    ├── SpecUnreadable               exit 2  a file cannot be read or parsed (missing, not YAML, duplicate
    │                                        key, a missing include, an include cycle, a .py that fails)
    ├── SecretUnavailable            exit 2  a credential reference {env: X} / {file: P} cannot be resolved
    │   └── NotPrivate               exit 2  dr.server.settings: a secret file others can read (refused at start)
    ├── MissingExtra                 exit 2  an optional dependency is not installed (the message is the pip line)
    ├── NotFound                     exit 2  a named disk, group, recovery point or job does not exist
    ├── SpecInvalid                  exit 1  the spec breaks the model or the support matrix (every finding)
    ├── PlanError                    exit 1  the spec is valid but cannot be planned (the planner)
    ├── PlanUnusable                 exit 1  dr.azure.contract: the plan cannot be declared (errors, missing key)
    ├── StackInvalid                 exit 1  dr.azure.options: the stack's configuration is inconsistent
    ├── CustomDataTooLarge           exit 1  dr.azure.bootstrap: a server's first-boot data exceeds Azure's 64 KiB
    ├── WheelBuildFailed             exit 1  dr.azure.wheels: the project's wheels for the servers cannot be built
    ├── SourceError                  exit 2  dr.discover.errors: a vCenter/ESXi/SSH source refused or failed
    │   ├── SourceUnreachable        exit 2  no connection (DNS, refused, routed nowhere)
    │   ├── CertificateUntrusted     exit 2  the source's TLS certificate is not trusted
    │   ├── BadCredentials           exit 2  the credentials were refused
    │   ├── MissingPrivilege         exit 2  the account lacks a read privilege discovery needs
    │   └── SourceTimeout            exit 2  the source did not answer in time
    ├── FailoverError                exit 1  dr.failover.provider: a failover step failed
    ├── PlanNotRunnable              exit 1  dr.failover.steps: the recovery plan cannot be run as asked
    ├── NoRecoveryPoint              exit 1  dr.failover.points: no recovery point satisfies the choice
    ├── SpecChanged                  exit 1  dr.failover.runner: the spec is not the one the job started with
    ├── LeaseLost                    exit 2  dr.failover.runner: another runner took the job over (lease expired)
    ├── StoreError                   exit 2  dr.server.store: the state store cannot be opened or used
    ├── AuthError                    exit 2  dr.server.service: missing, wrong or expired credentials
    ├── Forbidden                    exit 2  dr.server.service: the caller's role may not do this
    ├── NotFound                     exit 2  dr.server.service: the API's "no such machine/job/step"
    ├── Conflict                     exit 2  dr.server.service: the request conflicts with the state
    │   └── JobBusy                  exit 2  dr.server.jobs: another runner holds the job's lease
    ├── TooManyTries                 exit 2  dr.server.app: too many wrong passphrases from an address (HTTP 429)
    ├── CertificateRefused           exit 2  dr.server.certs: the vault CA does not sign this request (bad CSR)
    └── LabError                     exit 2  dr.lab.errors: the lab cannot be set up or torn down (not root,
                                             a missing tool and its Debian package, a failed step)

Exit codes of `dr` (documented here and nowhere else; the CLI imports them):
    0    success (warnings allowed)
    1    the spec or the plan has errors; a failover or step failed
    2    unreadable input or usage error
    3    `dr diff`: the new plan needs more vCPU quota than the spec declares (a CI gate)
    130  interrupted (Ctrl-C, SIGINT)
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
EXIT_INTERRUPTED = 130


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
