"""Alerts: the pure state machine with `now` passed in, and the manager with real sinks."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import urllib3
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import Project
from credfresh.alerts.manager import AlertManager
from credfresh.alerts.records import AlertEvent, AlertState, Step
from credfresh.alerts.rules import (
    Policy,
    ProfileFacts,
    on_config_applied,
    on_config_rejected,
    on_profile_removed,
    on_refresh_failed,
    on_refresh_succeeded,
    on_tick,
    on_write_failed,
    on_write_succeeded,
)
from credfresh.alerts.sinks import CommandSink, Sink, SinkError, WebhookSink, proxy_for
from credfresh.config.model import AlertSettings
from credfresh.observe.logs import Redactor
from support import examples
from support.daemon_runner import DaemonProcess, env_with
from support.recording import RecordingLogger
from support.waiting import wait_until

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
POLICY = Policy(host="web-1")
ARN = "arn:aws:iam::123456789012:role/app"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
TOKEN = "IQoJb3JpZ2luX2VjEKnownSessionTokenValue0123456789"


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


class Run:
    """Feeds observations to the pure functions and keeps the state and every event."""

    def __init__(self, state: AlertState | None = None) -> None:
        self.state = state or AlertState()
        self.events: list[AlertEvent] = []

    def apply(self, step: Step) -> tuple[AlertEvent, ...]:
        self.state = step.state
        self.events.extend(step.events)
        return step.events

    def fail(
        self,
        minutes: float,
        *,
        profile: str = "app",
        permanent: bool = True,
        code: str = "AccessDenied",
        expires_at: datetime | None = None,
    ) -> tuple[AlertEvent, ...]:
        return self.apply(
            on_refresh_failed(
                self.state,
                POLICY,
                profile=profile,
                role_arn=ARN,
                code=code,
                message=f"{code} happened",
                hint="check the trust policy",
                permanent=permanent,
                now=at(minutes),
                expires_at=expires_at,
            )
        )

    def succeed(self, minutes: float, profile: str = "app") -> tuple[AlertEvent, ...]:
        return self.apply(
            on_refresh_succeeded(self.state, POLICY, profile=profile, now=at(minutes))
        )

    def tick(
        self, minutes: float, expiries: dict[str, datetime | None] | None = None
    ) -> tuple[AlertEvent, ...]:
        facts = {
            name: ProfileFacts(role_arn=ARN, expires_at=exp)
            for name, exp in (expiries or {"app": None}).items()
        }
        return self.apply(on_tick(self.state, POLICY, now=at(minutes), profiles=facts))

    def restart(self) -> None:
        self.state = AlertState.from_dict(json.loads(json.dumps(self.state.to_dict())))


def kinds(events: tuple[AlertEvent, ...] | list[AlertEvent]) -> list[tuple[str, str, str]]:
    return [(e.alert, e.transition, e.severity) for e in events]


class TestStateMachine:
    def test_first_permanent_error_fires_once(self) -> None:
        """The first permanent error fires at once; the same error again sends nothing."""
        run = Run()
        assert kinds(run.fail(0)) == [("sts_error", "fired", "warning")]
        for minute in range(1, 59):
            assert run.fail(minute) == ()
            assert run.tick(minute + 0.5) == ()
        assert run.state.firing_count() == 1

    def test_transient_error_fires_only_after_the_grace_period(self) -> None:
        """A transient error stays quiet until it has lasted `after` (5 minutes)."""
        run = Run()
        assert run.fail(0, permanent=False, code="Throttling") == ()
        assert run.fail(2, permanent=False, code="Throttling") == ()
        assert run.tick(4.99) == ()
        assert kinds(run.tick(5)) == [("sts_error", "fired", "warning")]
        assert run.events[0].error_code == "Throttling"

    def test_transient_error_that_clears_never_alerts(self) -> None:
        """A transient error followed by success within `after` sends nothing at all."""
        run = Run()
        run.fail(0, permanent=False, code="Throttling")
        run.tick(3)
        assert run.succeed(4) == ()
        assert run.tick(10) == ()
        assert run.events == []
        assert run.state.alerts == {}

    def test_repeats_only_after_the_repeat_interval(self) -> None:
        """A firing alert is re-sent once per `repeat` (1 hour) and not in between."""
        run = Run()
        run.fail(0)
        sent = [run.tick(minute / 2) for minute in range(1, 121 * 2)]
        repeats = [events for events in sent if events]
        assert [kinds(e) for e in repeats] == [[("sts_error", "repeated", "warning")]] * 2
        assert [e[0].time for e in repeats] == [at(60), at(120)]
        assert "still firing" in repeats[0][0].text

    def test_escalates_to_critical_when_credentials_expire(self) -> None:
        """The same alert id is re-sent as critical once the credentials on disk expire."""
        run = Run()
        expiry = at(45)
        run.fail(0, expires_at=expiry)
        assert run.tick(30, {"app": expiry}) == ()
        assert run.tick(44.5, {"app": expiry}) == ()
        escalated = run.tick(45, {"app": expiry})
        assert kinds(escalated) == [("sts_error", "escalated", "critical")]
        assert escalated[0].alert_id == run.events[0].alert_id == "web-1:sts_error:app"
        assert ":rotating_light:" in escalated[0].text
        for minute in range(46, 104):
            assert run.tick(minute, {"app": expiry}) == ()
        assert kinds(run.tick(105, {"app": expiry})) == [("sts_error", "repeated", "critical")]

    def test_error_with_expired_credentials_fires_critical(self) -> None:
        """An error when the credentials on disk have already expired fires critical at once."""
        run = Run()
        events = run.fail(0, permanent=False, code="Throttling", expires_at=at(-1))
        assert kinds(events) == [("sts_error", "fired", "critical")]

    def test_transient_error_fires_early_when_expiry_is_near(self) -> None:
        """Waiting `after` would be too late when the credentials expire within the warning."""
        run = Run()
        events = run.fail(0, permanent=False, code="Throttling", expires_at=at(8))
        assert kinds(events) == [("sts_error", "fired", "warning")]
        assert "credentials on disk expire at" in events[0].text

    def test_transient_error_inside_the_grace_does_not_fire_early(self) -> None:
        """A throttle at the refresh point, retried within the grace, pages nobody."""
        run = Run()
        step = on_refresh_failed(
            run.state, POLICY, profile="app", role_arn=ARN, code="Throttling", message="m",
            hint=None, permanent=False, now=at(0), expires_at=at(7.5), refresh_at=at(0),
            grace=timedelta(minutes=1),
        )  # fmt: skip
        assert run.apply(step) == ()
        facts = {"app": ProfileFacts(ARN, at(7.5), refresh_at=at(0), grace=timedelta(minutes=1))}
        assert run.apply(on_tick(run.state, POLICY, now=at(0.5), profiles=facts)) == ()
        assert run.succeed(0.6) == ()

    def test_missing_credentials_do_not_escalate(self) -> None:
        """With no credentials on disk there is nothing to expire: the alert stays a warning."""
        run = Run()
        run.fail(0)
        assert run.tick(30, {"app": None}) == ()
        assert run.state.get("sts_error", "app") is not None
        assert run.state.alerts[("sts_error", "app")].severity == "warning"

    def test_resolves_exactly_once_after_recovery(self) -> None:
        """The next success resolves a firing alert once; later successes send nothing."""
        run = Run()
        run.fail(0)
        resolved = run.succeed(10)
        assert kinds(resolved) == [("sts_error", "resolved", "warning")]
        assert resolved[0].status == "resolved"
        assert resolved[0].alert_id == run.events[0].alert_id
        assert run.succeed(11) == ()
        assert run.tick(200) == ()
        assert run.state.firing_count() == 0

    def test_restart_neither_refires_nor_forgets(self) -> None:
        """Across a JSON round trip the alert stays firing quietly, repeats, resolves once."""
        run = Run()
        run.fail(0)
        run.restart()
        assert run.fail(1) == ()
        assert run.tick(59.5) == ()
        assert kinds(run.tick(60)) == [("sts_error", "repeated", "warning")]
        run.restart()
        assert kinds(run.succeed(61)) == [("sts_error", "resolved", "warning")]
        run.restart()
        assert run.succeed(62) == ()

    def test_restart_keeps_a_pending_transient_error(self) -> None:
        """A transient error that began before a restart still fires `after` its start."""
        run = Run()
        run.fail(0, permanent=False, code="Throttling")
        run.restart()
        assert run.tick(4) == ()
        assert kinds(run.tick(5)) == [("sts_error", "fired", "warning")]

    def test_expiring_then_expired_without_any_error(self) -> None:
        """With no failed refresh, `expiring` fires in the warning window, then `expired`.

        `expired` covers `expiring` (it stays open, silent); both resolve once the new
        credentials are on disk, never before.
        """
        run = Run()
        expiry: dict[str, datetime | None] = {"app": at(15)}
        assert run.tick(4.5, expiry) == ()
        assert kinds(run.tick(5, expiry)) == [("expiring", "fired", "warning")]
        assert run.tick(10, expiry) == ()
        assert kinds(run.tick(15, expiry)) == [("expired", "fired", "critical")]
        assert run.tick(5 + 61, expiry) == (), "a covered expiring never repeats"
        assert kinds(run.tick(15 + 60, expiry)) == [("expired", "repeated", "critical")]
        assert kinds(run.succeed(76)) == [
            ("expiring", "resolved", "warning"),
            ("expired", "resolved", "critical"),
        ]

    def test_sts_error_covers_expiring(self) -> None:
        """A firing sts_error covers a firing `expiring`: no resolve until the fix is on disk."""
        run = Run()
        run.tick(6, {"app": at(15)})
        assert kinds(run.fail(7)) == [("sts_error", "fired", "warning")]
        assert kinds(run.tick(16, {"app": at(15)})) == [("sts_error", "escalated", "critical")]
        assert run.state.get("expired", "app") is None
        assert kinds(run.succeed(17)) == [
            ("sts_error", "resolved", "critical"),
            ("expiring", "resolved", "warning"),
        ]

    def test_expiring_resolves_when_fresh_credentials_appear(self) -> None:
        """New credentials on disk clear `expiring` on the next tick even without a success call."""
        run = Run()
        run.tick(6, {"app": at(15)})
        events = run.tick(7, {"app": at(75)})
        assert kinds(events) == [("expiring", "resolved", "warning")]
        assert events[0].message == "credentials refreshed"

    def test_expiring_stays_while_the_same_credentials_are_on_disk(self) -> None:
        """A longer grace (a retry began) never resolves a firing `expiring`: the disk decides."""
        run = Run()
        facts = ProfileFacts(ARN, at(15), refresh_at=at(0), grace=timedelta(minutes=1))
        assert kinds(run.apply(on_tick(run.state, POLICY, now=at(6), profiles={"app": facts}))) == [
            ("expiring", "fired", "warning")
        ]
        later = dataclasses.replace(facts, grace=timedelta(minutes=10))
        assert run.apply(on_tick(run.state, POLICY, now=at(7), profiles={"app": later})) == ()
        assert run.state.get("expiring", "app") is not None

    def test_write_failed_lifecycle(self) -> None:
        """A write failure fires (a transient one after `after`) and resolves on the next write."""
        run = Run()
        step = on_write_failed(run.state, POLICY, code="write_failed", message="disk full", now=T0)
        assert kinds(run.apply(step)) == [("write_failed", "fired", "warning")]
        assert run.events[0].alert_id == "web-1:write_failed:-"
        assert run.events[0].profile is None
        assert kinds(run.apply(on_write_succeeded(run.state, POLICY, now=at(1)))) == [
            ("write_failed", "resolved", "warning")
        ]
        lock = on_write_failed(
            run.state, POLICY, code="write_failed", message="locked", now=at(2), permanent=False
        )
        assert run.apply(lock) == ()
        assert kinds(run.tick(7)) == [("write_failed", "fired", "warning")]

    def test_config_rejected_lifecycle(self) -> None:
        """A rejected reload fires once with every problem, and a valid config resolves it."""
        run = Run()
        errors = ["profiles.p.role_arn: required", "sts.timeout: expected a number"]
        events = run.apply(on_config_rejected(run.state, POLICY, errors=errors, now=T0))
        assert kinds(events) == [("config_rejected", "fired", "warning")]
        assert "profiles.p.role_arn: required" in (events[0].message or "")
        assert run.apply(on_config_rejected(run.state, POLICY, errors=errors, now=at(1))) == ()
        assert kinds(run.apply(on_config_applied(run.state, POLICY, now=at(2)))) == [
            ("config_rejected", "resolved", "warning")
        ]
        assert run.apply(on_config_applied(run.state, POLICY, now=at(3))) == ()

    def test_profile_removed_resolves_firing_and_drops_pending(self) -> None:
        """Removing a profile resolves its firing alert and silently forgets a pending one."""
        run = Run()
        run.fail(0, profile="a")
        run.fail(0, profile="b", permanent=False)
        events = run.apply(on_profile_removed(run.state, POLICY, profile="a", now=at(1)))
        assert [(e.profile, e.transition) for e in events] == [("a", "resolved")]
        assert run.apply(on_profile_removed(run.state, POLICY, profile="b", now=at(1))) == ()
        assert run.state.alerts == {}

    def test_event_json_has_every_field(self) -> None:
        """The event JSON carries the documented fields and a one-line Slack text."""
        run = Run()
        event = run.fail(0, expires_at=at(40))[0].to_json()
        assert set(event) >= {
            "alert_id", "alert", "status", "severity", "profile", "role_arn", "error_code",
            "message", "hint", "expires_at", "host", "time", "text",
        }  # fmt: skip
        assert event["time"] == "2025-03-01T12:00:00Z"
        assert event["expires_at"] == "2025-03-01T12:40:00Z"
        text = str(event["text"])
        assert text.startswith(":warning: credfresh on web-1: app sts_error AccessDenied — ")
        assert "hint: check the trust policy" in text
        assert "\n" not in text

    def test_text_escapes_slack_markup(self) -> None:
        """Angle brackets in a message cannot become Slack links or mentions."""
        step = on_refresh_failed(
            AlertState(), POLICY, profile="app", role_arn=ARN, code="X",
            message="see <!channel> & <http://evil|x>", hint=None, permanent=True, now=T0,
        )  # fmt: skip
        assert "<" not in step.events[0].text
        assert "&lt;!channel&gt; &amp;" in step.events[0].text

    @pytest.mark.parametrize(
        "data",
        [
            None,
            [],
            {"version": 2, "alerts": []},
            {"version": 1, "alerts": {}},
            {"version": 1, "alerts": [{"kind": "nope", "since": T0.isoformat()}]},
            {"version": 1, "alerts": [{"kind": "sts_error"}]},
            {"version": 1, "alerts": [{"kind": "sts_error", "since": "yesterday"}]},
            {"version": 1, "alerts": [{"kind": "sts_error", "since": "2025-01-01T00:00:00"}]},
            {"version": 1, "alerts": [{"kind": "sts_error", "since": T0.isoformat(), "firing": 1}]},
        ],
    )
    def test_from_dict_rejects_damaged_state(self, data: object) -> None:
        """Damaged saved state raises ValueError naming what is wrong, never another error."""
        with pytest.raises(ValueError, match="alert"):
            AlertState.from_dict(data)


# Property tests -----------------------------------------------------------------------------

PROFILES = ("a", "b")
ops = st.one_of(
    st.tuples(
        st.just("fail"),
        st.sampled_from(PROFILES),
        st.booleans(),
        st.sampled_from(["AccessDenied", "Throttling"]),
    ),
    st.tuples(st.just("succeed"), st.sampled_from(PROFILES)),
    st.tuples(
        st.just("tick"),
        st.one_of(st.none(), st.integers(-30, 120)),
        st.one_of(st.none(), st.integers(-30, 120)),
    ),
    st.tuples(st.just("write_failed"), st.booleans()),
    st.tuples(st.just("write_ok")),
    st.tuples(st.just("config_rejected")),
    st.tuples(st.just("config_ok")),
    st.tuples(st.just("remove"), st.sampled_from(PROFILES)),
)
timeline = st.lists(st.tuples(st.integers(0, 40 * 60), ops), max_size=40)


def play(steps: list[tuple[int, tuple[Any, ...]]], restart_at: int | None = None) -> list[Any]:
    """Run a timeline; return (events, state) per step, restarting before step `restart_at`."""
    state, now, expiry, out = AlertState(), T0, dict.fromkeys(PROFILES, T0), []
    for index, (delta, op) in enumerate(steps):
        if index == restart_at:
            state = AlertState.from_dict(json.loads(json.dumps(state.to_dict())))
        now += timedelta(seconds=delta)
        name = op[0]
        if name == "fail":
            step = on_refresh_failed(
                state, POLICY, profile=op[1], role_arn=ARN, code=op[3], message="m",
                hint=None, permanent=op[2], now=now, expires_at=expiry[op[1]],
            )  # fmt: skip
        elif name == "succeed":
            expiry[op[1]] = now + timedelta(hours=1)
            step = on_refresh_succeeded(state, POLICY, profile=op[1], now=now)
        elif name == "tick":
            for profile, offset in zip(PROFILES, op[1:], strict=True):
                if offset is not None:
                    expiry[profile] = now + timedelta(minutes=offset)
            facts = {p: ProfileFacts(ARN, expiry[p]) for p in PROFILES}
            step = on_tick(state, POLICY, now=now, profiles=facts)
        elif name == "write_failed":
            step = on_write_failed(state, POLICY, code="w", message="m", now=now, permanent=op[1])
        elif name == "write_ok":
            step = on_write_succeeded(state, POLICY, now=now)
        elif name == "config_rejected":
            step = on_config_rejected(state, POLICY, errors=["x: y"], now=now)
        elif name == "config_ok":
            step = on_config_applied(state, POLICY, now=now)
        else:
            step = on_profile_removed(state, POLICY, profile=op[1], now=now)
        state = step.state
        out.append((step.events, state))
    return out


class TestProperties:
    @settings(max_examples=examples(300), deadline=None)
    @given(timeline)
    def test_every_alert_follows_fire_repeat_resolve(
        self, steps: list[tuple[int, tuple[Any, ...]]]
    ) -> None:
        """Per id: fire, then repeats/escalation, then one resolve; repeats never come early."""
        open_since: dict[str, AlertEvent] = {}
        for events, state in play(steps):
            for event in events:
                last = open_since.get(event.alert_id)
                if event.transition == "fired":
                    assert last is None
                else:
                    assert last is not None
                if event.transition == "repeated":
                    assert last is not None
                    assert event.time - last.time >= POLICY.repeat
                if event.transition == "escalated":
                    assert last is not None
                    assert (last.severity, event.severity) == ("warning", "critical")
                if event.transition == "resolved":
                    open_since.pop(event.alert_id)
                else:
                    open_since[event.alert_id] = event
            firing = {k: a for k, a in state.alerts.items() if a.firing}
            assert set(open_since) == {f"web-1:{k}:{p or '-'}" for k, p in firing}

    @settings(max_examples=examples(300), deadline=None)
    @given(timeline)
    def test_profile_alerts_resolve_only_when_the_fix_is_on_disk(
        self, steps: list[tuple[int, tuple[Any, ...]]]
    ) -> None:
        """A profile alert resolves only at a success, a removal, or other credentials on disk.

        And at most one alert per profile speaks at a time: covered ones never repeat.
        """
        for (_, op), (events, _) in zip(steps, play(steps), strict=True):
            changed = set()
            if op[0] == "tick":
                for profile, offset in zip(PROFILES, op[1:], strict=True):
                    if offset is not None:
                        changed.add(profile)
            for event in events:
                if event.profile is None or event.transition != "resolved":
                    continue
                assert op[0] in ("succeed", "remove", "tick"), (op, event.alert_id)
                if op[0] == "tick":
                    assert event.profile in changed
                else:
                    assert op[1] == event.profile
            speaking = [e.profile for e in events if e.transition in ("repeated", "escalated")]
            for profile in PROFILES:
                assert speaking.count(profile) <= 1

    @settings(max_examples=examples(200), deadline=None)
    @given(timeline, st.integers(0, 40))
    def test_restart_changes_nothing(
        self, steps: list[tuple[int, tuple[Any, ...]]], restart_at: int
    ) -> None:
        """A save-and-restore at any point yields exactly the events of an uninterrupted run."""
        straight = [events for events, _ in play(steps)]
        restarted = [events for events, _ in play(steps, restart_at)]
        assert straight == restarted


# The manager with real sinks ----------------------------------------------------------------


class Receiver:
    """A loopback HTTP server that records requests and answers with queued statuses."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                receiver.requests.append((self.command, self.path, dict(self.headers), body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            do_POST = _handle
            do_GET = _handle

            def do_CONNECT(self) -> None:
                receiver.requests.append((self.command, self.path, dict(self.headers), b""))
                self.send_response(403)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def proxy() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def silent() -> Iterator[str]:
    """A webhook that accepts connections and never says a word."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
    stop.set()
    thread.join()
    listener.close()
    for conn in held:
        conn.close()


def dump_script(tmp_path: Path) -> Path:
    script = tmp_path / "sink.py"
    script.write_text(
        "import json, os, sys\n"
        "data = sys.stdin.read()\n"
        "with open(sys.argv[1], 'a') as out:\n"
        "    out.write(json.dumps({'stdin': data, 'env': dict(os.environ)}) + '\\n')\n"
    )
    return script


def base_env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


class TestAlertManager:
    def test_delivers_to_webhook_and_command(self, receiver: Receiver, tmp_path: Path) -> None:
        """A firing alert reaches both sinks as the same JSON, and each delivery is logged."""
        out = tmp_path / "out.jsonl"
        settings_ = AlertSettings(
            webhook_url=f"{receiver.url}/hook",
            command=(sys.executable, str(dump_script(tmp_path)), str(out)),
            command_timeout=10,
        )
        log = RecordingLogger()
        manager = AlertManager(
            settings_, redactor=Redactor(), logger=log, host="web-1", environ=base_env()
        )
        manager.refresh_failed(
            "app", role_arn=ARN, code="AccessDenied", message="denied", permanent=True, now=T0
        )
        manager.close(timeout=10)
        posted = json.loads(receiver.requests[0][3])
        piped = json.loads(json.loads(out.read_text())["stdin"])
        assert posted == piped
        assert posted["alert_id"] == "web-1:sts_error:app"
        assert posted["status"] == "firing"
        assert receiver.requests[0][2]["Content-Type"] == "application/json"
        sent = log.named("alert_sent")
        assert {(s["sink"], s["status"]) for s in sent} == {
            ("webhook", "HTTP 200"),
            ("command", "exit status 0"),
        }

    def test_observations_never_wait_for_stuck_sinks(self, silent: str) -> None:
        """With a webhook that never answers and a command that sleeps, calls return at once."""
        log = RecordingLogger()
        sinks: list[Sink] = [
            WebhookSink(silent, environ={}, timeout=1.0),
            CommandSink(
                [sys.executable, "-c", "import time; time.sleep(60)"],
                timeout=30,
                environ=base_env(),
            ),
        ]
        manager = AlertManager(
            AlertSettings(), redactor=Redactor(), logger=log, host="h", sinks=sinks
        )
        took = []
        for minute in range(0, 300, 10):
            start = time.perf_counter()
            manager.refresh_failed(
                f"p{minute}", role_arn=ARN, code="AccessDenied", message="m",
                permanent=True, now=at(minute),
            )  # fmt: skip
            manager.tick(at(minute + 61), {f"p{minute}": ProfileFacts(ARN, None)})
            manager.refresh_succeeded(f"p{minute}", at(minute + 62))
            took.append(time.perf_counter() - start)
        assert max(took) < 0.05
        assert len(log.named("alert")) == 90
        start = time.perf_counter()
        manager.close(timeout=0.2)
        assert time.perf_counter() - start < 3.0
        assert log.named("alert_dropped")

    def test_command_environment_has_no_aws_variables(self, tmp_path: Path) -> None:
        """The command runs without AWS_* variables; everything else is passed through."""
        out = tmp_path / "out.jsonl"
        environ = {
            **base_env(),
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_PROFILE": "prod",
            "aws_session_token": TOKEN,
            "KEEP_ME": "1",
        }
        sink = CommandSink(
            [sys.executable, str(dump_script(tmp_path)), str(out)], timeout=10, environ=environ
        )
        assert sink.send({"alert_id": "x"}) == "exit status 0"
        record = json.loads(out.read_text())
        assert json.loads(record["stdin"]) == {"alert_id": "x"}
        assert record["env"]["KEEP_ME"] == "1"
        assert not [name for name in record["env"] if name.upper().startswith("AWS_")]

    def test_command_failure_and_timeout_are_reported(self, tmp_path: Path) -> None:
        """A non-zero exit names its status and stderr; a hung command is killed at the timeout."""
        failing = CommandSink(
            [sys.executable, "-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"],
            timeout=10,
            environ=base_env(),
        )
        with pytest.raises(SinkError, match="exit status 3: boom"):
            failing.send({})
        hung = CommandSink(
            [sys.executable, "-c", "import time; time.sleep(60)"], timeout=0.5, environ=base_env()
        )
        start = time.perf_counter()
        with pytest.raises(SinkError, match=r"timed out after 0\.5 s"):
            hung.send({})
        assert time.perf_counter() - start < 5

    def test_secret_never_reaches_the_webhook(self, receiver: Receiver) -> None:
        """A known secret and a secret-shaped string in a message are redacted before sending."""
        redactor = Redactor()
        redactor.add(TOKEN)
        manager = AlertManager(
            AlertSettings(webhook_url=f"{receiver.url}/hook"),
            redactor=redactor,
            logger=RecordingLogger(),
            host="h",
            environ={},
        )
        manager.refresh_failed(
            "app",
            role_arn=ARN,
            code="InvalidClientTokenId",
            message=f"key {SECRET} token {TOKEN} rejected",
            hint=f"rotate {SECRET}",
            permanent=True,
            now=T0,
        )
        manager.close(timeout=10)
        body = receiver.requests[0][3].decode()
        assert SECRET not in body
        assert TOKEN not in body
        assert "[redacted]" in body
        saved = json.dumps(manager.to_dict())
        assert SECRET not in saved
        assert TOKEN not in saved

    def test_full_queue_drops_the_oldest(self) -> None:
        """When sinks fall behind, the oldest queued event is dropped with a warning."""
        release = threading.Event()
        delivered: list[object] = []

        class Blocking:
            name = "blocking"

            def send(self, payload: Any) -> str:
                release.wait(5)
                delivered.append(payload["alert_id"])
                return "ok"

            def abort(self) -> None:
                release.set()

            def close(self) -> None:
                pass

        log = RecordingLogger()
        manager = AlertManager(
            AlertSettings(),
            redactor=Redactor(),
            logger=log,
            host="h",
            sinks=[Blocking()],
            queue_size=2,
        )
        for index in range(5):
            manager.config_rejected([f"e{index}"], at(index))
            manager.config_applied(at(index + 0.5))
        wait_until(lambda: len(log.named("alert_dropped")) >= 1, 5, "alert_dropped", interval=0.01)
        release.set()
        manager.close(timeout=5)
        assert len(delivered) + len(log.named("alert_dropped")) == 10
        assert len(delivered) <= 3

    def test_state_round_trips_through_the_manager(self) -> None:
        """`to_dict` and `load` carry a firing alert across managers; garbage is discarded."""
        log = RecordingLogger()
        first = AlertManager(AlertSettings(), redactor=Redactor(), logger=log, host="h", sinks=[])
        first.refresh_failed(
            "app", role_arn=ARN, code="AccessDenied", message="m", permanent=True, now=T0
        )
        second = AlertManager(AlertSettings(), redactor=Redactor(), logger=log, host="h", sinks=[])
        assert second.load(json.loads(json.dumps(first.to_dict())))
        assert second.firing_count() == 1
        assert (
            second.refresh_failed(
                "app", role_arn=ARN, code="AccessDenied", message="m", permanent=True, now=at(1)
            )
            == ()
        )
        assert len(second.refresh_succeeded("app", at(2))) == 1
        assert second.load({}) is True
        assert not second.load({"version": 99})
        assert log.named("alert_state_discarded")

    def test_reconfigure_swaps_sinks_only_when_they_change(self, receiver: Receiver) -> None:
        """A reload with new timings keeps the sinks; a new webhook URL gets a new sink."""
        log = RecordingLogger()
        manager = AlertManager(
            AlertSettings(webhook_url=f"{receiver.url}/a"),
            redactor=Redactor(),
            logger=log,
            host="h",
            environ={},
        )
        manager.reconfigure(AlertSettings(webhook_url=f"{receiver.url}/a", repeat=60))
        manager.config_rejected(["x"], T0)
        manager.reconfigure(AlertSettings(webhook_url=f"{receiver.url}/b", repeat=60))
        manager.tick(at(1), {})
        manager.close(timeout=10)
        assert [path for _, path, _, _ in receiver.requests] == ["/a", "/b"]
        assert [r[3] and json.loads(r[3])["transition"] for r in receiver.requests] == [
            "fired",
            "repeated",
        ]


class TestWebhookSink:
    def test_retries_a_server_error(self, receiver: Receiver) -> None:
        """A 503 is retried and the delivery succeeds on the next attempt."""
        receiver.statuses = [503]
        sink = WebhookSink(f"{receiver.url}/hook", environ={})
        assert sink.send({"alert_id": "x"}) == "HTTP 200"
        assert len(receiver.requests) == 2
        sink.close()

    def test_failure_message_never_quotes_the_url(self, receiver: Receiver) -> None:
        """A Slack-style secret URL path stays out of the error text that gets logged."""
        receiver.statuses = [400]
        sink = WebhookSink(f"{receiver.url}/services/T000/B000/sekrit", environ={})
        with pytest.raises(SinkError) as info:
            sink.send({})
        assert str(info.value) == "HTTP 400"
        sink.close()
        closed = socket.create_server(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        closed.close()
        fast = urllib3.Retry(total=1, backoff_factor=0)
        sink = WebhookSink(f"http://127.0.0.1:{port}/services/sekrit", environ={}, retries=fast)
        with pytest.raises(SinkError) as info:
            sink.send({})
        assert "sekrit" not in str(info.value)
        assert str(info.value) == "connection failed"
        sink.close()

    def test_webhook_url_becomes_a_known_secret(self) -> None:
        """urllib3 logs the request path on retries, so the manager teaches it to the redactor."""
        redactor = Redactor()
        url = "https://hooks.slack.example/services/T000/B000/XXXXsekrit?token=abc12345"
        manager = AlertManager(
            AlertSettings(webhook_url=url), redactor=redactor, logger=RecordingLogger(), environ={}
        )
        line = (
            "Retrying (...) after connection broken: /services/T000/B000/XXXXsekrit?token=abc12345"
        )
        assert "sekrit" not in redactor.text(line)
        assert "abc12345" not in redactor.text(f"{url} failed")
        manager.close()

    def test_http_proxy_carries_the_request(self, proxy: Receiver) -> None:
        """With HTTP_PROXY set the POST goes to the proxy with the absolute target URL."""
        sink = WebhookSink("http://hooks.example.invalid/x", environ={"HTTP_PROXY": proxy.url})
        assert sink.proxy == proxy.url
        assert sink.send({"a": 1}) == "HTTP 200"
        method, path, _, body = proxy.requests[0]
        assert (method, path) == ("POST", "http://hooks.example.invalid/x")
        assert json.loads(body) == {"a": 1}
        sink.close()

    def test_https_proxy_gets_a_connect(self, proxy: Receiver) -> None:
        """With HTTPS_PROXY set an https webhook is tunnelled: the proxy sees CONNECT."""
        environ = {"HTTPS_PROXY": proxy.url.removeprefix("http://")}
        sink = WebhookSink("https://hooks.example.invalid/services/x", environ=environ)
        with pytest.raises(SinkError, match="proxy"):
            sink.send({})
        assert proxy.requests[0][:2] == ("CONNECT", "hooks.example.invalid:443")
        sink.close()

    def test_no_proxy_bypasses_the_proxy(self, receiver: Receiver, proxy: Receiver) -> None:
        """A host listed in NO_PROXY is reached directly; the proxy sees nothing."""
        environ = {"HTTP_PROXY": proxy.url, "NO_PROXY": "localhost,127.0.0.1"}
        sink = WebhookSink(f"{receiver.url}/hook", environ=environ)
        assert sink.proxy is None
        assert sink.send({}) == "HTTP 200"
        assert len(receiver.requests) == 1
        assert proxy.requests == []
        sink.close()

    @pytest.mark.parametrize(
        ("url", "environ", "expected"),
        [
            ("https://h.example.com/x", {}, None),
            ("https://h.example.com/x", {"HTTPS_PROXY": "p:3128"}, "http://p:3128"),
            ("https://h.example.com/x", {"HTTP_PROXY": "http://p:1"}, None),
            (
                "https://h.example.com/x",
                {"https_proxy": "http://low:1", "HTTPS_PROXY": "http://up:1"},
                "http://low:1",
            ),
            ("https://h.example.com/x", {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "*"}, None),
            (
                "https://h.example.com/x",
                {"HTTPS_PROXY": "http://p:1", "no_proxy": ".example.com"},
                None,
            ),
            (
                "https://h.example.org/x",
                {"HTTPS_PROXY": "http://p:1", "no_proxy": "example.com"},
                "http://p:1",
            ),
        ],
    )
    def test_proxy_choice_matches_botocore(
        self, url: str, environ: dict[str, str], expected: str | None
    ) -> None:
        """Proxy variables are read like botocore: scheme, case, NO_PROXY suffixes and `*`."""
        assert proxy_for(url, environ) == expected


# The daemon end to end ----------------------------------------------------------------------


class DiskCheckingWebhook:
    """A webhook that, on each `resolved` body, reads the credentials file at once.

    It keeps (body, access key id of the profile's section then, or None).
    """

    def __init__(self, credentials_file: Path, owner: str) -> None:
        from credfresh.credfile import store as credfile

        self.bodies: list[tuple[dict[str, Any], str | None]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length))
                found = None
                if body["status"] == "resolved" and body["profile"]:
                    view = credfile.read_managed(credentials_file, owner)
                    section = view.managed.get(body["profile"])
                    found = section.access_key_id if section else None
                hook.bodies.append((body, found))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def disk_hook(project: Project) -> Iterator[DiskCheckingWebhook]:
    hook = DiskCheckingWebhook(project.credentials_file, project.document["owner"])
    yield hook
    hook.close()


def run_daemon(project: Project, tmp_path: Path, wakeup: str) -> DaemonProcess:
    env = env_with(project.env, CREDFRESH_WAKEUP_INTERVAL=wakeup)
    return DaemonProcess(project.config_path, env, tmp_path / "daemon.log")


class TestDaemonAlerts:
    @pytest.mark.parametrize(
        "seconds",
        [pytest.param(20, id="reduced"), pytest.param(90, marks=pytest.mark.slow, id="full")],
    )
    def test_healthy_daemon_with_20s_credentials_sends_no_alert(
        self, project: Project, tmp_path: Path, disk_hook: DiskCheckingWebhook, seconds: int
    ) -> None:
        """Issue 16: 20 s credentials for 90 s of `credfresh run` with a webhook: zero alerts.

        The full 90 s (about eight refresh cycles per profile, each due inside
        `alerts.expiry_warning`) runs in `make torture`; `make test` runs 20 s of it.
        """
        project.sts.proxy.lifetime = 20
        project.document["alerts"] = {"webhook_url": disk_hook.url}
        project.profile("app")
        project.profile("other")
        project.write_config()
        with run_daemon(project, tmp_path, wakeup="2") as proc:
            proc.wait_event("ready", 30)
            began = time.monotonic()
            proc.wait_for(
                lambda events: (
                    time.monotonic() - began >= seconds
                    and sum(e.get("event") == "refreshed" for e in events) >= 2 * (seconds // 11)
                ),
                seconds + 60,
                f"{seconds} s and {seconds // 11} refreshes per profile",
            )
            assert proc.proc.poll() is None
            alerts = proc.named("alert")
        assert alerts == []
        assert disk_hook.bodies == []

    def test_resolved_webhook_finds_the_fix_in_the_file(
        self, project: Project, tmp_path: Path, disk_hook: DiskCheckingWebhook
    ) -> None:
        """Issue 16.2: on the `resolved` body the file already holds a section issued after
        the fault was cleared (not the one from before the fault)."""
        project.sts.proxy.lifetime = 6
        project.document["retry"] = {"initial": "1s", "max": "1s"}
        project.document["alerts"] = {"webhook_url": disk_hook.url}
        project.profile("app")
        project.write_config()
        with run_daemon(project, tmp_path, wakeup="1") as proc:
            proc.wait_event("ready", 30)
            project.sts.proxy.fail(
                "AccessDenied", when=lambda r: r.params.get("RoleSessionName") == "credfresh-app"
            )
            wait_until(
                lambda: any(b["alert"] == "sts_error" for b, _ in disk_hook.bodies),
                20,
                "the sts_error alert",
            )
            cleared = time.time()
            project.sts.proxy.clear_faults()
            wait_until(
                lambda: any(
                    b["status"] == "resolved" and b["alert"] == "sts_error"
                    for b, _ in disk_hook.bodies
                ),
                20,
                "the sts_error alert resolved",
            )
        resolved = [
            found
            for body, found in disk_hook.bodies
            if body["status"] == "resolved" and body["alert"] == "sts_error"
        ]
        assert len(resolved) == 1
        found = resolved[0]
        assert found is not None, "no section in the file when the page said resolved"
        issued = project.sts.proxy.issued_for(found)
        assert issued is not None
        assert issued.issued_at >= cleared, "the file still held credentials from before the fix"
        assert {body["alert"] for body, _ in disk_hook.bodies} == {"sts_error"}
