"""SigV4 with an X.509 certificate, as IAM Roles Anywhere's CreateSession wants it.

The canonical request and string to sign are SigV4's; what differs is the algorithm name
(`AWS4-X509-RSA-SHA256` / `AWS4-X509-ECDSA-SHA256`), the credential (the certificate's serial
number in decimal instead of an access key id), the `X-Amz-X509` and `X-Amz-X509-Chain`
headers, and the signature: the private key's, over SHA-256 of the string to sign (RSA
PKCS#1 v1.5 or DER-encoded ECDSA), hex-encoded. Pure but for the key's signing.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

SERVICE: Final = "rolesanywhere"
RSA_ALGORITHM: Final = "AWS4-X509-RSA-SHA256"
ECDSA_ALGORITHM: Final = "AWS4-X509-ECDSA-SHA256"
#: Headers SigV4 leaves unsigned (the helper's list): they may change on the way.
UNSIGNED_HEADERS: Final = frozenset({"authorization", "user-agent", "x-amzn-trace-id"})


@dataclasses.dataclass(frozen=True)
class SigningRequest:
    """What gets signed: a POST to `path` with these headers (Host included) and body."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes


def amz_date(when: datetime) -> str:
    return when.strftime("%Y%m%dT%H%M%SZ")


def scope(when: datetime, region: str) -> str:
    return f"{when.strftime('%Y%m%d')}/{region}/{SERVICE}/aws4_request"


def certificate_header(certificate: x509.Certificate) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding

    return base64.b64encode(certificate.public_bytes(Encoding.DER)).decode("ascii")


def chain_header(chain: Sequence[x509.Certificate]) -> str:
    return ",".join(certificate_header(cert) for cert in chain)


def _canonical_headers(headers: Mapping[str, str]) -> tuple[str, str]:
    """`name:value` lines (lower-case names, sorted, spaces folded) and the signed names."""
    merged: dict[str, list[str]] = {}
    for name, value in headers.items():
        key = name.lower()
        if key not in UNSIGNED_HEADERS:
            merged.setdefault(key, []).append(" ".join(value.split()))
    names = sorted(merged)
    return "\n".join(f"{name}:{','.join(merged[name])}" for name in names), ";".join(names)


def canonical_request(request: SigningRequest) -> tuple[str, str]:
    """SigV4's canonical request and its signed-headers list."""
    lines, signed = _canonical_headers(request.headers)
    payload = hashlib.sha256(request.body).hexdigest()
    text = "\n".join([request.method, request.path, request.query, lines + "\n", signed, payload])
    return text, signed


def string_to_sign(algorithm: str, when: datetime, region: str, canonical: str) -> str:
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return "\n".join([algorithm, amz_date(when), scope(when, region), digest])


def algorithm_for(key: RSAPrivateKey | EllipticCurvePrivateKey) -> str:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

    return RSA_ALGORITHM if isinstance(key, RSAPrivateKey) else ECDSA_ALGORITHM


def sign_bytes(key: RSAPrivateKey | EllipticCurvePrivateKey, data: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

    if isinstance(key, RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def signed_headers(  # noqa: PLR0913  the parts of one signature, each named
    *,
    key: RSAPrivateKey | EllipticCurvePrivateKey,
    certificate: x509.Certificate,
    chain: Sequence[x509.Certificate],
    request: SigningRequest,
    region: str,
    when: datetime,
) -> dict[str, str]:
    """The request's headers plus X-Amz-Date, X-Amz-X509(-Chain) and Authorization."""
    headers = dict(request.headers)
    headers["X-Amz-Date"] = amz_date(when)
    headers["X-Amz-X509"] = certificate_header(certificate)
    if chain:
        headers["X-Amz-X509-Chain"] = chain_header(chain)
    canonical, signed = canonical_request(dataclasses.replace(request, headers=headers))
    algorithm = algorithm_for(key)
    to_sign = string_to_sign(algorithm, when, region, canonical)
    signature = sign_bytes(key, to_sign.encode("utf-8")).hex()
    credential = f"{certificate.serial_number}/{scope(when, region)}"
    headers["Authorization"] = (
        f"{algorithm} Credential={credential}, SignedHeaders={signed}, Signature={signature}"
    )
    return headers
