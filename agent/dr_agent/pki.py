"""Certificates: the deployment's one certificate authority, the identities it issues, mutual TLS.

One CA per deployment: the configuration server's vault CA (`dr.server.certs` keeps it in the
server's state store). A component gets its identity by registering with the configuration server
(`dr-agent register --server`, `dr_agent.control.register`): it makes its key here, sends a
certificate request with the vault passphrase, and writes the certificate, its key and the CA as
an `Identity` directory (contract IDENTITY_FILES). Issuing is `Authority.issue`, the one
implementation the server uses, so the certificate's shape is defined here once: the component's
name as the common name and in the subject alternative names, its role (contract `Role`, one
spelling) as the subject's OU, client and server authentication; an agent's also names the spec
machine it acts for (contract `machine_uri`), which a process server holds it to.

Each listener accepts only the roles that may dial it (contract MAY_DIAL). TLS: 1.2 or later,
mutual authentication (CERT_REQUIRED on both sides), verified against the CA.

`create_ca` / `register` keep an Authority in a directory (its key encrypted with a passphrase)
for the data path's own tests and benchmarks, which run without a configuration server.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dr_agent.contract import IDENTITY_FILES, Role, machine_uri, parse_role, uri_machine
from dr_agent.errors import AuthError, ProtocolError

# Identity certificates last one year; the CA ten (ASR's vault credentials expire after 5 days,
# but they only bootstrap registration; these are the long-lived machine certificates; registering
# again renews one).
IDENTITY_DAYS = 365
CA_DAYS = 3650
# Certificates are valid from a little before they are issued, for clocks that lag (minutes).
CLOCK_SKEW_MINUTES = 5
ORGANIZATION = "dr-as-code"


@dataclass(frozen=True)
class Identity:
    """A certificate, its key and the CA that issued it, as PEM files in one directory."""

    directory: Path

    @property
    def cert(self) -> Path:
        return self.directory / IDENTITY_FILES["cert"]

    @property
    def key(self) -> Path:
        return self.directory / IDENTITY_FILES["key"]

    @property
    def ca(self) -> Path:
        return self.directory / IDENTITY_FILES["ca"]


@dataclass(frozen=True, kw_only=True)
class Issued:
    certificate_pem: str
    private_key_pem: str | None  # None when the caller sent a CSR and keeps its own key
    ca_pem: str


def new_key_pem() -> str:
    """A new private key (EC P-256), PEM (PKCS#8, unencrypted: it is written 0600)."""
    return _key_pem(ec.generate_private_key(ec.SECP256R1()))


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _load_key(pem: str, password: bytes | None = None) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), password)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise AuthError("the key is not an EC key this product made")
    return key


def certificate_request(name: str, key_pem: str) -> str:
    """A PKCS#10 request for `name`, signed with the key (the issuer sets everything else)."""
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
           .sign(_load_key(key_pem), hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _alt_names(name: str, hosts: tuple[str, ...], machine: str | None) -> list[x509.GeneralName]:
    alt: list[x509.GeneralName] = [x509.UniformResourceIdentifier(machine_uri(machine))] if machine else []
    for host in (name, *hosts):
        try:
            entry: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            entry = x509.DNSName(host)
        if entry not in alt:
            alt.append(entry)
    return alt


@dataclass(frozen=True, kw_only=True)
class Authority:
    """A certificate authority: its certificate and key (PEM)."""

    cert_pem: str
    key_pem: str

    @classmethod
    def new(cls, common_name: str = "dr vault CA") -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                          x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=CLOCK_SKEW_MINUTES))
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem=_key_pem(key))

    def issue(self, *, name: str, role: Role | str, hosts: tuple[str, ...] = (),
              csr_pem: str | None = None, machine: str | None = None) -> Issued:
        """A certificate for component `name` in `role` (client and server authentication). With a
        CSR the key stays with the caller; without one a key is made and returned. `machine`: the
        spec machine an agent acts for (default: its name); only an agent names one."""
        try:
            ou = parse_role(str(role)).value
        except ProtocolError as err:
            raise AuthError(str(err)) from None
        if machine is not None and ou != Role.AGENT:
            raise AuthError(f"{name}: only an agent's certificate names a machine (this one is a {ou})")
        if ou == Role.AGENT:
            machine = machine or name
        ca_cert = x509.load_pem_x509_certificate(self.cert_pem.encode())
        key_pem: str | None = None
        if csr_pem is not None:
            try:
                csr = x509.load_pem_x509_csr(csr_pem.encode())
            except ValueError:
                raise AuthError("the certificate signing request is not a PEM PKCS#10 request") from None
            if not csr.is_signature_valid:
                raise AuthError("the certificate signing request's signature does not verify")
            public_key = csr.public_key()
            if not isinstance(public_key, ec.EllipticCurvePublicKey):
                raise AuthError("the certificate signing request's key is not an EC key")
        else:
            key_pem = new_key_pem()
            public_key = _load_key(key_pem).public_key()
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                                     x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou),
                                     x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject).public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=CLOCK_SKEW_MINUTES))
            .not_valid_after(now + dt.timedelta(days=IDENTITY_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(_alt_names(name, hosts, machine)), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(_load_key(self.key_pem), hashes.SHA256())
        )
        return Issued(certificate_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
                      private_key_pem=key_pem, ca_pem=self.cert_pem)


def write_private(path: Path, data: bytes) -> None:
    """Write a secret (0600 from its first byte; replaced atomically)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def write_identity(directory: Path, *, certificate_pem: str, private_key_pem: str, ca_pem: str) -> Identity:
    """Lay an issued identity out as IDENTITY_FILES (the key 0600)."""
    directory.mkdir(parents=True, exist_ok=True)
    ident = Identity(directory)
    write_private(ident.key, private_key_pem.encode())
    for path, text in ((ident.cert, certificate_pem), (ident.ca, ca_pem)):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.chmod(0o644)
        os.replace(tmp, path)
    return ident


# -- an authority in a directory: the data path's tests and benchmarks (no configuration server) --
CA_KEY_FILE = "ca-key.pem"


def create_ca(directory: Path, passphrase: str, *, name: str = "dr-as-code test CA") -> Path:
    """`directory/ca.pem` and `directory/ca-key.pem` (the key encrypted with the passphrase)."""
    if len(passphrase) < 8:
        raise AuthError("a passphrase needs at least 8 characters")
    directory.mkdir(parents=True, exist_ok=True)
    authority = Authority.new(name)
    (directory / IDENTITY_FILES["ca"]).write_text(authority.cert_pem)
    encrypted = _load_key(authority.key_pem).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase.encode()))
    write_private(directory / CA_KEY_FILE, encrypted)
    return directory


def register(ca_dir: Path, passphrase: str, *, name: str, role: Role | str, out: Path,
             addresses: tuple[str, ...] = ("127.0.0.1", "localhost"), machine: str | None = None) -> Identity:
    """Issue an identity from a `create_ca` directory; AuthError without the right passphrase."""
    try:
        key = _load_key((ca_dir / CA_KEY_FILE).read_text(), passphrase.encode())
    except (ValueError, TypeError):
        raise AuthError("registration refused: the passphrase does not unlock the CA key") from None
    authority = Authority(cert_pem=(ca_dir / IDENTITY_FILES["ca"]).read_text(), key_pem=_key_pem(key))
    issued = authority.issue(name=name, role=role, hosts=addresses, machine=machine)
    assert issued.private_key_pem is not None
    return write_identity(out, certificate_pem=issued.certificate_pem, private_key_pem=issued.private_key_pem,
                          ca_pem=issued.ca_pem)


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
    """(common name, role as the certificate's OU spells it) of the verified peer certificate."""
    cert = sock.getpeercert()
    if not cert:
        raise AuthError("the peer presented no certificate")
    fields: dict[str, str] = {}
    for rdn in cert.get("subject", ()):
        for pair in rdn:
            fields[str(pair[0])] = str(pair[1])
    return str(fields.get("commonName", "")), str(fields.get("organizationalUnitName", ""))


def peer_machine(sock: ssl.SSLSocket) -> str | None:
    """The spec machine the verified peer certificate names (contract `machine_uri`), if any."""
    alt_names = (sock.getpeercert() or {}).get("subjectAltName", ())
    for entry in alt_names if isinstance(alt_names, tuple) else ():
        if entry[0] == "URI" and (machine := uri_machine(str(entry[1]))) is not None:
            return machine
    return None
