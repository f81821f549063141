"""The refresh policy: due times, jitter and backoff as pure functions of `now`."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from credfresh import refresh
from credfresh.credentials import Credentials

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def creds(lifetime: float, issued: datetime = T0) -> Credentials:
    return Credentials(
        access_key_id="ASIAEXAMPLEEXAMPLE01",
        secret_access_key="s",
        session_token="t",
        expiration=issued + timedelta(seconds=lifetime),
        issued=issued,
    )


class TestDue:
    def test_window_is_refresh_before_for_long_sessions(self) -> None:
        """A one-hour session refreshes 20 minutes before expiry."""
        c = creds(3600)
        assert refresh.due_at(c, 1200) == c.expiration - timedelta(minutes=20)

    def test_window_is_half_life_for_short_sessions(self) -> None:
        """A 15-minute session refreshes at half-life, not constantly."""
        c = creds(900)
        assert refresh.due_at(c, 1200) == T0 + timedelta(seconds=450)

    def test_states(self) -> None:
        """Missing, fresh, due and expired follow the window."""
        c = creds(3600)
        assert refresh.state_of(T0, None, 1200) == "missing"
        assert refresh.state_of(T0 + timedelta(minutes=39), c, 1200) == "fresh"
        assert refresh.state_of(T0 + timedelta(minutes=40), c, 1200) == "due"
        assert refresh.state_of(T0 + timedelta(minutes=60), c, 1200) == "expired"

    @given(
        lifetime=st.floats(min_value=10, max_value=43200),
        before=st.floats(min_value=0, max_value=7200),
        seed=st.integers(),
    )
    def test_jitter_is_earlier_and_bounded(self, lifetime: float, before: float, seed: int) -> None:
        """Jitter moves the run time earlier by at most 10% of the window, never later."""
        c = creds(lifetime)
        window = refresh.refresh_window(c, before)
        when = refresh.jittered_due_at(c, before, random.Random(seed))
        due = refresh.due_at(c, before)
        assert when <= due
        assert (due - when).total_seconds() <= 0.1 * window + 1e-6


class TestBackoff:
    @given(
        attempt=st.integers(min_value=0, max_value=200),
        initial=st.floats(min_value=0.1, max_value=60),
        maximum=st.floats(min_value=60, max_value=3600),
        seed=st.integers(),
    )
    def test_transient_bounds(
        self, attempt: int, initial: float, maximum: float, seed: int
    ) -> None:
        """Retry n waits U(0.5, 1) * min(max, initial * 2**n)."""
        base = min(maximum, initial * 2.0 ** min(attempt, 62))
        delay = refresh.retry_delay(
            attempt, permanent=False, initial=initial, maximum=maximum, rng=random.Random(seed)
        )
        assert 0.5 * base - 1e-9 <= delay <= base + 1e-9

    def test_permanent_waits_max(self) -> None:
        """Permanent errors retry every retry.max."""
        assert refresh.retry_delay(0, permanent=True, initial=5, maximum=300) == 300
