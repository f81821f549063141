"""A Roles Anywhere profile's certificate, key and chain: read, checked, re-read on change.

cert-manager and ACME clients rotate the files by rename, so each call compares the files'
identity (device, inode, size, mtime) and re-reads only when one changed; a re-read that
fails (a half-written rotation, a key that does not match) keeps the last good pair and
says why once per change, so a refresh still works with the pair that worked.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from credfresh.sources.classify import SourceError, classify

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

    SigningKey = RSAPrivateKey | EllipticCurvePrivateKey

MAX_PEM_BYTES: Final = 256 * 1024
#: The curves Roles Anywhere accepts for ECDSA; RSA keys of at least this many bits.
EC_CURVES: Final = frozenset({"secp256r1", "secp384r1"})
MIN_RSA_BITS: Final = 2048

FileId = tuple[int, int, int, int]


class MaterialError(ValueError):
    """Why a certificate, key or chain cannot be used; the text names files, never key bytes."""


@dataclasses.dataclass(frozen=True)
class Material:
    """A usable certificate with its key and intermediates."""

    certificate: x509.Certificate
    key: SigningKey
    chain: tuple[x509.Certificate, ...]

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    @property
    def not_before(self) -> datetime:
        return self.certificate.not_valid_before_utc


def _read_pem(path: Path, what: str) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise MaterialError(f"cannot read the {what} {path} ({exc.strerror or exc})") from None
    if len(data) > MAX_PEM_BYTES:
        raise MaterialError(f"the {what} {path} is larger than {MAX_PEM_BYTES} bytes")
    return data


def _certificates(data: bytes, path: Path, what: str) -> list[x509.Certificate]:
    from cryptography import x509

    try:
        found = x509.load_pem_x509_certificates(data)
    except ValueError:
        found = []
    if not found:
        raise MaterialError(f"the {what} {path} holds no PEM certificate")
    return found


def _private_key(data: bytes, path: Path) -> SigningKey:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key: Any = load_pem_private_key(data, password=None)
    except TypeError:
        raise MaterialError(
            f"the private key {path} is encrypted (an unencrypted key is needed)"
        ) from None
    except ValueError:
        raise MaterialError(
            f"the private key {path} is not a PEM RSA or EC key (PKCS#8 or traditional)"
        ) from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise MaterialError(f"the RSA key {path} has {key.key_size} bits (at least 2048)")
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name not in EC_CURVES:
            raise MaterialError(f"the EC key {path} is on {key.curve.name} (P-256 or P-384)")
        return key
    raise MaterialError(f"the private key {path} is neither RSA nor EC")


def _public_bytes(key: Any) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return bytes(key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))


def load_material(certificate: Path, private_key: Path, chain: Path | None) -> Material:
    """Read and check the three files; MaterialError says what is wrong with which."""
    cert = _certificates(_read_pem(certificate, "certificate"), certificate, "certificate")[0]
    key = _private_key(_read_pem(private_key, "private key"), private_key)
    if _public_bytes(key.public_key()) != _public_bytes(cert.public_key()):
        raise MaterialError(f"the private key {private_key} does not match {certificate}")
    intermediates: tuple[x509.Certificate, ...] = ()
    if chain is not None:
        intermediates = tuple(_certificates(_read_pem(chain, "chain"), chain, "certificate chain"))
    return Material(certificate=cert, key=key, chain=intermediates)


def check_dates(material: Material, now: datetime) -> None:
    """A certificate outside its validity would be refused by Roles Anywhere: say so first."""
    if now >= material.not_after:
        raise SourceError(
            classify(
                "certificate_expired",
                f"the certificate expired at {material.not_after.isoformat()}",
            )
        )
    if now < material.not_before:
        raise SourceError(
            classify("certificate_not_yet_valid", "the certificate is not valid yet (clock?)")
        )


def _file_id(path: Path) -> FileId:
    try:
        st = os.stat(path)
    except OSError:
        return (0, 0, -1, 0)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class CertificateFiles:
    """One profile's files, re-read when they change; thread-safe."""

    def __init__(
        self,
        certificate: Path,
        private_key: Path,
        chain: Path | None,
        *,
        on_reload_failed: Callable[[str], None],
    ) -> None:
        self._paths = (certificate, private_key, chain)
        self._on_failed = on_reload_failed
        self._lock = threading.Lock()
        self._ids: tuple[FileId, ...] | None = None
        self._good: Material | None = None

    def _current_ids(self) -> tuple[FileId, ...]:
        return tuple(_file_id(path) for path in self._paths if path is not None)

    def material(self) -> Material:
        """The current pair; the last good one when a changed file does not load."""
        ids = self._current_ids()
        with self._lock:
            if ids == self._ids and self._good is not None:
                return self._good
            try:
                found = load_material(*self._paths)
            except MaterialError as exc:
                if self._good is None:
                    raise SourceError(classify("certificate_unreadable", str(exc))) from None
                if ids != self._ids:
                    self._on_failed(str(exc))
                self._ids = ids
                return self._good
            self._ids, self._good = ids, found
            return found

    def last_good(self) -> Material | None:
        with self._lock:
            return self._good
