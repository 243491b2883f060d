"""The deployment's one certificate authority: the vault CA, kept in the configuration server's store.

Created at first start (first writer wins if two servers start together). Every registered
component (agent, process server, master target, the server itself) gets a certificate from it
through `dr_agent.pki.Authority.issue`, the one implementation of issuing, so the data path's
listeners accept exactly what registration hands out, and `write_identity` lays it out as the
contract's identity files.
"""

from __future__ import annotations

from dr_agent.contract import Role
from dr_agent.errors import AgentError
from dr_agent.pki import Authority, Issued, write_identity

from dr.errors import DrError
from dr.server.store import Store

__all__ = ["CertificateRefused", "Issued", "authority", "ca_pem", "issue", "write_identity"]


class CertificateRefused(DrError):
    """A certificate request the vault CA does not sign (a bad CSR, an unknown role)."""


def authority(store: Store) -> Authority:
    """The vault CA, created once."""
    cert_pem = store.get_meta("ca_certificate")
    key_pem = store.get_meta("ca_key")
    if cert_pem is None or key_pem is None:
        new = Authority.new("dr vault CA")
        key_pem = store.set_meta_once("ca_key", new.key_pem)
        cert_pem = store.set_meta_once("ca_certificate", new.cert_pem)
    return Authority(cert_pem=cert_pem, key_pem=key_pem)


def ca_pem(store: Store) -> str:
    return str(authority(store).cert_pem)


def issue(store: Store, *, name: str, role: Role | str, csr_pem: str | None = None,
          hosts: tuple[str, ...] = ()) -> Issued:
    """A certificate for component `name` (client and server auth), signed by the vault CA."""
    try:
        return authority(store).issue(name=name, role=role, hosts=hosts, csr_pem=csr_pem)
    except AgentError as err:
        raise CertificateRefused(f"{name}: {err}") from None
