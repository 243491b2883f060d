"""Certificates: a CA per deployment, identities issued at registration against a passphrase.

As ASR's vault registration key: whoever holds the passphrase may register a machine. The CA's
private key is stored encrypted with the passphrase, so issuing a certificate needs it; a wrong
passphrase is refused. Every identity carries its role (agent, process-server, master-target) in
the subject's OU, and each service accepts only the roles that may dial it.

TLS: 1.2 or later, mutual authentication (CERT_REQUIRED on both sides), verified against the CA.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dr_agent.errors import AuthError

Role = Literal["agent", "process-server", "master-target"]
ROLES: tuple[Role, ...] = ("agent", "process-server", "master-target")
# Identity certificates last one year; the CA ten (ASR's vault credentials expire after 5 days,
# but they only bootstrap registration; these are the long-lived machine certificates).
IDENTITY_DAYS = 365
CA_DAYS = 3650


@dataclass(frozen=True)
class Identity:
    """A certificate, its key and the CA that issued it, as PEM files in one directory."""

    directory: Path

    @property
    def cert(self) -> Path:
        return self.directory / "cert.pem"

    @property
    def key(self) -> Path:
        return self.directory / "key.pem"

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"


def _name(cn: str, ou: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dr-as-code"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ])


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def create_ca(directory: Path, passphrase: str, *, name: str = "dr-as-code CA") -> Path:
    """Create `directory/ca.pem` and `directory/ca-key.pem` (encrypted with the passphrase)."""
    if len(passphrase) < 8:
        raise AuthError("a registration passphrase needs at least 8 characters")
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    subject = _name(name, "ca")
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    _write(directory / "ca.pem", cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(directory / "ca-key.pem", key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase.encode())), 0o600)
    return directory


def register(ca_dir: Path, passphrase: str, *, name: str, role: Role, out: Path,
             addresses: tuple[str, ...] = ("127.0.0.1", "localhost")) -> Identity:
    """Issue an identity for `name` in `role`; refused (AuthError) without the right passphrase."""
    if role not in ROLES:
        raise AuthError(f"role {role!r} is not one of {', '.join(ROLES)}")
    try:
        ca_key = serialization.load_pem_private_key((ca_dir / "ca-key.pem").read_bytes(), passphrase.encode())
    except (ValueError, TypeError):
        raise AuthError("registration refused: the passphrase does not unlock the CA key") from None
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise AuthError("the CA key is not an EC key this agent issued")
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = []
    for a in addresses:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(a)))
        except ValueError:
            sans.append(x509.DNSName(a))
    cert = (
        x509.CertificateBuilder().subject_name(_name(name, role)).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=IDENTITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    out.mkdir(parents=True, exist_ok=True)
    ident = Identity(out)
    _write(ident.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(ident.key, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()), 0o600)
    _write(ident.ca, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return ident


def _context(ident: Identity, protocol: ssl._SSLMethod) -> ssl.SSLContext:
    """Mutual TLS 1.2+: this identity's certificate, and only peers the deployment's CA signed."""
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(ident.cert, ident.key)
    ctx.load_verify_locations(ident.ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def server_context(ident: Identity) -> ssl.SSLContext:
    return _context(ident, ssl.PROTOCOL_TLS_SERVER)


def client_context(ident: Identity) -> ssl.SSLContext:
    ctx = _context(ident, ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = True
    return ctx


def peer_role(sock: ssl.SSLSocket) -> tuple[str, str]:
    """(common name, role) of the verified peer certificate."""
    cert = sock.getpeercert()
    if not cert:
        raise AuthError("the peer presented no certificate")
    fields: dict[str, str] = {}
    for rdn in cert.get("subject", ()):
        for pair in rdn:
            fields[str(pair[0])] = str(pair[1])
    return str(fields.get("commonName", "")), str(fields.get("organizationalUnitName", ""))
