"""The refresh policy: due times, jitter and backoff as pure functions of `now`."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from credfresh.config.validate import refresh_point_advice
from credfresh.credentials import Credentials
from credfresh.engine import policy as refresh

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def creds(lifetime: float, issued: datetime = T0) -> Credentials:
    return Credentials(
        access_key_id="ASIAEXAMPLEEXAMPLE01",
        secret_access_key="s",
        session_token="t",
        expiration=issued + timedelta(seconds=lifetime),
        issued=issued,
    )


def expires(c: Credentials) -> datetime:
    """The expiry of a set that has one (every one built here but the static ones)."""
    assert c.expiration is not None
    return c.expiration


def jittered(c: Credentials, before: float | None, rng: random.Random) -> datetime:
    found = refresh.jittered_due_at(c, before, rng)
    assert found is not None
    return found


def due_of(c: Credentials, before: float | None) -> datetime:
    found = refresh.due_at(c, before)
    assert found is not None
    return found


class TestDue:
    def test_window_is_refresh_before_for_long_sessions(self) -> None:
        """A one-hour session refreshes 20 minutes before expiry."""
        c = creds(3600)
        assert refresh.due_at(c, 1200) == expires(c) - timedelta(minutes=20)

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
        when = jittered(c, before, random.Random(seed))
        due = due_of(c, before)
        assert when <= due
        assert (due - when).total_seconds() <= 0.1 * window + 1e-6


MIN = 60.0


class TestDefaultRefreshPoint:
    """Without refresh_before: min(lifetime / 2, max(20m, W(lifetime) + 5m))."""

    @pytest.mark.parametrize(
        ("lifetime", "window"),
        [
            (900, 7.5 * MIN),  # <= 20m band (W = 5m): half the lifetime
            (20 * MIN, 10 * MIN),  # the 20m edge is still in the 5m band
            (20 * MIN + 1, 10 * MIN + 0.5),  # just above: W = 15m, still half the lifetime
            (40 * MIN, 20 * MIN),  # 20-90m band: the 20m floor meets half the lifetime
            (3600, 20 * MIN),  # 1 h credentials refresh at 20m left, as before
            (90 * MIN - 1, 20 * MIN),  # just under the 90m edge: W = 15m
            (90 * MIN, 45 * MIN),  # the 90m edge: W = 60m, capped by half the lifetime
            (130 * MIN, 65 * MIN),  # W + 5m meets half the lifetime
            (12 * 3600, 65 * MIN),  # 12 h credentials refresh at 65m left
        ],
    )
    def test_bands_and_edges(self, lifetime: float, window: float) -> None:
        """Each lifetime band and each band edge gives the issue's refresh point."""
        c = creds(lifetime)
        assert refresh.refresh_window(c, None) == pytest.approx(window)
        assert refresh.due_at(c, None) == expires(c) - timedelta(seconds=window)

    @pytest.mark.parametrize(
        ("lifetime", "window"),
        [
            (20 * MIN, 5 * MIN),
            (20 * MIN + 1, 15 * MIN),
            (90 * MIN - 1, 15 * MIN),
            (90 * MIN, 60 * MIN),
        ],
    )
    def test_botocore_window_edges(self, lifetime: float, window: float) -> None:
        """botocore's new path: 5m up to 20m, 15m below 90m, 60m from 90m."""
        assert refresh.botocore_window(lifetime) == window

    def test_explicit_refresh_before_keeps_its_meaning(self) -> None:
        """An explicit refresh_before is min(refresh_before, lifetime / 2), whatever the band."""
        assert refresh.refresh_window(creds(12 * 3600), 600) == 600
        assert refresh.refresh_window(creds(3600), 1200) == 1200
        assert refresh.refresh_window(creds(900), 1200) == 450
        assert refresh.state_of(T0 + timedelta(hours=11, minutes=49), creds(12 * 3600), 600) == (
            "fresh"
        )

    def test_unknown_lifetime_refreshes_early(self) -> None:
        """An issue time at or after the expiry: the widest default window, or refresh_before."""
        c = creds(0)
        assert refresh.refresh_window(c, None) == 65 * MIN
        assert refresh.refresh_window(c, 600) == 600
        backwards = creds(-60)
        assert refresh.refresh_window(backwards, None) == 65 * MIN

    @given(lifetime=st.floats(min_value=900, max_value=43200))
    def test_default_clears_the_sdk_windows_it_can(self, lifetime: float) -> None:
        """The default point is never later than half the lifetime, and clears W when it can."""
        c = creds(lifetime)
        window = refresh.refresh_window(c, None)
        assert window <= c.lifetime_seconds / 2
        wanted = refresh.botocore_window(c.lifetime_seconds) + 5 * MIN
        if c.lifetime_seconds / 2 >= wanted:
            assert window >= wanted
            assert window >= 20 * MIN

    @given(lifetime=st.floats(min_value=10, max_value=43200), seed=st.integers())
    def test_default_jitter_is_earlier_and_bounded(self, lifetime: float, seed: int) -> None:
        """Jitter is unchanged: earlier by at most 10% of the default window."""
        c = creds(lifetime)
        when = jittered(c, None, random.Random(seed))
        due = due_of(c, None)
        assert when <= due
        assert (due - when).total_seconds() <= 0.1 * refresh.refresh_window(c, None) + 1e-6


class TestRefreshPointAdvice:
    """validate warns when the refresh point falls inside a major SDK's window."""

    @pytest.mark.parametrize("duration", [1800, 3600, 5340, 7200, 43200])
    def test_defaults_that_clear_every_window_are_quiet(self, duration: int) -> None:
        """Durations whose default refresh point clears every SDK window raise no warning."""
        assert refresh_point_advice(duration, None) is None

    def test_short_duration_names_botocore_and_the_fix(self) -> None:
        """15 minute credentials: inside botocore's 15m window; set duration_seconds 1800."""
        advice = refresh_point_advice(900, None)
        assert advice is not None
        key, message = advice
        assert key == "duration_seconds"
        assert "botocore (15m)" in message
        assert "set duration_seconds to at least 1800" in message

    def test_90_minute_band_names_the_new_path(self) -> None:
        """90 to 119 minute credentials refresh at half-life, inside botocore's new 60m window."""
        advice = refresh_point_advice(5400, None)
        assert advice is not None
        key, message = advice
        assert key == "duration_seconds"
        assert "botocore's new refresh path (60m)" in message
        assert "at least 7200 (or at most 5340)" in message

    def test_small_refresh_before_names_every_sdk_and_the_fix(self) -> None:
        """refresh_before 3m on 12 h credentials: inside all three windows; set it to 65m."""
        advice = refresh_point_advice(43200, 180)
        assert advice is not None
        key, message = advice
        assert key == "refresh_before"
        for sdk in ("botocore (15m)", "botocore's new refresh path (60m)", "JavaScript SDK v3"):
            assert sdk in message
        assert "set refresh_before to at least 65m or remove it" in message

    def test_refresh_before_at_the_window_edge_is_quiet(self) -> None:
        """SDKs refresh when less than their window is left: a point on the edge is clear."""
        assert refresh_point_advice(3600, 900) is None
        assert refresh_point_advice(43200, 3600) is None
        assert refresh_point_advice(43200, 3599) is not None

    @given(
        duration=st.integers(min_value=900, max_value=43200),
        before=st.one_of(st.none(), st.floats(min_value=0, max_value=43200)),
    )
    def test_warns_exactly_when_a_window_is_hit(self, duration: int, before: float | None) -> None:
        """A warning comes exactly when some SDK window holds the refresh point."""
        hit = refresh.sdk_windows_hit(duration, before)
        assert (refresh_point_advice(duration, before) is None) == (not hit)


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
