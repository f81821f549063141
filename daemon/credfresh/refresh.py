"""When to refresh: pure decisions on plain data, with `now` always passed in."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Final, Literal

from credfresh.credentials import Credentials

State = Literal["fresh", "due", "expired", "missing", "conflict"]

JITTER_FRACTION: Final = 0.10


def refresh_window(creds: Credentials, refresh_before: float) -> float:
    """Seconds before expiry at which a profile becomes due: min(refresh_before, lifetime/2).

    Half the lifetime keeps short sessions from being refreshed constantly; `refresh_before`
    (20 minutes by default) keeps long ones clear of botocore's own 15-minute window.
    """
    return max(0.0, min(refresh_before, creds.lifetime_seconds / 2))


def due_at(creds: Credentials, refresh_before: float) -> datetime:
    return creds.expiration - timedelta(seconds=refresh_window(creds, refresh_before))


def is_due(now: datetime, creds: Credentials, refresh_before: float) -> bool:
    return now >= due_at(creds, refresh_before)


def state_of(now: datetime, creds: Credentials | None, refresh_before: float) -> State:
    if creds is None:
        return "missing"
    if now >= creds.expiration:
        return "expired"
    if is_due(now, creds, refresh_before):
        return "due"
    return "fresh"


def jittered_due_at(
    creds: Credentials, refresh_before: float, rng: random.Random | None = None
) -> datetime:
    """The due time moved EARLIER by up to 10% of the window, so a fleet spreads out."""
    window = refresh_window(creds, refresh_before)
    fraction = (rng or random).uniform(0.0, JITTER_FRACTION)
    return creds.expiration - timedelta(seconds=window * (1 + fraction))


def retry_delay(
    attempt: int,
    *,
    permanent: bool,
    initial: float,
    maximum: float,
    rng: random.Random | None = None,
) -> float:
    """Delay before retry `attempt` (0-based): U(0.5, 1) * min(max, initial * 2**n).

    Permanent errors need a human, so they are retried only every `maximum`.
    """
    if permanent:
        return maximum
    base = min(maximum, initial * float(2 ** min(attempt, 62)))
    return (rng or random).uniform(0.5, 1.0) * base
