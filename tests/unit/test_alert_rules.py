"""The alert rules over whole credential lifetimes, on the pure state machine, `now` passed in.

The refresh point is an input (the engine computes it with refresh.py), so each lifetime is
played under two refresh rules: half the lifetime capped at 20 minutes, and the
lifetime-banded default (min(lifetime/2, max(20m, W + 5m))). A healthy daemon lands each
refresh at most its grace past the refresh point and must never be paged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from credfresh.alerts.records import AlertEvent, AlertState
from credfresh.alerts.rules import (
    Policy,
    ProfileFacts,
    alert_from,
    on_refresh_failed,
    on_refresh_succeeded,
    on_tick,
)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
POLICY = Policy(host="web-1")  # after 5m, expiry_warning 10m, repeat 1h
ARN = "arn:aws:iam::123456789012:role/app"
MIN = 60.0


def half_capped(lifetime: float) -> float:
    return min(20 * MIN, lifetime / 2)


def banded(lifetime: float) -> float:
    band = 5 * MIN if lifetime <= 20 * MIN else 15 * MIN if lifetime < 90 * MIN else 60 * MIN
    return min(lifetime / 2, max(20 * MIN, band + 5 * MIN))


RULES: dict[str, Callable[[float], float]] = {"half-capped": half_capped, "banded": banded}


@dataclass(frozen=True)
class Case:
    """A lifetime with the daemon settings that go with it."""

    lifetime: float
    wakeup: float
    sts_timeout: float

    @property
    def grace(self) -> timedelta:
        """The engine's grace for a profile in no retry: wake-up plus connect+read timeouts."""
        return timedelta(seconds=self.wakeup + 2 * self.sts_timeout)

    @property
    def tick(self) -> timedelta:
        return timedelta(seconds=min(self.wakeup, 30.0))


CASES = {
    "60s": Case(60, wakeup=6, sts_timeout=5),  # the demo's settings
    "15m": Case(15 * MIN, wakeup=30, sts_timeout=10),
    "1h": Case(60 * MIN, wakeup=30, sts_timeout=10),
    "12h": Case(12 * 60 * MIN, wakeup=30, sts_timeout=10),
}


class Life:
    """One profile's credentials on disk over time, driven through the pure functions."""

    def __init__(self, case: Case, window: Callable[[float], float]) -> None:
        self.case = case
        self.window = window
        self.state = AlertState()
        self.now = T0
        self.expires_at = T0 + timedelta(seconds=case.lifetime)
        self.events: list[tuple[datetime, AlertEvent]] = []

    @property
    def refresh_at(self) -> datetime:
        return self.expires_at - timedelta(seconds=self.window(self.case.lifetime))

    def facts(self) -> dict[str, ProfileFacts]:
        return {
            "app": ProfileFacts(
                ARN, self.expires_at, refresh_at=self.refresh_at, grace=self.case.grace
            )
        }

    def _keep(self, events: tuple[AlertEvent, ...]) -> None:
        self.events.extend((self.now, event) for event in events)

    def run_until(self, until: datetime) -> None:
        """Tick every wake-up interval up to `until` (inclusive of its last step)."""
        while self.now + self.case.tick <= until:
            self.now += self.case.tick
            step = on_tick(self.state, POLICY, now=self.now, profiles=self.facts())
            self.state = step.state
            self._keep(step.events)
        self.now = until

    def land(self) -> None:
        """A refresh lands on disk now: new credentials for a whole lifetime."""
        self.expires_at = self.now + timedelta(seconds=self.case.lifetime)
        step = on_refresh_succeeded(
            self.state, POLICY, profile="app", now=self.now, expires_at=self.expires_at
        )
        self.state = step.state
        self._keep(step.events)

    def fail_transiently(self) -> None:
        step = on_refresh_failed(
            self.state, POLICY, profile="app", role_arn=ARN, code="Throttling",
            message="Rate exceeded", hint=None, permanent=False, now=self.now,
            expires_at=self.expires_at, refresh_at=self.refresh_at, grace=self.case.grace,
        )  # fmt: skip
        self.state = step.state
        self._keep(step.events)

    def transitions(self) -> list[tuple[str, str, str]]:
        return [(e.alert, e.transition, e.severity) for _, e in self.events]


PARAMS = [
    pytest.param(case, rule, id=f"{name}-{rule_name}")
    for name, case in CASES.items()
    for rule_name, rule in RULES.items()
]


@pytest.mark.parametrize(("case", "rule"), PARAMS)
class TestWholeLifetimes:
    def test_three_healthy_cycles_on_time_produce_nothing(
        self, case: Case, rule: Callable[[float], float]
    ) -> None:
        """Refreshes that land at the refresh point: zero transitions."""
        life = Life(case, rule)
        for _ in range(3):
            life.run_until(life.refresh_at)
            life.land()
        life.run_until(life.refresh_at)
        assert life.transitions() == []

    def test_three_healthy_cycles_at_the_edge_of_the_grace_produce_nothing(
        self, case: Case, rule: Callable[[float], float]
    ) -> None:
        """The latest a healthy daemon lands (just inside its grace), and a throttle retried
        on the way: still zero transitions."""
        life = Life(case, rule)
        for _ in range(3):
            life.run_until(life.refresh_at)
            life.fail_transiently()
            life.run_until(life.refresh_at + case.grace * 0.95)
            life.land()
        assert life.transitions() == []

    def test_a_refresh_that_stops_fires_expiring_then_expired_then_resolves_on_landing(
        self, case: Case, rule: Callable[[float], float]
    ) -> None:
        """One healthy cycle, then no refresh: `expiring` once (warning) from `alert_from`,
        `expired` once (critical) at the expiry, and nothing resolves until a refresh lands;
        then each of the two resolves exactly once."""
        life = Life(case, rule)
        life.run_until(life.refresh_at)
        life.land()
        start = alert_from(life.expires_at, life.refresh_at, case.grace, POLICY.expiry_warning)
        assert start > life.refresh_at + case.grace * 0.95
        life.run_until(start - timedelta(seconds=1))
        assert life.transitions() == []
        expired_at = life.expires_at
        life.run_until(expired_at + min(timedelta(seconds=case.lifetime / 4), POLICY.repeat / 2))
        assert life.transitions() == [
            ("expiring", "fired", "warning"),
            ("expired", "fired", "critical"),
        ]
        fired = {e.alert: when for when, e in life.events}
        assert start <= fired["expiring"] < start + case.tick
        assert expired_at <= fired["expired"] < expired_at + case.tick
        landed_at = life.now
        life.land()
        life.run_until(life.refresh_at)
        assert life.transitions()[2:] == [
            ("expiring", "resolved", "warning"),
            ("expired", "resolved", "critical"),
        ]
        assert all(when == landed_at for when, e in life.events if e.status == "resolved")


def test_the_old_rule_paged_a_healthy_daemon() -> None:
    """Without the refresh point (the rule before issue 16), 15-minute credentials due at
    7.5 minutes left alert on every healthy cycle: what the tests above rule out."""
    case = CASES["15m"]
    life = Life(case, half_capped)
    noisy = 0
    for _ in range(3):
        while life.now + case.tick <= life.refresh_at:
            life.now += case.tick
            facts = {"app": ProfileFacts(ARN, life.expires_at)}
            step = on_tick(life.state, POLICY, now=life.now, profiles=facts)
            life.state = step.state
            noisy += len(step.events)
        life.land()
    assert noisy == 3


def test_alert_from_never_opens_before_the_refresh_point() -> None:
    """The warning window is clamped to the refresh point plus the grace, never past expiry."""
    expiry = T0 + timedelta(hours=1)
    warning = timedelta(minutes=10)
    grace = timedelta(seconds=50)
    assert alert_from(expiry, expiry - timedelta(minutes=20), grace, warning) == expiry - warning
    late = expiry - timedelta(minutes=5)
    assert alert_from(expiry, late, grace, warning) == late + grace
    assert alert_from(expiry, expiry - timedelta(seconds=10), grace, warning) == expiry
    assert alert_from(expiry, None, grace, warning) == expiry - warning
