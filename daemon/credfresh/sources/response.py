"""Checking an STS answer before anything of it may reach the credentials file."""

from __future__ import annotations

import email.utils
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from credfresh.credentials import Credentials, parse_time
from credfresh.sources.classify import SourceError, classify

MAX_EXPIRY_SLACK: Final = timedelta(minutes=5)
SKEW_IGNORED_BELOW: Final = timedelta(seconds=2)

# AWS formats, checked whole: a stray newline in a value would end up in the credentials file.
ACCESS_KEY_ID: Final = re.compile(r"[A-Za-z0-9_]{16,128}")
SECRET_ACCESS_KEY: Final = re.compile(r"[A-Za-z0-9/+=]{1,256}")
SESSION_TOKEN: Final = re.compile(r"[A-Za-z0-9/+=_-]{1,16384}")
CREDENTIAL_FORMATS: Final = {
    "AccessKeyId": ACCESS_KEY_ID,
    "SecretAccessKey": SECRET_ACCESS_KEY,
    "SessionToken": SESSION_TOKEN,
}
ASSUMED_ROLE_ARN: Final = re.compile(
    r"arn:aws(?:-[a-z]+)*:sts::\d{12}:assumed-role/[A-Za-z0-9_+=,.@-]{1,64}/[A-Za-z0-9_+=,.@-]{1,64}"
)
EXPIRATION_TEXT: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})?"
)


def response_date(headers: Mapping[str, str]) -> datetime | None:
    value = headers.get("date")
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).astimezone(UTC)
    except (TypeError, ValueError, IndexError):
        return None


def clock_skew(received_at: datetime, server_date: datetime | None) -> timedelta:
    """Local clock minus server clock; differences under 2 s are the Date header's rounding."""
    if server_date is None:
        return timedelta(0)
    skew = received_at - server_date
    return skew if abs(skew) >= SKEW_IGNORED_BELOW else timedelta(0)


def accept_response(
    response: Mapping[str, Any],
    *,
    received_at: datetime,
    duration_seconds: int,
) -> tuple[Credentials, timedelta]:
    """Check an AssumeRole* response and turn it into local Credentials, or raise SourceError.
    The local expiry, `Expiration + skew`, must be in (now, now + duration_seconds + 5 min].
    """
    creds = response.get("Credentials")
    if not isinstance(creds, Mapping):
        raise SourceError(classify("invalid_response", "response has no Credentials"))
    fields = {}
    for name, pattern in CREDENTIAL_FORMATS.items():
        value = creds.get(name)
        if not isinstance(value, str) or not value.strip() or not value.isascii():
            raise SourceError(
                classify("invalid_response", f"response field {name} is missing or empty")
            )
        if not pattern.fullmatch(value):
            raise SourceError(classify("invalid_response", f"response field {name} is malformed"))
        fields[name] = value
    expiration = creds.get("Expiration")
    if isinstance(expiration, str):
        try:
            expiration = parse_time(expiration) if EXPIRATION_TEXT.fullmatch(expiration) else None
        except ValueError:
            expiration = None
    if not isinstance(expiration, datetime):
        raise SourceError(classify("invalid_response", "response field Expiration is missing"))
    if expiration.tzinfo is None:
        expiration = expiration.replace(tzinfo=UTC)
    headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    skew = clock_skew(received_at, response_date(headers))
    local_expiry = expiration.astimezone(UTC) + skew
    if local_expiry <= received_at:
        raise SourceError(classify("invalid_response", "response Expiration is in the past"))
    if local_expiry > received_at + timedelta(seconds=duration_seconds) + MAX_EXPIRY_SLACK:
        raise SourceError(
            classify("invalid_response", "response Expiration is later than the requested duration")
        )
    principal = _principal(response)
    return (
        Credentials(
            access_key_id=fields["AccessKeyId"],
            secret_access_key=fields["SecretAccessKey"],
            session_token=fields["SessionToken"],
            expiration=local_expiry,
            issued=received_at,
            principal_arn=principal,
        ),
        skew,
    )


def _principal(response: Mapping[str, Any]) -> str:
    """The assumed-role ARN, or "" when the answer names none; anything else is refused."""
    assumed = response.get("AssumedRoleUser")
    if assumed is None:
        return ""
    arn = assumed.get("Arn") if isinstance(assumed, Mapping) else None
    if arn is None and isinstance(assumed, Mapping):
        return ""
    if not isinstance(arn, str) or not ASSUMED_ROLE_ARN.fullmatch(arn):
        raise SourceError(
            classify("invalid_response", "response field AssumedRoleUser.Arn is malformed")
        )
    return arn
