"""Throwaway X.509 material for the demo and the tests: a CA, intermediates, leaves."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

KeyType = Literal["rsa", "ec256", "ec384"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def new_key(kind: KeyType) -> PrivateKey:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1() if kind == "ec256" else ec.SECP384R1())


@dataclasses.dataclass
class Issued:
    """A certificate and its key."""

    certificate: x509.Certificate
    key: PrivateKey

    @property
    def pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()

    def key_pem(self, *, traditional: bool = False) -> bytes:
        fmt = (
            serialization.PrivateFormat.TraditionalOpenSSL
            if traditional
            else serialization.PrivateFormat.PKCS8
        )
        return self.key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())

    def write(self, directory: Path, stem: str, *, traditional: bool = False) -> tuple[Path, Path]:
        """`<stem>.pem` and `<stem>.key`, the key 0600."""
        directory.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
        cert_path.write_text(self.pem)
        key_path.write_bytes(self.key_pem(traditional=traditional))
        key_path.chmod(0o600)
        return cert_path, key_path


def issue(  # noqa: PLR0913  a certificate's few knobs, each named
    name: str,
    *,
    issuer: Issued | None = None,
    ca: bool = False,
    kind: KeyType = "rsa",
    valid_from: datetime | None = None,
    valid_for: timedelta = timedelta(days=30),
    serial: int | None = None,
) -> Issued:
    """A certificate for `name`, signed by `issuer` (self-signed without one)."""
    key = new_key(kind)
    start = valid_from or datetime.now(UTC) - timedelta(minutes=5)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + valid_for)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    signer = issuer.key if issuer else key
    return Issued(builder.sign(signer, hashes.SHA256()), key)
