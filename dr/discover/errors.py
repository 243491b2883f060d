"""Errors of talking to a source (vCenter, ESXi, an SSH server). All exit 2; none echoes a credential.

    DrError
    └── SourceError                exit 2: a discovery or profiling source cannot be used
        ├── SourceUnreachable      nothing answers at HOST:PORT (refused, no route, unknown name)
        ├── CertificateUntrusted   TLS certificate not trusted (hint: --insecure for a lab)
        ├── BadCredentials         the user name or password (or key) was refused
        ├── MissingPrivilege       logged in, but the role lacks a privilege discovery needs
        └── SourceTimeout          the source stopped answering within --timeout
"""

from __future__ import annotations

from dr.errors import EXIT_UNREADABLE, DrError


class SourceError(DrError):
    exit_code = EXIT_UNREADABLE


class SourceUnreachable(SourceError):
    pass


class CertificateUntrusted(SourceError):
    pass


class BadCredentials(SourceError):
    pass


class MissingPrivilege(SourceError):
    pass


class SourceTimeout(SourceError):
    pass
