"""Pure helpers that read STS query requests and rewrite credential responses."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Final, Literal, Protocol
from urllib.parse import parse_qsl, urlsplit
from xml.sax.saxutils import unescape

# Parameters that carry secrets or one-time proofs: never recorded, never shown.
SECRET_PARAMS: Final = frozenset(
    {
        "WebIdentityToken",
        "SAMLAssertion",
        "TokenCode",
        "Password",
        "NewPassword",
        "OldPassword",
        "X-Amz-Security-Token",
        "X-Amz-Signature",
        "X-Amz-Credential",
    }
)

# Actions whose successful answer carries a credential set.
ISSUING_ACTIONS: Final = frozenset(
    {
        "AssumeRole",
        "AssumeRoleWithWebIdentity",
        "AssumeRoleWithSAML",
        "GetSessionToken",
        "GetFederationToken",
    }
)

# Calls STS serves without a signature: the token or assertion is the proof.
UNSIGNED_ACTIONS: Final = frozenset({"AssumeRoleWithWebIdentity", "AssumeRoleWithSAML"})

_CREDENTIAL_SCOPE = re.compile(r"Credential=([^/,\s]+)/[^/]*/([^/]*)/([^/,\s]*)")
_QUERY_SCOPE = re.compile(r"^([^/]+)/[^/]*/([^/]*)/([^/]*)")
_CREDENTIALS_BLOCK = re.compile(rb"<Credentials>(.*?)</Credentials>", re.DOTALL)
_EXPIRATION = re.compile(rb"(<Expiration>)([^<]*)(</Expiration>)")
_ASSUMED_ROLE_ARN = re.compile(rb"<AssumedRoleUser>.*?<Arn>([^<]*)</Arn>", re.DOTALL)
_FEDERATED_USER_ARN = re.compile(rb"<FederatedUser>.*?<Arn>([^<]*)</Arn>", re.DOTALL)

ExpirationStyle = Literal["keep", "seconds"]


@dataclasses.dataclass(frozen=True, slots=True)
class Signer:
    """Who signed a request, read from SigV4's credential scope (no secret involved)."""

    access_key_id: str | None = None
    region: str | None = None
    service: str | None = None


def form_params(target: str, content_type: str | None, body: bytes) -> dict[str, str]:
    """Merge query-string and form-body parameters; the body wins, as in AWS's query API."""
    params = dict(parse_qsl(urlsplit(target).query, keep_blank_values=True))
    if content_type and content_type.split(";")[0].strip().lower() == (
        "application/x-www-form-urlencoded"
    ):
        text = body.decode("utf-8", errors="replace")
        params.update(parse_qsl(text, keep_blank_values=True))
    return params


def signer_of(authorization: str | None, params: Mapping[str, str]) -> Signer:
    """Read the access key id from `Authorization` or a presigned URL's X-Amz-Credential."""
    if authorization:
        found = _CREDENTIAL_SCOPE.search(authorization)
        if found:
            return Signer(found.group(1), found.group(2) or None, found.group(3) or None)
    scope = params.get("X-Amz-Credential")
    if scope:
        found = _QUERY_SCOPE.match(scope)
        if found:
            return Signer(found.group(1), found.group(2) or None, found.group(3) or None)
    return Signer()


def recordable(params: Mapping[str, str]) -> dict[str, str]:
    """Parameters safe to keep in a test's request log: tokens and signatures removed."""
    return {key: value for key, value in params.items() if key not in SECRET_PARAMS}


@dataclasses.dataclass(frozen=True, slots=True)
class FoundCredentials:
    """A credential set read out of an STS answer."""

    access_key_id: str
    secret_access_key: str = dataclasses.field(repr=False)
    session_token: str = dataclasses.field(repr=False)
    expiration_text: str
    principal_arn: str | None


def _field(block: bytes, name: str) -> str | None:
    found = re.search(rb"<" + name.encode() + rb">([^<]*)</" + name.encode() + rb">", block)
    return unescape(found.group(1).decode()) if found else None


def find_credentials(body: bytes) -> FoundCredentials | None:
    """Extract the credential set from an AssumeRole-style answer, or None if it has none."""
    block = _CREDENTIALS_BLOCK.search(body)
    if block is None:
        return None
    inner = block.group(1)
    access_key_id = _field(inner, "AccessKeyId")
    secret = _field(inner, "SecretAccessKey")
    token = _field(inner, "SessionToken")
    expiration = _field(inner, "Expiration")
    if not (access_key_id and secret and token and expiration):
        return None
    arn = _ASSUMED_ROLE_ARN.search(body) or _FEDERATED_USER_ARN.search(body)
    return FoundCredentials(
        access_key_id=access_key_id,
        secret_access_key=secret,
        session_token=token,
        expiration_text=expiration,
        principal_arn=unescape(arn.group(1).decode()) if arn else None,
    )


def format_expiration(expires_at: float, *, fractional: bool) -> str:
    """ISO 8601 UTC with `Z`: whole seconds (truncated) as STS sends, or microseconds as moto."""
    moment = datetime.fromtimestamp(expires_at, UTC)
    if fractional:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_expiration(text: str) -> datetime:
    """Read STS's and moto's expiration formats (with or without fractions) as aware UTC."""
    moment = datetime.fromisoformat(text.strip())
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def rewrite_expiration(body: bytes, expires_at: float, style: ExpirationStyle) -> tuple[bytes, str]:
    """Replace the first `<Expiration>` so the credentials live until `expires_at`.

    `keep` writes microseconds only when the original had a fractional part, so moto's
    format stays moto's and a whole-second answer stays whole seconds.
    """
    found = _EXPIRATION.search(body)
    if found is None:
        raise ValueError("answer has no <Expiration> element")
    fractional = style == "keep" and b"." in found.group(2)
    text = format_expiration(expires_at, fractional=fractional)
    start, end = found.span(2)
    return body[:start] + text.encode() + body[end:], text


def header_value(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    """First value of a header, case-insensitively, as HTTP header names are."""
    wanted = name.lower()
    for key, value in headers:
        if key.lower() == wanted:
            return value
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class Incoming:
    """A request as the proxy read it; `params` still holds tokens (it is never recorded)."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    params: Mapping[str, str]
    signer: Signer

    @property
    def action(self) -> str | None:
        return self.params.get("Action")

    def header(self, name: str) -> str | None:
        return header_value(self.headers, name)


@dataclasses.dataclass(slots=True)
class Outgoing:
    """An answer on its way back to the client."""

    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    reason: str | None = None


class Upstream(Protocol):
    """What answers the requests the proxy does not answer itself: moto, or the stub."""

    name: str

    def forward(self, request: Incoming) -> Outgoing: ...

    def close(self) -> None: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    """What the handler does: send `outgoing` (maybe cut short), or close without answer."""

    outgoing: Outgoing | None
    truncate: int | None = None
    # Seconds between body bytes: an answer that trickles in (each read is quick).
    trickle: float | None = None
