"""The credential set credfresh passes around: immutable, and never printed whole."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime
from typing import Final

from credfresh.isotime import format_time, parse_time

__all__ = [
    "NEVER",
    "Credentials",
    "account_id",
    "endpoint_unavailable",
    "format_expiry",
    "format_time",
    "mask_key_id",
    "parse_time",
]

_ACCOUNT_ID = re.compile(r"\d{12}")

#: The expiry the views (readiness, snapshots) give a static set, which never expires; never
#: written anywhere (the file, credential-process and env files leave the expiry out).
NEVER: Final = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


def account_id(principal_arn: str) -> str | None:
    """The account of an `arn:aws:sts::123456789012:assumed-role/...` ARN, if it has one:
    SDKs read it (`aws_account_id`, `AccountId`) for account-based endpoints."""
    parts = principal_arn.split(":", 5)
    if len(parts) == 6 and _ACCOUNT_ID.fullmatch(parts[4]):
        return parts[4]
    return None


def mask_key_id(access_key_id: str) -> str:
    """Access key ids are not secret but are sensitive: logs show the first and last four."""
    if len(access_key_id) <= 8:
        return "****"
    return f"{access_key_id[:4]}...{access_key_id[-4:]}"


@dataclasses.dataclass(frozen=True, slots=True)
class Credentials:
    """One credential set issued together by STS.

    `expiration` is the local expiry (already corrected for clock skew); `issued` is when
    credfresh received it. Both are timezone-aware UTC. A static set (long-term keys a
    copied profile copies) has no `session_token` ("") and no `expiration` (None).
    """

    access_key_id: str
    secret_access_key: str = dataclasses.field(repr=False)
    session_token: str = dataclasses.field(repr=False)
    expiration: datetime | None
    issued: datetime
    principal_arn: str = ""

    def __repr__(self) -> str:
        return (
            f"Credentials(access_key_id={mask_key_id(self.access_key_id)!r}, "
            f"expiration={format_expiry(self.expiration)!r}, "
            f"issued={format_time(self.issued)!r}, "
            f"principal_arn={self.principal_arn!r})"
        )

    __str__ = __repr__

    @property
    def static(self) -> bool:
        """Long-term keys: nothing to refresh by time, nothing that expires."""
        return self.expiration is None

    @property
    def lifetime_seconds(self) -> float:
        """Seconds from issue to expiry; infinite for a static set."""
        if self.expiration is None:
            return float("inf")
        return (self.expiration - self.issued).total_seconds()

    def valid_at(self, now: datetime) -> bool:
        """Whether the set is still usable at `now` (a static set always is)."""
        return self.expiration is None or self.expiration > now


def format_expiry(expiration: datetime | None) -> str:
    """An expiry for logs and status: `never` for a static set."""
    return "never" if expiration is None or expiration == NEVER else format_time(expiration)


def endpoint_unavailable(creds: Credentials | None, now: datetime) -> str | None:
    """Why the container or IMDS endpoint serves no set: `missing`, `expired`, or
    `static_keys` (both protocols carry a Token and an Expiration; inventing either would
    lie to the SDK); None when it serves this one."""
    if creds is None:
        return "missing"
    if creds.expiration is None:
        return "static_keys"
    return "expired" if creds.expiration <= now else None
