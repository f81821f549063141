"""The credential set credfresh passes around: immutable, and never printed whole."""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING

from credfresh.isotime import format_time, parse_time

if TYPE_CHECKING:
    from datetime import datetime

__all__ = ["Credentials", "account_id", "format_time", "mask_key_id", "parse_time"]

_ACCOUNT_ID = re.compile(r"\d{12}")


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
