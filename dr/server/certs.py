"""Certificates the configuration server issues at registration (the data path's mutual TLS).

The server keeps one certificate authority per vault in its store, created at first start. Every
registered component (agent, process server, master target) gets a certificate signed by it, with
its name as the common name and its role in the organizational unit, spelt as the data path's PKI
(`dr_agent.pki`) spells roles (`process-server`, `master-target`): the agent's TLS listeners accept
these certificates as they accept their own, and `write_identity` lays them out as a
`dr_agent.pki.Identity` directory (cert.pem, key.pem, ca.pem). Issuance is this one function, `issue`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dr.server.store import Store

# Validity of the vault CA and of issued certificates, days (our choice: re-registration renews).
CA_VALIDITY_DAYS = 3650
LEAF_VALIDITY_DAYS = 365


@dataclass(frozen=True, kw_only=True)
class Issued:
    certificate_pem: str
    private_key_pem: str | None  # None when the caller sent a CSR and keeps its own key
    ca_pem: str


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _authority(store: Store) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The vault CA, created once (first writer wins if two servers start together)."""
    cert_pem = store.get_meta("ca_certificate")
    key_pem = store.get_meta("ca_key")
    if cert_pem is None or key_pem is None:
        key = _new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dr vault CA")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_VALIDITY_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        key_pem = store.set_meta_once("ca_key", _key_pem(key))
        cert_pem = store.set_meta_once("ca_certificate", cert.public_bytes(serialization.Encoding.PEM).decode())
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    loaded = serialization.load_pem_private_key(key_pem.encode(), password=None)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    return cert, loaded


def ca_pem(store: Store) -> str:
    cert, _ = _authority(store)
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def issue(store: Store, *, name: str, role: str, csr_pem: str | None = None,
          hosts: tuple[str, ...] = ()) -> Issued:
    """A certificate for component `name` (client and server auth), signed by the vault CA."""
    ca_cert, ca_key = _authority(store)
    key: ec.EllipticCurvePrivateKey | None = None
    if csr_pem is not None:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        if not csr.is_signature_valid:
            raise ValueError("the certificate signing request's signature does not verify")
        public_key = csr.public_key()
    else:
        key = _new_key()
        public_key = key.public_key()
    now = dt.datetime.now(dt.UTC)
    alt: list[x509.GeneralName] = [x509.DNSName(name)]
    for host in hosts:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dr-as-code"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role.replace("_", "-")),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=LEAF_VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return Issued(
        certificate_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
        private_key_pem=None if key is None else _key_pem(key),
        ca_pem=ca_cert.public_bytes(serialization.Encoding.PEM).decode(),
    )


def write_identity(directory: Path, *, certificate_pem: str, private_key_pem: str, ca_pem: str) -> Path:
    """Write an issued identity where the data path reads one (`dr_agent.pki.Identity(directory)`)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cert.pem").write_text(certificate_pem)
    key = directory / "key.pem"
    key.touch(mode=0o600)
    key.chmod(0o600)
    key.write_text(private_key_pem)
    (directory / "ca.pem").write_text(ca_pem)
    return directory
