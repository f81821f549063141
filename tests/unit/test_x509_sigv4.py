"""SigV4-X509 (IAM Roles Anywhere) signing, against a fixed vector derived outside Python.

No published Roles Anywhere vector carries its private key, so this one was derived by hand
from AWS's "Signing process for IAM Roles Anywhere" with the shell, not with credfresh:

    B64=$(openssl x509 -in cert.pem -outform DER | base64 -w0)
    BH=$(printf '%s' "$BODY" | sha256sum)            # the payload hash
    printf 'POST\\n/sessions\\n\\ncontent-type:application/json\\nhost:...\\n'
           'x-amz-date:20261202T050000Z\\nx-amz-x509:%s\\n\\n'
           'content-type;host;x-amz-date;x-amz-x509\\n%s' "$B64" "$BH" > canon.txt
    CH=$(sha256sum canon.txt)                        # the canonical request's hash
    printf 'AWS4-X509-RSA-SHA256\\n20261202T050000Z\\n'
           '20261202/us-east-1/rolesanywhere/aws4_request\\n%s' "$CH" > sts.txt
    openssl dgst -sha256 -sign key.pem sts.txt | xxd -p   # RSA PKCS#1 v1.5: deterministic

with the throwaway RSA key and certificate (serial 123456789) in
tests/data/roles_anywhere_vector/. RSA PKCS#1 v1.5 signatures are deterministic, so the
signature is compared byte for byte; ECDSA ones are not, so they are verified instead.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from credfresh.config.model import RolesAnywhereSpec
from credfresh.devsts.pki import issue
from credfresh.sources import x509_sigv4 as sigv4
from credfresh.sources.roles_anywhere import error_code, next_slot, session_body
from support import TESTS_DIR

VECTOR = TESTS_DIR / "data" / "roles_anywhere_vector"
WHEN = datetime(2026, 12, 2, 5, 0, 0, tzinfo=UTC)
HOST = "rolesanywhere.us-east-1.amazonaws.com"
SPEC = RolesAnywhereSpec(
    certificate=VECTOR / "cert.pem",
    private_key=VECTOR / "key.pem",
    trust_anchor_arn=(
        "arn:aws:rolesanywhere:us-east-1:123456789012:trust-anchor/66666666-7777-8888-9999-000000000000"
    ),
    profile_arn=(
        "arn:aws:rolesanywhere:us-east-1:123456789012:profile/11111111-2222-3333-4444-555555555555"
    ),
    role_arn="arn:aws:iam::123456789012:role/vector",
)
BODY_HASH = "1b1dfdc17d35d953fa5b1b741afe65bfe82d7f293bcd4fd9b5c68a46b1ca0e6a"
CANONICAL_HASH = "00335e0fa3996ce88425de4e4af851b99fb67129edee76e92c4baf18aaf424b3"
SIGNATURE = (
    "aa79e87d6af69b5189c1bc456f09587734ef917e1d0411b929ebe56ced13e699c240969ef88cabdf98ddfe59"
    "00318f07373a443faf7363e8cafe4ec2b69a4bf240a419c91aa7a366f3caa8feb852e3a0dae9285e0b166cba"
    "935a726cb3dbc56309df5c1698d68a9e4319bf029e55662810d515a45ad5d82a216f6da52ef694f112d7ba37"
    "6f3bb294d33d1f21b19bdb3faa9676936ad82e9056139428ceb095bc1c014b5c6ea8f860ad8e791348e58301"
    "4e0e4ddecf32c69eb71e2ffd6eee8ba2937d794f85ad0152b9678a1c2dbcaf651d44639ab3cd8b47a5d2c45c"
    "3b9a02ca22ba05e4d553358a02917f31a7135e73720e59aeb1c02c6ff291f960cf0c282d"
)


def _request() -> sigv4.SigningRequest:
    return sigv4.SigningRequest(
        method="POST",
        path="/sessions",
        query="",
        headers={"Host": HOST, "Content-Type": "application/json"},
        body=session_body(SPEC, 3600),
    )


def _vector() -> tuple[x509.Certificate, object]:
    cert = x509.load_pem_x509_certificate((VECTOR / "cert.pem").read_bytes())
    key = load_pem_private_key((VECTOR / "key.pem").read_bytes(), password=None)
    return cert, key


class TestFixedVector:
    def test_body_is_the_documented_json(self) -> None:
        import hashlib

        assert hashlib.sha256(session_body(SPEC, 3600)).hexdigest() == BODY_HASH

    def test_canonical_request_matches_the_hand_derivation(self) -> None:
        import hashlib

        cert, _ = _vector()
        b64 = sigv4.certificate_header(cert)
        headers = {**_request().headers, "X-Amz-Date": "20261202T050000Z", "X-Amz-X509": b64}
        canonical, signed = sigv4.canonical_request(
            sigv4.SigningRequest("POST", "/sessions", "", headers, _request().body)
        )
        assert signed == "content-type;host;x-amz-date;x-amz-x509"
        assert canonical == (
            "POST\n/sessions\n\n"
            "content-type:application/json\n"
            f"host:{HOST}\n"
            "x-amz-date:20261202T050000Z\n"
            f"x-amz-x509:{b64}\n\n"
            "content-type;host;x-amz-date;x-amz-x509\n"
            f"{BODY_HASH}"
        )
        assert hashlib.sha256(canonical.encode()).hexdigest() == CANONICAL_HASH

    def test_rsa_signature_byte_for_byte(self) -> None:
        cert, key = _vector()
        headers = sigv4.signed_headers(
            key=key,  # type: ignore[arg-type]
            certificate=cert,
            chain=(),
            request=_request(),
            region="us-east-1",
            when=WHEN,
        )
        assert headers["Authorization"] == (
            "AWS4-X509-RSA-SHA256 Credential=123456789/20261202/us-east-1/rolesanywhere/"
            f"aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-x509, "
            f"Signature={SIGNATURE}"
        )
        assert headers["X-Amz-Date"] == "20261202T050000Z"
        assert "X-Amz-X509-Chain" not in headers


class TestEcdsaAndChain:
    @pytest.mark.parametrize("kind", ["ec256", "ec384"])
    def test_ecdsa_signature_verifies(self, kind: str) -> None:
        ca = issue("ca", ca=True)
        leaf = issue("leaf", issuer=ca, kind=kind)  # type: ignore[arg-type]
        headers = sigv4.signed_headers(
            key=leaf.key,
            certificate=leaf.certificate,
            chain=(ca.certificate,),
            request=_request(),
            region="eu-west-1",
            when=WHEN,
        )
        auth = headers["Authorization"]
        assert auth.startswith("AWS4-X509-ECDSA-SHA256 Credential=")
        assert "x-amz-x509-chain" in auth
        assert headers["X-Amz-X509-Chain"] == sigv4.certificate_header(ca.certificate)
        canonical, _ = sigv4.canonical_request(
            sigv4.SigningRequest("POST", "/sessions", "", headers, _request().body)
        )
        to_sign = sigv4.string_to_sign(sigv4.ECDSA_ALGORITHM, WHEN, "eu-west-1", canonical)
        signature = bytes.fromhex(auth.rsplit("Signature=", 1)[1])
        public = leaf.certificate.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)
        public.verify(signature, to_sign.encode(), ec.ECDSA(hashes.SHA256()))

    def test_header_values_fold_spaces_and_names_sort(self) -> None:
        lines, signed = sigv4._canonical_headers(
            {"X-B": "  a   b ", "host": "h", "User-Agent": "x"}
        )
        assert signed == "host;x-b"
        assert lines == "host:h\nx-b:a b"


class TestAnswers:
    def test_error_type_from_header_then_body_then_status(self) -> None:
        assert error_code(403, {"x-amzn-errortype": "AccessDeniedException:http://x"}, b"")[0] == (
            "AccessDeniedException"
        )
        assert error_code(400, {}, b'{"__type":"com#ValidationException","message":"m"}') == (
            "ValidationException",
            "m",
        )
        assert error_code(429, {}, b"not json")[0] == "ThrottlingException"
        assert error_code(503, {}, b"")[0] == "InternalServerException"

    def test_pacing_spaces_calls(self) -> None:
        assert next_slot(None, 8, 10.0) == 10.0
        assert next_slot(10.0, 8, 10.0) == 10.125
        assert next_slot(10.0, 8, 11.0) == 11.0
