"""A development IAM Roles Anywhere: `POST /sessions`, verified as the service does.

It checks the signature over the canonical request with the certificate's public key, the
chain up to a trust anchor a test registered, every certificate's validity dates, that the
request is fresh, and the trust anchor, profile and role ARNs; then it issues credentials
through the upstream's AssumeRole (moto's, so GetCallerIdentity accepts them). The canonical
request is rebuilt here on purpose, not with `credfresh.sources.x509_sigv4`: a bug shared by
signer and verifier would otherwise pass.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import re
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import urlencode

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from credfresh.devsts.wire import Incoming, Outgoing, Signer, find_credentials

FRESHNESS: Final = timedelta(minutes=5)
_AUTH: Final = re.compile(
    r"(AWS4-X509-(?:RSA|ECDSA)-SHA256) Credential=(\d+)/(\d{8})/([a-z0-9-]+)/rolesanywhere/"
    r"aws4_request, SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]+)"
)
#: Not an AWS key id (no AKIA prefix): moto, without auth, only records who signed.
ISSUER_KEY_ID: Final = "DEVSTS_ROLESANYWHERE_ISSUER"


class Refused(Exception):
    """A CreateSession the service would refuse: its error type, status and message."""

    def __init__(self, code: str, status: int, message: str) -> None:
        super().__init__(message)
        self.code, self.status, self.message = code, status, message


@dataclasses.dataclass(frozen=True)
class RaProfile:
    arn: str
    role_arns: frozenset[str]
    duration_seconds: int = 3600
    enabled: bool = True


def error_answer(refused: Refused) -> Outgoing:
    body = json.dumps({"message": refused.message}).encode()
    headers = [("Content-Type", "application/json"), ("x-amzn-ErrorType", refused.code)]
    return Outgoing(refused.status, body, headers)


def _denied(message: str) -> Refused:
    return Refused("AccessDeniedException", 403, message)


def _invalid(message: str) -> Refused:
    return Refused("ValidationException", 400, message)


def _der_certificate(text: str) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error):
        raise _invalid("X-Amz-X509 is not a base64 DER certificate") from None


def canonical_request(request: Incoming, signed: list[str]) -> str:
    """SigV4's canonical request from the headers as received (names listed as signed)."""
    values: dict[str, list[str]] = {}
    for name, value in request.headers:
        if name.lower() in signed:
            values.setdefault(name.lower(), []).append(" ".join(value.split()))
    missing = [name for name in signed if name not in values]
    if missing:
        raise _invalid(f"signed headers missing: {', '.join(missing)}")
    header_lines = "".join(f"{name}:{','.join(values[name])}\n" for name in signed)
    path, _, query = request.target.partition("?")
    payload = hashlib.sha256(request.body).hexdigest()
    return "\n".join(["POST", path, query, header_lines, ";".join(signed), payload])


def verify_signature(certificate: x509.Certificate, signature: bytes, data: bytes) -> None:
    key = certificate.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        else:
            raise _denied("unsupported key type")
    except InvalidSignature:
        raise _denied("the signature does not match the certificate's key") from None


def _check_dates(certificate: x509.Certificate, now: datetime, what: str) -> None:
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        raise _denied(f"the {what} is expired or not yet valid")


def verify_chain(
    leaf: x509.Certificate,
    intermediates: list[x509.Certificate],
    anchors: list[x509.Certificate],
    now: datetime,
) -> None:
    """Walk issuer links from the leaf to one of the anchors, checking each signature."""
    _check_dates(leaf, now, "certificate")
    current, pool = leaf, list(intermediates)
    for _ in range(len(intermediates) + 1):
        for anchor in anchors:
            if _issued_by(current, anchor):
                _check_dates(anchor, now, "trust anchor's CA certificate")
                return
        parent = next((cert for cert in pool if _issued_by(current, cert)), None)
        if parent is None:
            break
        _check_dates(parent, now, "intermediate certificate")
        pool.remove(parent)
        current = parent
    raise _denied("the certificate does not chain to the trust anchor")


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


class RolesAnywhereService:
    """Trust anchors and profiles a test registers, and the verified `CreateSession`."""

    def __init__(self, issue: Callable[[Incoming], Outgoing], clock: Callable[[], float]) -> None:
        self._issue = issue
        self._clock = clock
        self._lock = threading.Lock()
        self._anchors: dict[str, list[x509.Certificate]] = {}
        self._profiles: dict[str, RaProfile] = {}

    def add_trust_anchor(self, arn: str, ca_pem: str) -> None:
        certs = x509.load_pem_x509_certificates(ca_pem.encode())
        with self._lock:
            self._anchors[arn] = certs

    def add_profile(
        self, arn: str, role_arns: list[str], duration_seconds: int = 3600, enabled: bool = True
    ) -> None:
        with self._lock:
            self._profiles[arn] = RaProfile(arn, frozenset(role_arns), duration_seconds, enabled)

    def control(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """`POST /_devsts/rolesanywhere`: register a trust anchor and/or a profile."""
        if "trust_anchor_arn" in data:
            self.add_trust_anchor(str(data["trust_anchor_arn"]), str(data["ca_pem"]))
        if "profile_arn" in data:
            self.add_profile(
                str(data["profile_arn"]),
                [str(arn) for arn in data.get("role_arns", [])],
                int(data.get("duration_seconds", 3600)),
                bool(data.get("enabled", True)),
            )
        return {"ok": True}

    def answer(self, request: Incoming) -> Outgoing:
        try:
            params, leaf = self._verified(request)
        except Refused as refused:
            return error_answer(refused)
        return self._session(params, leaf)

    def _verified(self, request: Incoming) -> tuple[dict[str, Any], x509.Certificate]:
        found = _AUTH.fullmatch(request.header("Authorization") or "")
        if found is None:
            raise Refused("AccessDeniedException", 403, "missing or malformed X.509 signature")
        algorithm, serial, day, region, signed_text, signature_hex = found.groups()
        leaf = _der_certificate(request.header("X-Amz-X509") or "")
        if str(leaf.serial_number) != serial:
            raise _denied("the credential's serial number is not the certificate's")
        chain_text = request.header("X-Amz-X509-Chain")
        chain = [_der_certificate(part) for part in chain_text.split(",")] if chain_text else []
        signed = signed_text.split(";")
        if not {"host", "x-amz-date", "x-amz-x509"} <= set(signed) or (
            chain_text and "x-amz-x509-chain" not in signed
        ):
            raise _denied("host, x-amz-date and the certificate headers must be signed")
        now = datetime.fromtimestamp(self._clock(), UTC)
        stamp = request.header("X-Amz-Date") or ""
        try:
            when = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except ValueError:
            raise _invalid("X-Amz-Date is malformed") from None
        if abs(now - when) > FRESHNESS or when.strftime("%Y%m%d") != day:
            raise _denied("the request is not fresh (X-Amz-Date more than 5 minutes off)")
        canonical = canonical_request(request, signed)
        to_sign = "\n".join(
            [
                algorithm,
                stamp,
                f"{day}/{region}/rolesanywhere/aws4_request",
                hashlib.sha256(canonical.encode()).hexdigest(),
            ]
        )
        verify_signature(leaf, bytes.fromhex(signature_hex), to_sign.encode())
        try:
            params = json.loads(request.body)
        except ValueError:
            raise _invalid("the body is not JSON") from None
        if not isinstance(params, dict):
            raise _invalid("the body is not a JSON object")
        self._check_arns(params, leaf, chain, now)
        return params, leaf

    def _check_arns(
        self,
        params: dict[str, Any],
        leaf: x509.Certificate,
        chain: list[x509.Certificate],
        now: datetime,
    ) -> None:
        with self._lock:
            anchors = self._anchors.get(str(params.get("trustAnchorArn")))
            profile = self._profiles.get(str(params.get("profileArn")))
        if anchors is None:
            raise Refused("ResourceNotFoundException", 404, "no such trust anchor")
        verify_chain(leaf, chain, anchors, now)
        if profile is None:
            raise Refused("ResourceNotFoundException", 404, "no such profile")
        if not profile.enabled:
            raise _denied("the profile is disabled")
        if params.get("roleArn") not in profile.role_arns:
            raise _denied("the profile does not list this role")
        duration = params.get("durationSeconds", 3600)
        if not isinstance(duration, int) or not 900 <= duration <= profile.duration_seconds:
            raise _invalid("durationSeconds is outside 900..the profile's durationSeconds")

    def _session(self, params: dict[str, Any], leaf: x509.Certificate) -> Outgoing:
        """Issue through the upstream's AssumeRole and answer in CreateSession's shape."""
        name = str(params.get("roleSessionName") or leaf.serial_number)[:64]
        form = {
            "Action": "AssumeRole",
            "Version": "2011-06-15",
            "RoleArn": str(params["roleArn"]),
            "RoleSessionName": name,
            "DurationSeconds": str(params.get("durationSeconds", 3600)),
        }
        body = urlencode(form).encode()
        authorization = (
            f"AWS4-HMAC-SHA256 Credential={ISSUER_KEY_ID}/20260101/us-east-1/sts/aws4_request, "
            "SignedHeaders=host, Signature=00"
        )
        incoming = Incoming(
            method="POST",
            target="/",
            headers=(
                ("Host", "sts.amazonaws.com"),
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Authorization", authorization),
            ),
            body=body,
            params=form,
            signer=Signer(ISSUER_KEY_ID, "us-east-1", "sts"),
        )
        issued = self._issue(incoming)
        found = find_credentials(issued.body) if issued.status == 200 else None
        if found is None:
            return error_answer(Refused("InternalServerException", 500, "issuing failed"))
        answer = {
            "credentialSet": [
                {
                    "credentials": {
                        "accessKeyId": found.access_key_id,
                        "secretAccessKey": found.secret_access_key,
                        "sessionToken": found.session_token,
                        "expiration": found.expiration_text,
                    },
                    "roleArn": form["RoleArn"],
                    "sourceIdentity": "",
                    "packedPolicySize": 0,
                }
            ],
            "subjectArn": f"arn:aws:rolesanywhere:::subject/{leaf.serial_number}",
        }
        return Outgoing(201, json.dumps(answer).encode(), [("Content-Type", "application/json")])
