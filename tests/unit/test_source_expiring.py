"""`source_expiring`: a source that itself runs out (a Roles Anywhere certificate), judged by
the pure rules, shown by `status` and exported as a metric."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from credfresh.alerts.records import AlertState
from credfresh.alerts.rules import (
    Policy,
    ProfileFacts,
    on_profile_removed,
    on_refresh_succeeded,
    on_tick,
)
from credfresh.commands.status import HEADERS, render_table, status_rows
from credfresh.config.model import Profile, StsSettings
from credfresh.context import SystemClock
from credfresh.observe.metrics import Metrics
from credfresh.sources.classify import classify
from credfresh.sources.copy import CopySource, _failure_of, sso_cache_file, sso_session_end

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


class TestSsoSession:
    def test_the_token_cache_gives_the_session_end(self, tmp_path: Path) -> None:
        """botocore's own config reading finds the session; the cache file says when a
        login is needed again (no portal is called: no network in this test)."""
        import botocore.session

        config = tmp_path / "config"
        config.write_text(
            "[profile dev]\nsso_session = corp\nsso_account_id = 123456789012\n"
            "sso_role_name = Dev\n[sso-session corp]\nsso_region = us-east-1\n"
            "sso_start_url = https://corp.awsapps.com/start\n"
        )
        cache = sso_cache_file({"sso_session": "corp"}, tmp_path)
        assert cache is not None
        assert cache.name == hashlib.sha1(b"corp", usedforsecurity=False).hexdigest() + ".json"
        cache.parent.mkdir(parents=True)
        cache.write_text(json.dumps({"accessToken": "t", "expiresAt": "2026-12-02T12:30:00Z"}))
        source = CopySource(
            StsSettings(), credentials_file=None, clock=SystemClock(), home=tmp_path
        )
        session = botocore.session.Session(profile="dev")
        session.set_config_variable("config_file", str(config))
        source._remember_sso_cache("copied", session)
        profile = Profile(
            name="copied",
            role_arn="",
            refresh_before=None,
            role_session_name="x",
            duration_seconds=3600,
            region=None,
            source_profile="dev",
            copy=True,
        )
        assert source.source_expiry(profile) == NOW + timedelta(minutes=30)

    def test_a_refreshable_token_lasts_as_long_as_its_registration(self) -> None:
        assert sso_session_end({"expiresAt": "2026-12-02T12:30:00Z"}) == NOW + timedelta(minutes=30)
        refreshable = {
            "expiresAt": "2026-12-02T12:30:00Z",
            "refreshToken": "r",
            "registrationExpiresAt": "2027-03-01T00:00:00Z",
        }
        assert sso_session_end(refreshable) == datetime(2027, 3, 1, tzinfo=UTC)
        assert sso_session_end({"expiresAt": "garbage"}) is None

    def test_the_alert_names_the_login(self) -> None:
        facts = {
            "dev": ProfileFacts(
                source_expires_at=NOW + timedelta(minutes=5),
                source_warning=timedelta(minutes=10),
                source_kind="SSO session",
            )
        }
        (event,) = on_tick(AlertState(), POLICY, now=NOW, profiles=facts).events
        assert "SSO session ends at 2026-12-02T12:05:00Z" in event.text
        assert "aws sso login" in event.text
