"""A small PKI for TLS tests: a trust domain CA, its server and SPIFFE client certificates.

Made with `cryptography`, as SPIRE would issue them: the trust domain CA signs
the server's certificate and the workloads' X.509 SVIDs; a second, unrelated
CA signs certificates nobody should accept.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NOW = datetime.now(UTC)


@dataclass(frozen=True)
class Pair:
    cert: bytes
    key: bytes

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = directory / f"{name}.crt", directory / f"{name}.key"
        cert.write_bytes(self.cert)
        key.write_bytes(self.key)
        return cert, key


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class Authority:
    """A CA that issues server and SPIFFE client certificates."""

    def __init__(self, name: str) -> None:
        self.key = _key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - timedelta(days=1))
            .not_valid_after(NOW + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        *,
        spiffe: str | None = None,
        uris: tuple[str, ...] = (),
        subject: str | None = None,
        name: x509.Name | None = None,
        server: bool = False,
        not_before: datetime = NOW - timedelta(hours=1),
        not_after: datetime = NOW + timedelta(days=1),
    ) -> Pair:
        key = _key()
        names: list[x509.NameAttribute[str]] = []
        if subject is not None:
            names = [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"),
                x509.NameAttribute(NameOID.COMMON_NAME, subject),
            ]
        sans: list[x509.GeneralName] = []
        if spiffe is not None:
            sans.append(x509.UniformResourceIdentifier(spiffe))
        sans += [x509.UniformResourceIdentifier(uri) for uri in uris]
        if server:
            sans += [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        usage = x509.oid.ExtendedKeyUsageOID
        builder = (
            x509.CertificateBuilder()
            .subject_name(name if name is not None else x509.Name(names))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([usage.SERVER_AUTH, usage.CLIENT_AUTH]), critical=False
            )
        )
        if sans:
            # An X.509 SVID has an empty subject, so its SAN extension is critical.
            empty_subject = not (names or name)
            builder = builder.add_extension(
                x509.SubjectAlternativeName(sans), critical=empty_subject
            )
        cert = builder.sign(self.key, hashes.SHA256())
        return Pair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


@dataclass(frozen=True)
class Pki:
    domain: Authority  # the trust domain: signs the server and its workloads
    other: Authority  # an unrelated CA
    server: Pair


def make_pki() -> Pki:
    domain = Authority("example.org trust domain")
    return Pki(domain, Authority("someone else"), domain.issue(server=True))


def tls_settings(directory: Path, pki: Pki, *, mutual: bool = True) -> dict[str, Any]:
    cert, key = pki.server.write(directory, "server")
    out: dict[str, Any] = {"tls_cert": cert, "tls_key": key}
    if mutual:
        ca = directory / "client-ca.pem"
        ca.write_bytes(pki.domain.pem)
        out["tls_client_ca"] = ca
    return out
