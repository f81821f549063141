"""The credential set credfresh passes around: immutable, and never printed whole."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime


def mask_key_id(access_key_id: str) -> str:
    """Access key ids are not secret but are sensitive: logs show the first and last four."""
    if len(access_key_id) <= 8:
        return "****"
    return f"{access_key_id[:4]}...{access_key_id[-4:]}"


def format_time(moment: datetime) -> str:
    """ISO 8601 UTC with whole seconds and a `Z`, as STS and other credential tools write it."""
    return moment.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    """Read ISO 8601 with or without fractional seconds; naive times are taken as UTC."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


@dataclasses.dataclass(frozen=True, slots=True)
class Credentials:
    """One credential set issued together by STS.

    `expiration` is the local expiry (already corrected for clock skew); `issued` is when
    credfresh received it. Both are timezone-aware UTC.
    """

    access_key_id: str
    secret_access_key: str = dataclasses.field(repr=False)
    session_token: str = dataclasses.field(repr=False)
    expiration: datetime
    issued: datetime
    principal_arn: str = ""

    def __repr__(self) -> str:
        return (
            f"Credentials(access_key_id={mask_key_id(self.access_key_id)!r}, "
            f"expiration={format_time(self.expiration)!r}, issued={format_time(self.issued)!r}, "
            f"principal_arn={self.principal_arn!r})"
        )

    __str__ = __repr__

    @property
    def lifetime_seconds(self) -> float:
        return (self.expiration - self.issued).total_seconds()
