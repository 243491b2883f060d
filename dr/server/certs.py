"""The deployment's one certificate authority: the vault CA, kept in the configuration server's store.

Created at first start (first writer wins if two servers start together). Every registered
component (agent, process server, master target, the server itself) gets a certificate from it
through `dr_agent.pki.Authority.issue`, the one implementation of issuing, so the data path's
listeners accept exactly what registration hands out, and `write_identity` lays it out as the
contract's identity files.

The CA's private key is stored encrypted with the vault passphrase (PKCS#8, the encryption
`cryptography` deems best, as `dr-agent ca` keeps its key): the store alone does not let anyone
issue a certificate. A store from before that is re-encrypted the first time the passphrase is given.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from dr_agent.contract import Role
from dr_agent.errors import AgentError
from dr_agent.pki import Authority, Issued, write_identity

from dr.errors import DrError
from dr.server.store import Store

# The PEM label of an encrypted PKCS#8 key (RFC 7468, section 11).
ENCRYPTED_MARK = "BEGIN ENCRYPTED PRIVATE KEY"

__all__ = ["CertificateRefused", "Issued", "authority", "ca_pem", "issue", "write_identity"]


class CertificateRefused(DrError):
    """A certificate request the vault CA does not sign (a bad CSR, an unknown role)."""


def _encrypt(key_pem: str, passphrase: str) -> str:
    key = serialization.load_pem_private_key(key_pem.encode(), None)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.BestAvailableEncryption(passphrase.encode())).decode()


def _decrypt(stored: str, passphrase: str) -> str:
    try:
        key = serialization.load_pem_private_key(stored.encode(), passphrase.encode())
    except (ValueError, TypeError):
        raise CertificateRefused("the vault passphrase does not unlock the vault CA's key") from None
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def authority(store: Store, passphrase: str) -> Authority:
    """The vault CA, created once; its key unlocked with the vault passphrase."""
    cert_pem = store.get_meta("ca_certificate")
    stored = store.get_meta("ca_key")
    if cert_pem is None or stored is None:
        new = Authority.new("dr vault CA")
        stored = store.set_meta_once("ca_key", _encrypt(new.key_pem, passphrase))
        cert_pem = store.set_meta_once("ca_certificate", new.cert_pem)
    if ENCRYPTED_MARK not in stored:  # written in clear by an older dr: encrypt it now
        store.set_meta("ca_key", _encrypt(stored, passphrase))
        return Authority(cert_pem=cert_pem, key_pem=stored)
    return Authority(cert_pem=cert_pem, key_pem=_decrypt(stored, passphrase))


def ca_pem(store: Store) -> str:
    """The vault CA's certificate (no passphrase needed; NotFound-like CertificateRefused before the first start)."""
    cert_pem = store.get_meta("ca_certificate")
    if cert_pem is None:
        raise CertificateRefused(f"{store.display_url} has no vault CA yet: start `dr config-server` once")
    return cert_pem


def issue(store: Store, *, passphrase: str, name: str, role: Role | str, csr_pem: str | None = None,
          hosts: tuple[str, ...] = (), machine: str | None = None) -> Issued:
    """A certificate for component `name` (client and server auth), signed by the vault CA; an
    agent's names the spec `machine` it acts for (pki.Authority.issue)."""
    try:
        return authority(store, passphrase).issue(name=name, role=role, hosts=hosts, csr_pem=csr_pem,
                                                  machine=machine)
    except AgentError as err:
        raise CertificateRefused(f"{name}: {err}") from None
