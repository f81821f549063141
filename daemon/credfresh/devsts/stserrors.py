"""STS error codes with the HTTP status and XML body STS answers them with."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final
from xml.sax.saxutils import escape

from credfresh.devsts.wire import Outgoing

STS_NAMESPACE: Final = "https://sts.amazonaws.com/doc/2011-06-15/"


@dataclasses.dataclass(frozen=True, slots=True)
class ErrorSpec:
    """How STS answers one error code: botocore picks the exception from code and status."""

    status: int
    message: str
    fault: str = "Sender"


# Statuses from aws-facts.md; messages are the ones AWS sends, so hints and logs look real.
STS_ERRORS: Final[Mapping[str, ErrorSpec]] = MappingProxyType(
    {
        "AccessDenied": ErrorSpec(
            403, "User is not authorized to perform: sts:AssumeRole on this resource"
        ),
        "MalformedPolicyDocument": ErrorSpec(400, "Syntax errors in policy."),
        "PackedPolicyTooLarge": ErrorSpec(
            400,
            "Packed policy consumes 112% of allotted space, please use smaller policy for session.",
        ),
        "RegionDisabledException": ErrorSpec(
            403,
            "STS is not activated in this region for account:123456789012. Your account "
            "administrator can activate STS in this region using the IAM Console.",
        ),
        "ExpiredToken": ErrorSpec(403, "The security token included in the request is expired"),
        "ExpiredTokenException": ErrorSpec(400, "Token expired: the web identity token is expired"),
        "InvalidClientTokenId": ErrorSpec(
            403, "The security token included in the request is invalid."
        ),
        "SignatureDoesNotMatch": ErrorSpec(
            403,
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method. "
            "Consult the service documentation for details.",
        ),
        "ValidationError": ErrorSpec(
            400,
            "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.",
        ),
        "Throttling": ErrorSpec(400, "Rate exceeded"),
        "RequestExpired": ErrorSpec(400, "Request has expired."),
        "InvalidIdentityToken": ErrorSpec(
            400, "Couldn't retrieve verification key from your identity provider"
        ),
        "IDPCommunicationError": ErrorSpec(
            400, "The identity provider could not be reached. Please try again."
        ),
        "IDPRejectedClaim": ErrorSpec(403, "Incorrect token audience"),
        "InvalidAction": ErrorSpec(400, "Could not find operation"),
        "InternalFailure": ErrorSpec(
            500,
            "The request processing has failed because of an unknown error, exception or failure.",
            "Receiver",
        ),
        "ServiceUnavailable": ErrorSpec(
            503, "The request has failed due to a temporary failure of the server.", "Receiver"
        ),
    }
)


def error_spec(code: str, *, status: int | None = None, message: str | None = None) -> ErrorSpec:
    """Resolve a code to its status and message; unknown codes need an explicit status.

    An unknown code without a status is almost always a typo in a test, so it is refused
    rather than answered with a guessed status.
    """
    known = STS_ERRORS.get(code)
    if known is None and status is None:
        raise ValueError(
            f"unknown STS error code {code!r}: pass status= for it, "
            f"or use one of {', '.join(sorted(STS_ERRORS))}"
        )
    if status is not None and not 400 <= status <= 599:
        raise ValueError(f"error status must be 400..599 (got {status})")
    base = known or ErrorSpec(status or 400, code)
    final_status = status if status is not None else base.status
    return ErrorSpec(
        status=final_status,
        message=message if message is not None else base.message,
        fault="Receiver" if final_status >= 500 else "Sender",
    )


def new_request_id() -> str:
    """STS request ids are UUIDs; clients log them, so each answer gets a fresh one."""
    return str(uuid.uuid4())


def error_body(code: str, message: str, fault: str, request_id: str) -> bytes:
    """The query-protocol error document botocore parses into a ClientError."""
    return (
        f'<ErrorResponse xmlns="{STS_NAMESPACE}"><Error><Type>{escape(fault)}</Type>'
        f"<Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error>"
        f"<RequestId>{request_id}</RequestId></ErrorResponse>\n"
    ).encode()


def error_answer(code: str, *, status: int | None = None, message: str | None = None) -> Outgoing:
    """A complete STS error answer: status, XML body and the request-id header."""
    spec = error_spec(code, status=status, message=message)
    request_id = new_request_id()
    return Outgoing(
        spec.status,
        error_body(code, spec.message, spec.fault, request_id),
        [("Content-Type", "text/xml"), ("x-amzn-RequestId", request_id)],
    )
