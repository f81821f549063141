"""`source_expiring`: a source that itself runs out (a Roles Anywhere certificate), judged by
the pure rules, shown by `status` and exported as a metric."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from credfresh.alerts.records import AlertState
from credfresh.alerts.rules import (
    Policy,
    ProfileFacts,
    on_profile_removed,
    on_refresh_succeeded,
    on_tick,
)
from credfresh.commands.status import HEADERS, render_table, status_rows
from credfresh.observe.metrics import Metrics
from credfresh.sources.classify import classify
from credfresh.sources.copy import _failure_of

POLICY = Policy(host="web-1")
NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
WARN = timedelta(days=14)


def tick(state: AlertState, now: datetime, ends: datetime | None) -> tuple[AlertState, list[str]]:
    facts = {"host": ProfileFacts(source_expires_at=ends, source_warning=WARN)}
    step = on_tick(state, POLICY, now=now, profiles=facts)
    return step.state, [f"{e.alert}:{e.transition}:{e.severity}" for e in step.events]


class TestRules:
    def test_quiet_until_the_warning_window(self) -> None:
        state, events = tick(AlertState(), NOW, NOW + WARN + timedelta(hours=1))
        assert events == []
        assert state.alerts == {}

    def test_warns_escalates_when_it_ends_and_resolves_on_a_new_certificate(self) -> None:
        ends = NOW + timedelta(days=3)
        state, events = tick(AlertState(), NOW, ends)
        assert events == ["source_expiring:fired:warning"]
        state, events = tick(state, NOW + timedelta(minutes=30), ends)
        assert events == []
        state, events = tick(state, ends + timedelta(seconds=1), ends)
        assert events == ["source_expiring:escalated:critical"]
        renewed = ends + timedelta(days=90)
        state, events = tick(state, ends + timedelta(minutes=1), renewed)
        assert events == ["source_expiring:resolved:critical"]
        assert state.alerts == {}

    def test_a_refresh_does_not_resolve_it_but_removing_the_profile_does(self) -> None:
        state, _ = tick(AlertState(), NOW, NOW + timedelta(days=1))
        step = on_refresh_succeeded(state, POLICY, profile="host", now=NOW)
        assert step.events == ()
        assert ("source_expiring", "host") in step.state.alerts
        step = on_profile_removed(step.state, POLICY, profile="host", now=NOW)
        assert [e.transition for e in step.events] == ["resolved"]

    def test_the_text_names_the_certificate_and_the_fix(self) -> None:
        facts = {
            "host": ProfileFacts(source_expires_at=NOW + timedelta(days=2), source_warning=WARN)
        }
        step = on_tick(AlertState(), POLICY, now=NOW, profiles=facts)
        (event,) = step.events
        assert "certificate expires at 2026-12-04T12:00:00Z" in event.text
        assert "renew the certificate" in event.text


class TestShown:
    def test_status_has_a_source_expires_column(self) -> None:
        state = {"host": {"source_expires_at": "2026-12-16T12:00:00Z"}}
        rows = status_rows(NOW, {"host": ("arn:aws:iam::1:role/r", None)}, {}, set(), state)
        assert rows[0]["source_expires_at"] == "2026-12-16T12:00:00Z"
        assert "SOURCE EXPIRES" in HEADERS
        assert "2026-12-16T12:00:00Z" in render_table(rows, NOW)

    def test_metric(self) -> None:
        metrics = Metrics()
        metrics.set_source_expiries({"host": NOW})
        lines = metrics.render().decode().splitlines()
        prefix = 'credfresh_source_expiry_timestamp_seconds{profile="host"} '
        values = [float(line.removeprefix(prefix)) for line in lines if line.startswith(prefix)]
        assert values == [NOW.timestamp()]
        metrics.remove_profile("host")
        assert 'credfresh_source_expiry_timestamp_seconds{profile="host"}' not in (
            metrics.render().decode()
        )


class TestCopyFailures:
    def test_an_ended_sso_session_is_permanent(self) -> None:
        from botocore.exceptions import SSOTokenLoadError, UnauthorizedSSOTokenError

        for exc in (SSOTokenLoadError(error_msg="x"), UnauthorizedSSOTokenError()):
            failure = _failure_of(exc)
            assert (failure.code, failure.permanent) == ("sso_session_expired", True)

    def test_a_failing_process_is_transient_and_its_output_is_not_quoted(self) -> None:
        from botocore.exceptions import CredentialRetrievalError

        failure = _failure_of(
            CredentialRetrievalError(provider="custom-process", error_msg="SECRET")
        )
        assert (failure.code, failure.permanent) == ("source_failed", False)
        assert "SECRET" not in failure.message
        assert classify("copy_loop").permanent
