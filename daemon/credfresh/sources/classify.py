"""Every source failure as a code: permanent (a human must act) or transient, with a hint."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Final

from credfresh.errors import CredfreshError

ROTATION_CODES: Final = frozenset({"InvalidClientTokenId", "SignatureDoesNotMatch", "ExpiredToken"})

PERMANENT_CODES: Final = ROTATION_CODES | frozenset(
    {
        "AccessDenied",
        "MalformedPolicyDocument",
        "PackedPolicyTooLarge",
        "RegionDisabledException",
        "ValidationError",
        "InvalidIdentityToken",
        "InvalidParameterValue",
        "no_source_credentials",
        "source_profile_not_found",
        "web_identity_token_unreadable",
        "AccessDeniedException",
        "ValidationException",
        "ResourceNotFoundException",
        "certificate_unreadable",
        "certificate_expired",
        "copy_loop",
        "sso_session_expired",
        "source_misconfigured",
    }
)
TRANSIENT_CODES: Final = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "IDPCommunicationError",
        "ExpiredTokenException",
        "InternalFailure",
        "InternalError",
        "ServiceUnavailable",
        "connection_error",
        "timeout",
        "invalid_response",
        "source_unavailable",
        "source_failed",
        "certificate_not_yet_valid",
        "InternalServerException",
    }
)

HINTS: Final[Mapping[str, str]] = {
    "AccessDenied": "the role's trust policy must name the caller (e.g. the IAM user's ARN, "
    "not a role ARN), and the caller needs sts:AssumeRole on the role",
    "MalformedPolicyDocument": "the session policy (policy / policy_file) is not a valid "
    "IAM policy; the message says what is wrong",
    "PackedPolicyTooLarge": "the session policy plus tags are too large: shorten the policy, "
    "use policy_arns, or drop tags",
    "RegionDisabledException": "activate STS for this region in IAM (Account settings), or "
    "set another `region` for the profile",
    "ExpiredToken": "the source credentials have expired: renew them or rotate the keys",
    "InvalidClientTokenId": "the source access key is not valid: check or rotate the keys "
    "of the source profile",
    "SignatureDoesNotMatch": "the source secret key does not match its access key id; "
    "'Signature expired' means the clock is off: check NTP",
    "Throttling": "STS is rate limiting: credfresh backs off; lower sts.max_concurrency if "
    "it persists",
    "ValidationError": "a parameter is out of range, e.g. duration_seconds above the role's "
    "maximum session duration",
    "connection_error": "STS could not be reached: check the network, proxy and endpoint_url",
    "timeout": "STS did not answer within sts.timeout (to connect, plus sts.timeout for the "
    "whole answer)",
    "invalid_response": "STS's answer was not a valid credential response (a captive proxy "
    "or a broken endpoint?)",
    "no_source_credentials": "no source credentials were found: set source_profile or "
    "provide credentials through the default chain",
    "source_profile_not_found": "the source_profile does not exist in the AWS config or "
    "credentials file",
    "source_unavailable": "the source profile of this chained role has no valid credentials",
    "web_identity_token_unreadable": "the web_identity_token_file cannot be read",
    "InvalidIdentityToken": "the web identity token was rejected: check the OIDC provider "
    "and the role's trust policy",
    "AccessDeniedException": "Roles Anywhere refused this certificate: check that the trust "
    "anchor (trust_anchor_arn) holds the CA that issued it and is enabled, that the profile "
    "(profile_arn) is enabled and lists role_arn, and that the role's trust policy trusts "
    "rolesanywhere.amazonaws.com with conditions this certificate meets",
    "ValidationException": "Roles Anywhere refused a parameter: duration_seconds above the "
    "Roles Anywhere profile's durationSeconds, or an ARN of another region or account",
    "ResourceNotFoundException": "the trust anchor or profile ARN does not exist in this "
    "region: check roles_anywhere.trust_anchor_arn, profile_arn and the region",
    "certificate_unreadable": "the certificate, key or chain cannot be used: the message "
    "names the file and what is wrong with it",
    "certificate_expired": "the Roles Anywhere certificate has expired: renew it (credfresh "
    "re-reads the files when they change)",
    "certificate_not_yet_valid": "the certificate is not valid yet: check this machine's clock",
    "copy_loop": "the copied profile resolves to a section credfresh itself writes: copy the "
    "AWS profile that holds the real source (or chain a role with role_arn)",
    "sso_session_expired": "the SSO session has ended: run aws sso login",
    "source_misconfigured": "botocore cannot resolve the source profile: check its keys in "
    "the AWS config (aws configure list --profile NAME)",
    "source_failed": "the source profile's provider failed (credential_process, SSO portal, "
    "instance metadata): it is retried with backoff",
}


@dataclasses.dataclass(frozen=True)
class Failure:
    """A classified STS failure: `permanent` needs a human, otherwise retry later."""

    code: str
    message: str
    permanent: bool
    hint: str | None = None
    status: int | None = None


class SourceError(CredfreshError):
    """A fetch that failed, carrying its classified `Failure` (never a secret)."""

    def __init__(self, failure: Failure, profile: str | None = None) -> None:
        super().__init__(f"{failure.code}: {failure.message}", code=failure.code, profile=profile)
        self.failure = failure


def classify(code: str, message: str = "", status: int | None = None) -> Failure:
    """Permanent or transient, with a one-line hint for the common errors."""
    permanent = code in PERMANENT_CODES or (
        code not in TRANSIENT_CODES and status is not None and 400 <= status < 500
    )
    hint = HINTS.get(code)
    if code == "SignatureDoesNotMatch" and "expired" in message.lower():
        hint = "'Signature expired': this machine's clock is off; check NTP"
    # One line, bounded: STS messages may be long, and may echo request text.
    message = " ".join(message.split())[:300]
    return Failure(code=code, message=message, permanent=permanent, hint=hint, status=status)
