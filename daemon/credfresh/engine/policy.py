"""When to refresh: pure decisions on plain data, with `now` always passed in."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:
    from credfresh.config.model import Config
    from credfresh.credentials import Credentials

State = Literal["fresh", "due", "expired", "missing", "conflict"]

JITTER_FRACTION: Final = 0.10
MINUTE: Final = 60.0
DEFAULT_FLOOR: Final = 20 * MINUTE
SDK_MARGIN: Final = 5 * MINUTE
UNKNOWN_LIFETIME_WINDOW: Final = 65 * MINUTE

BOTOCORE_LEGACY_WINDOW: Final = 15 * MINUTE
JAVASCRIPT_V3_WINDOW: Final = 5 * MINUTE


def botocore_window(lifetime: float) -> float:
    """botocore's new-path advisory window (PR #3760), 5 / 15 / 60 minutes by lifetime: a
    consumer sees at most credfresh's lifetime, so this is the largest window that applies.
    """
    if lifetime <= 20 * MINUTE:
        return 5 * MINUTE
    if lifetime < 90 * MINUTE:
        return 15 * MINUTE
    return 60 * MINUTE


def sdk_windows(lifetime: float) -> tuple[tuple[str, float], ...]:
    """The advisory windows of the major SDKs for credentials of `lifetime` seconds."""
    return (
        ("botocore", BOTOCORE_LEGACY_WINDOW),
        ("botocore's new refresh path", botocore_window(lifetime)),
        ("the JavaScript SDK v3", JAVASCRIPT_V3_WINDOW),
    )


def window_for_lifetime(lifetime: float, refresh_before: float | None) -> float:
    """THE refresh rule: seconds before expiry at which credentials of `lifetime` become due.

    Without `refresh_before`: min(lifetime / 2, max(20m, W(lifetime) + 5m)), W being
    botocore's new-path window, so SDKs never ask for credentials not yet replaced; with it,
    min(refresh_before, lifetime / 2). An unknown lifetime (not positive) refreshes early:
    the widest default window (65m), or `refresh_before` uncapped.
    """
    if lifetime <= 0:
        return UNKNOWN_LIFETIME_WINDOW if refresh_before is None else max(0.0, refresh_before)
    if refresh_before is None:
        return min(lifetime / 2, max(DEFAULT_FLOOR, botocore_window(lifetime) + SDK_MARGIN))
    return max(0.0, min(refresh_before, lifetime / 2))


def refresh_window(creds: Credentials, refresh_before: float | None) -> float:
    """Seconds before expiry at which these credentials are due; every caller goes here."""
    return window_for_lifetime(creds.lifetime_seconds, refresh_before)


def sdk_windows_hit(lifetime: float, refresh_before: float | None) -> list[tuple[str, float]]:
    """The SDK windows that would contain the refresh point (SDKs refresh when `left < window`)."""
    window = window_for_lifetime(lifetime, refresh_before)
    return [(sdk, seconds) for sdk, seconds in sdk_windows(lifetime) if window < seconds]


def due_at(creds: Credentials, refresh_before: float | None) -> datetime | None:
    """When these credentials are due; None for a static set, never due by time (a change
    of its source files refetches it)."""
    if creds.expiration is None:
        return None
    return creds.expiration - timedelta(seconds=refresh_window(creds, refresh_before))


def is_due(now: datetime, creds: Credentials, refresh_before: float | None) -> bool:
    due = due_at(creds, refresh_before)
    return due is not None and now >= due


def state_of(now: datetime, creds: Credentials | None, refresh_before: float | None) -> State:
    if creds is None:
        return "missing"
    if not creds.valid_at(now):
        return "expired"
    if is_due(now, creds, refresh_before):
        return "due"
    return "fresh"


def jittered_due_at(
    creds: Credentials, refresh_before: float | None, rng: random.Random | None = None
) -> datetime | None:
    """The due time moved EARLIER by up to 10% of the window, so a fleet spreads out; None
    for a static set."""
    if creds.expiration is None:
        return None
    window = refresh_window(creds, refresh_before)
    fraction = (rng or random).uniform(0.0, JITTER_FRACTION)
    return creds.expiration - timedelta(seconds=window * (1 + fraction))


def retry_delay(
    attempt: int,
    *,
    initial: float,
    maximum: float,
    permanent: bool = False,
    rng: random.Random | None = None,
) -> float:
    """THE backoff, for refreshes and writes: min(max, initial * 2**n) before retry n (0-based);
    with `rng` a U(0.5, 1) share of it (failing profiles spread out); `maximum` if permanent.
    """
    if permanent:
        return maximum
    base = min(maximum, initial * float(2 ** min(attempt, 62)))
    return base if rng is None else rng.uniform(0.5, 1.0) * base


def config_changes(old: Config, new: Config) -> dict[str, list[str]]:
    """A reload's diff: profiles added, removed, changed (another STS call) or only retimed."""
    both = set(old.profiles) & set(new.profiles)
    changed = sorted(
        n for n in both if old.profiles[n].sts_identity() != new.profiles[n].sts_identity()
    )
    return {
        "added": sorted(set(new.profiles) - set(old.profiles)),
        "removed": sorted(set(old.profiles) - set(new.profiles)),
        "changed": changed,
        "retimed": sorted(
            n for n in both if n not in changed and old.profiles[n] != new.profiles[n]
        ),
    }
