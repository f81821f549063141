"""Alerts that fire, repeat, escalate and resolve once: a pure state machine and its manager."""

from __future__ import annotations

import collections
import dataclasses
import os
import socket
import threading
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, cast

from credfresh.alerts.sinks import Logger, Sink, SinkError, build_sinks
from credfresh.config.model import AlertSettings, format_duration
from credfresh.credentials import format_time
from credfresh.observe.logs import Redactor

Kind = Literal["sts_error", "expiring", "expired", "config_rejected", "write_failed"]
Status = Literal["firing", "resolved"]
Severity = Literal["warning", "critical"]
Transition = Literal["fired", "repeated", "escalated", "resolved"]
Key = tuple[Kind, str | None]

KINDS: Final[tuple[Kind, ...]] = (
    "sts_error",
    "expiring",
    "expired",
    "config_rejected",
    "write_failed",
)
PROFILE_KINDS: Final[tuple[Kind, ...]] = ("sts_error", "expiring", "expired")
GLOBAL_KINDS: Final[tuple[Kind, ...]] = ("config_rejected", "write_failed")
STATE_VERSION: Final = 1
#: Bounds that keep one alert a chat line, whatever an error message holds.
MAX_MESSAGE_CHARS: Final = 500
MAX_TEXT_CHARS: Final = 1000
#: Events waiting for the sink worker; past this the oldest is dropped (and logged).
DEFAULT_QUEUE_SIZE: Final = 256
#: How much of a failed command's stderr reaches the log.

_ICONS: Final[Mapping[str, str]] = types.MappingProxyType(
    {"warning": ":warning:", "critical": ":rotating_light:", "resolved": ":white_check_mark:"}
)


# --------------------------------------------------------------------------------------------
# The pure state machine: plain data in, plain data out, `now` always passed in.
#
# One alert per (kind, profile), id `host:kind:profile` (`-` for none). Lifecycle: pending ->
# fired -> repeated every `repeat` (and for sts_error: escalated once, same id, to critical
# when the credentials on disk expire) -> resolved once. Per profile:
# - sts_error, the cause: from the first failed refresh until the next success. Fires on a
#   permanent error, once a transient one has lasted `after`, or at once when the profile is
#   overdue (see `alert_from`). Critical when the credentials on disk have expired.
# - expiring (warning) / expired (critical), the symptom with no known cause: a refresh
#   should have happened and has not (a stalled scheduler, a lost job, a write that does not
#   land). `expiring` fires from `alert_from`, `expired` once the credentials on disk have
#   expired. A healthy daemon never reaches `alert_from`, whatever the lifetime.
# Every profile alert resolves only when new credentials are on disk (or the profile is
# removed): a more severe alert of the profile (expired over expiring, sts_error over both)
# COVERS a firing one, which then stays open but silent and resolves with it. So a
# "resolved" always means the fix is in the credentials file. No credentials on disk (None)
# starts nothing and resolves nothing.
# Global: config_rejected (fires at once; resolved by a reload that leaves a valid config in
# force) and write_failed (permanent at once, transient after `after`; resolved by a write).
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Policy:
    """The timing rules and the host name every alert id carries."""

    host: str
    after: timedelta = timedelta(minutes=5)
    expiry_warning: timedelta = timedelta(minutes=10)
    repeat: timedelta = timedelta(hours=1)

    @classmethod
    def from_settings(cls, settings: AlertSettings, host: str) -> Policy:
        return cls(
            host=host,
            after=timedelta(seconds=settings.after),
            expiry_warning=timedelta(seconds=settings.expiry_warning),
            repeat=timedelta(seconds=settings.repeat),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class ProfileFacts:
    """What `tick` needs to know of one configured profile: its role and what is on disk.

    `refresh_at` is the refresh point of the credentials on disk, as the refresh rule
    computes it (None: unknown, then the warning window alone decides); `grace` is how late
    a healthy daemon may land a refresh past that point (its wake-up interval, the retry
    delay it is in, the STS call's timeouts).
    """

    role_arn: str | None = None
    expires_at: datetime | None = None
    refresh_at: datetime | None = None
    grace: timedelta = timedelta(0)


def alert_from(
    expires_at: datetime, refresh_at: datetime | None, grace: timedelta, warning: timedelta
) -> datetime:
    """Pure: from when credentials on disk that were not refreshed alert.

    Past the refresh point by more than `grace` AND within `warning` of expiring, so the
    warning window can never open before the refresh point (a 15-minute credential, due at
    7.5 minutes left, does not alert at 10 minutes left). Never later than the expiry:
    credentials on disk that expired unrefreshed always alert.
    """
    start = expires_at - warning
    if refresh_at is not None:
        start = max(start, refresh_at + max(grace, timedelta(0)))
    return min(start, expires_at)


@dataclasses.dataclass(frozen=True, slots=True)
class Alert:
    """One alert's state: pending (`firing` False) until its rule says fire, then firing.

    Resolving removes the alert, so a record exists only while its condition lasts.
    """

    kind: Kind
    profile: str | None
    since: datetime
    firing: bool = False
    severity: Severity = "warning"
    last_sent: datetime | None = None
    permanent: bool = False
    role_arn: str | None = None
    error_code: str | None = None
    message: str | None = None
    hint: str | None = None
    expires_at: datetime | None = None
    #: sts_error only: from when it fires early because the profile is overdue.
    overdue_at: datetime | None = None

    @property
    def key(self) -> Key:
        return (self.kind, self.profile)

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "profile": self.profile,
            "since": self.since.isoformat(),
            "firing": self.firing,
            "severity": self.severity,
            "last_sent": _iso_or_none(self.last_sent),
            "permanent": self.permanent,
            "role_arn": self.role_arn,
            "error_code": self.error_code,
            "message": self.message,
            "hint": self.hint,
            "expires_at": _iso_or_none(self.expires_at),
            "overdue_at": _iso_or_none(self.overdue_at),
        }

    @classmethod
    def from_dict(cls, data: object) -> Alert:
        """Rebuild a record from `to_dict`; ValueError names the first field that is wrong."""
        if not isinstance(data, Mapping):
            raise ValueError(f"alert: expected a mapping (got {type(data).__name__})")
        kind = data.get("kind")
        if kind not in KINDS:
            raise ValueError(f"alert.kind: expected one of {', '.join(KINDS)} (got {kind!r})")
        severity = data.get("severity", "warning")
        if severity not in ("warning", "critical"):
            raise ValueError(f"alert.severity: expected warning or critical (got {severity!r})")
        since = _read_time(data, "since")
        if since is None:
            raise ValueError("alert.since: required")
        return cls(
            kind=cast(Kind, kind),
            profile=_read_str(data, "profile"),
            since=since,
            firing=_read_bool(data, "firing"),
            severity=cast(Severity, severity),
            last_sent=_read_time(data, "last_sent"),
            permanent=_read_bool(data, "permanent"),
            role_arn=_read_str(data, "role_arn"),
            error_code=_read_str(data, "error_code"),
            message=_read_str(data, "message"),
            hint=_read_str(data, "hint"),
            expires_at=_read_time(data, "expires_at"),
            overdue_at=_read_time(data, "overdue_at"),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class AlertState:
    """Every live alert by (kind, profile); immutable, so a transition returns a new one."""

    alerts: Mapping[Key, Alert] = dataclasses.field(
        default_factory=lambda: types.MappingProxyType({})
    )

    def get(self, kind: Kind, profile: str | None = None) -> Alert | None:
        return self.alerts.get((kind, profile))

    def firing_count(self) -> int:
        return sum(1 for alert in self.alerts.values() if alert.firing)

    def to_dict(self) -> dict[str, object]:
        """JSON-safe, for the daemon's state file: a restart neither re-fires nor forgets."""
        ordered = sorted(self.alerts.values(), key=lambda a: (a.kind, a.profile or ""))
        return {"version": STATE_VERSION, "alerts": [alert.to_dict() for alert in ordered]}

    @classmethod
    def from_dict(cls, data: object) -> AlertState:
        """Rebuild from `to_dict`; ValueError says what is wrong (callers start empty then)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"alert state: expected a mapping (got {type(data).__name__})")
        if data.get("version") != STATE_VERSION:
            raise ValueError(
                f"alert state.version: expected {STATE_VERSION} (got {data.get('version')!r})"
            )
        items = data.get("alerts")
        if not isinstance(items, list):
            raise ValueError("alert state.alerts: expected a list")
        alerts = [Alert.from_dict(item) for item in items]
        return cls(types.MappingProxyType({alert.key: alert for alert in alerts}))


@dataclasses.dataclass(frozen=True, slots=True)
class AlertEvent:
    """One message for the sinks: an alert fired, repeated, escalated or resolved."""

    alert_id: str
    alert: Kind
    status: Status
    severity: Severity
    transition: Transition
    profile: str | None
    role_arn: str | None
    error_code: str | None
    message: str | None
    hint: str | None
    expires_at: datetime | None
    host: str
    time: datetime
    text: str

    def to_json(self) -> dict[str, object]:
        return {
            "alert_id": self.alert_id,
            "alert": self.alert,
            "status": self.status,
            "severity": self.severity,
            "transition": self.transition,
            "profile": self.profile,
            "role_arn": self.role_arn,
            "error_code": self.error_code,
            "message": self.message,
            "hint": self.hint,
            "expires_at": _time_or_none(self.expires_at),
            "host": self.host,
            "time": format_time(self.time),
            "text": self.text,
        }

    def redacted(self, redactor: Redactor) -> AlertEvent:
        """Every string through the redactor: no secret reaches a webhook or a command."""

        def clean(value: str | None) -> str | None:
            return None if value is None else redactor.text(value)

        return dataclasses.replace(
            self,
            alert_id=redactor.text(self.alert_id),
            profile=clean(self.profile),
            role_arn=clean(self.role_arn),
            error_code=clean(self.error_code),
            message=clean(self.message),
            hint=clean(self.hint),
            host=redactor.text(self.host),
            text=redactor.text(self.text),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Step:
    """A transition's result: the next state and the events it produced, in order."""

    state: AlertState
    events: tuple[AlertEvent, ...] = ()


def alert_id(host: str, kind: Kind, profile: str | None) -> str:
    return f"{host}:{kind}:{profile or '-'}"


class _Draft:
    """A working copy for one transition, so the public functions stay pure."""

    def __init__(self, state: AlertState, policy: Policy, now: datetime) -> None:
        self.alerts = dict(state.alerts)
        self.policy = policy
        self.now = now
        self.events: list[AlertEvent] = []

    def get(self, kind: Kind, profile: str | None) -> Alert | None:
        return self.alerts.get((kind, profile))

    def put(self, alert: Alert) -> None:
        self.alerts[alert.key] = alert

    def evaluate(self, alert: Alert) -> None:
        """Store `alert` after firing, escalating or repeating it if its rule says so now."""
        now, policy = self.now, self.policy
        if not alert.firing:
            if _should_fire(alert, policy, now):
                severity: Severity = "critical" if _critical(alert, now) else "warning"
                alert = dataclasses.replace(alert, firing=True, severity=severity)
                alert = self._send(alert, "fired")
        elif alert.severity == "warning" and _critical(alert, now):
            alert = self._send(dataclasses.replace(alert, severity="critical"), "escalated")
        elif alert.last_sent is None or now - alert.last_sent >= policy.repeat:
            alert = self._send(alert, "repeated")
        self.put(alert)

    def resolve(
        self, kind: Kind, profile: str | None, why: str, expires_at: datetime | None = None
    ) -> None:
        """Drop the alert; only one that was sent as firing is announced as resolved."""
        alert = self.alerts.pop((kind, profile), None)
        if alert is None or not alert.firing:
            return
        final = dataclasses.replace(
            alert, message=why, hint=None, expires_at=expires_at or alert.expires_at
        )
        self.events.append(_event(final, self.policy, self.now, "resolved", "resolved"))

    def _send(self, alert: Alert, transition: Transition) -> Alert:
        alert = dataclasses.replace(alert, last_sent=self.now)
        self.events.append(_event(alert, self.policy, self.now, "firing", transition))
        return alert

    def step(self) -> Step:
        return Step(AlertState(types.MappingProxyType(self.alerts)), tuple(self.events))


def _should_fire(alert: Alert, policy: Policy, now: datetime) -> bool:
    """The firing rule per kind: expiry and config alerts exist only while they should fire."""
    if alert.kind not in ("sts_error", "write_failed"):
        return True
    if alert.permanent or now - alert.since >= policy.after:
        return True
    if alert.kind != "sts_error" or alert.expires_at is None:
        return False
    overdue_at = alert.overdue_at or alert_from(
        alert.expires_at, None, timedelta(0), policy.expiry_warning
    )
    return now >= overdue_at


def _critical(alert: Alert, now: datetime) -> bool:
    """Critical means consumers are broken now: the credentials on disk have expired."""
    if alert.kind == "expired":
        return True
    return alert.kind == "sts_error" and alert.expires_at is not None and alert.expires_at <= now


def _failure(
    draft: _Draft,
    kind: Kind,
    profile: str | None,
    *,
    permanent: bool,
    role_arn: str | None,
    code: str | None,
    message: str,
    hint: str | None,
    expires_at: datetime | None,
) -> Alert:
    old = draft.get(kind, profile)
    details: dict[str, Any] = {
        "permanent": permanent,
        "error_code": code,
        "message": _bounded(message),
        "hint": _bounded(hint) if hint else None,
    }
    if role_arn is not None:
        details["role_arn"] = role_arn
    if expires_at is not None:
        details["expires_at"] = expires_at
    if old is None:
        return Alert(kind=kind, profile=profile, since=draft.now, **details)
    return dataclasses.replace(old, **details)


def on_refresh_failed(
    state: AlertState,
    policy: Policy,
    *,
    profile: str,
    role_arn: str | None,
    code: str,
    message: str,
    hint: str | None,
    permanent: bool,
    now: datetime,
    expires_at: datetime | None = None,
    refresh_at: datetime | None = None,
    grace: timedelta = timedelta(0),
) -> Step:
    """A refresh of `profile` failed: start its sts_error alert, or update and re-check it.

    Fires at once for a permanent error, once a transient one has lasted `after`, or as soon
    as the profile is overdue: the credentials on disk (`expires_at`, due at `refresh_at`)
    have reached `alert_from`. Details are updated in place; the next repeat carries them.
    A firing `expiring` or `expired` stays open, covered by it, until the fix is on disk.
    """
    draft = _Draft(state, policy, now)
    alert = _failure(
        draft,
        "sts_error",
        profile,
        permanent=permanent,
        role_arn=role_arn,
        code=code,
        message=message,
        hint=hint,
        expires_at=expires_at,
    )
    if expires_at is not None:
        overdue_at = alert_from(expires_at, refresh_at, grace, policy.expiry_warning)
        alert = dataclasses.replace(alert, overdue_at=overdue_at)
    draft.evaluate(alert)
    return draft.step()


def on_refresh_succeeded(
    state: AlertState,
    policy: Policy,
    *,
    profile: str,
    now: datetime,
    expires_at: datetime | None = None,
) -> Step:
    """New credentials for `profile` are on disk: every alert of the profile resolves, once."""
    draft = _Draft(state, policy, now)
    for kind in PROFILE_KINDS:
        draft.resolve(kind, profile, "credentials refreshed", expires_at)
    return draft.step()


def on_tick(
    state: AlertState, policy: Policy, *, now: datetime, profiles: Mapping[str, ProfileFacts]
) -> Step:
    """The periodic check (every ~30 s): `after`, expiry, escalation and repeats.

    `profiles` must hold every configured profile, with what is ON DISK; alerts of profiles
    missing from it are left untouched (`on_profile_removed` drops them).
    """
    draft = _Draft(state, policy, now)
    for name in sorted(profiles):
        facts = profiles[name]
        sts = draft.get("sts_error", name)
        if sts is not None:
            overdue_at = (
                None
                if facts.expires_at is None
                else alert_from(
                    facts.expires_at, facts.refresh_at, facts.grace, policy.expiry_warning
                )
            )
            draft.evaluate(
                dataclasses.replace(
                    sts,
                    expires_at=facts.expires_at,
                    overdue_at=overdue_at,
                    role_arn=facts.role_arn or sts.role_arn,
                )
            )
        _expiry_rules(draft, name, facts)
    for kind in GLOBAL_KINDS:
        alert = draft.get(kind, None)
        if alert is not None:
            draft.evaluate(alert)
    return draft.step()


def _expiry_rules(draft: _Draft, profile: str, facts: ProfileFacts) -> None:
    """`expiring` and `expired`: a refresh should have happened and has not.

    They cover what sts_error cannot see (a stalled scheduler, a lost job, a write that
    never lands). `expiring` fires from `alert_from`, `expired` once the credentials on disk
    have expired; a firing sts_error carries the expiry itself (and escalates), so neither
    starts then. A firing one resolves only when other credentials are on disk; until then
    a more severe one covers it (it stays open and silent, no repeats).
    """
    now, expires_at = draft.now, facts.expires_at
    if expires_at is None:
        return
    for old in ("expired", "expiring"):
        stale = draft.get(old, profile)
        if stale is not None and not _same_second(stale.expires_at, expires_at):
            draft.resolve(old, profile, "credentials refreshed", expires_at)
    sts = draft.get("sts_error", profile)
    if sts is not None and sts.firing:
        return
    kind: Kind
    if now >= expires_at:
        kind = "expired"
    elif now >= alert_from(expires_at, facts.refresh_at, facts.grace, draft.policy.expiry_warning):
        kind = "expiring"
    else:
        return
    current = draft.get(kind, profile) or Alert(kind=kind, profile=profile, since=now)
    draft.evaluate(
        dataclasses.replace(
            current,
            role_arn=facts.role_arn or current.role_arn,
            expires_at=expires_at,
            message=_expiry_message(kind, expires_at, now),
        )
    )


def _same_second(a: datetime | None, b: datetime) -> bool:
    """The file keeps times to the second: a restart reads back what was held finer."""
    return a is not None and abs(a - b) < timedelta(seconds=1)


def _expiry_message(kind: Kind, expires_at: datetime, now: datetime) -> str:
    if kind == "expired":
        return f"credentials expired at {format_time(expires_at)} and were not refreshed"
    left = format_duration((expires_at - now).total_seconds())
    return f"credentials expire in {left} and have not been refreshed"


def on_write_failed(
    state: AlertState,
    policy: Policy,
    *,
    code: str,
    message: str,
    now: datetime,
    permanent: bool = True,
) -> Step:
    """The credentials file could not be written; a transient failure (a lock) waits `after`."""
    draft = _Draft(state, policy, now)
    draft.evaluate(
        _failure(
            draft,
            "write_failed",
            None,
            permanent=permanent,
            role_arn=None,
            code=code,
            message=message,
            hint=None,
            expires_at=None,
        )
    )
    return draft.step()


def on_write_succeeded(state: AlertState, policy: Policy, *, now: datetime) -> Step:
    draft = _Draft(state, policy, now)
    draft.resolve("write_failed", None, "the credentials file was written")
    return draft.step()


def on_config_rejected(
    state: AlertState, policy: Policy, *, errors: Sequence[str], now: datetime
) -> Step:
    """A reload was refused (the old config stays in force): a human must fix the file."""
    draft = _Draft(state, policy, now)
    message = "; ".join(errors) or "the config was rejected"
    draft.evaluate(
        _failure(
            draft,
            "config_rejected",
            None,
            permanent=True,
            role_arn=None,
            code="config_invalid",
            message=f"{len(errors)} problem(s): {message}",
            hint="run `credfresh validate` on the config file",
            expires_at=None,
        )
    )
    return draft.step()


def on_config_applied(state: AlertState, policy: Policy, *, now: datetime) -> Step:
    """A reload left a valid config in force (applied, or unchanged after a revert)."""
    draft = _Draft(state, policy, now)
    draft.resolve("config_rejected", None, "a valid config is in force")
    return draft.step()


def on_profile_removed(state: AlertState, policy: Policy, *, profile: str, now: datetime) -> Step:
    """The profile left the config: its alerts resolve, since nothing will ever clear them."""
    draft = _Draft(state, policy, now)
    for kind in PROFILE_KINDS:
        draft.resolve(kind, profile, "profile removed from the config")
    return draft.step()


def _event(
    alert: Alert, policy: Policy, now: datetime, status: Status, transition: Transition
) -> AlertEvent:
    return AlertEvent(
        alert_id=alert_id(policy.host, alert.kind, alert.profile),
        alert=alert.kind,
        status=status,
        severity=alert.severity,
        transition=transition,
        profile=alert.profile,
        role_arn=alert.role_arn,
        error_code=alert.error_code,
        message=alert.message,
        hint=alert.hint,
        expires_at=alert.expires_at,
        host=policy.host,
        time=now,
        text=render_text(alert, policy.host, now, status, transition),
    )


def render_text(
    alert: Alert, host: str, now: datetime, status: Status, transition: Transition
) -> str:
    """One Slack-renderable line: icon, host, profile, kind, code, message, hint, expiry."""
    icon = _ICONS["resolved" if status == "resolved" else alert.severity]
    head = f"{icon} credfresh on {host}: "
    head += f"{alert.profile} {alert.kind}" if alert.profile else alert.kind
    if status == "resolved":
        head += " resolved"
    else:
        if alert.error_code:
            head += f" {alert.error_code}"
        if transition == "escalated":
            head += " (escalated to critical: the credentials on disk expired)"
        elif transition == "repeated":
            head += f" (still firing since {format_time(alert.since)})"
    parts = [head]
    if alert.message:
        parts.append(alert.message)
    if status == "firing":
        if alert.hint:
            parts.append(f"hint: {alert.hint}")
        if alert.expires_at is not None and alert.kind == "sts_error":
            verb = "expired" if alert.expires_at <= now else "expire"
            parts.append(f"credentials on disk {verb} at {format_time(alert.expires_at)}")
    line = " ".join(" — ".join(parts).split())
    return _slack_escape(line)[:MAX_TEXT_CHARS]


def _slack_escape(text: str) -> str:
    """Slack reads &, < and > as markup; a message quoting them must not become a link."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _bounded(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= MAX_MESSAGE_CHARS else line[: MAX_MESSAGE_CHARS - 1] + "…"


def _iso_or_none(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _time_or_none(moment: datetime | None) -> str | None:
    return None if moment is None else format_time(moment)


def _read_str(data: Mapping[str, object], name: str) -> str | None:
    value = data.get(name)
    if value is None or isinstance(value, str):
        return value
    raise ValueError(f"alert.{name}: expected a string or null (got {type(value).__name__})")


def _read_bool(data: Mapping[str, object], name: str) -> bool:
    value = data.get(name, False)
    if isinstance(value, bool):
        return value
    raise ValueError(f"alert.{name}: expected true or false (got {type(value).__name__})")


def _read_time(data: Mapping[str, object], name: str) -> datetime | None:
    value = _read_str(data, name)
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"alert.{name}: expected an ISO 8601 time (got {value!r})") from None
    if moment.tzinfo is None:
        raise ValueError(f"alert.{name}: expected a time with a UTC offset (got {value!r})")
    return moment


# --------------------------------------------------------------------------------------------


_Item = tuple[dict[str, object], tuple[Sink, ...]]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _sink_settings(settings: AlertSettings) -> tuple[object, ...]:
    return (settings.webhook_url, tuple(settings.command), settings.command_timeout)


class _Outbox:
    """A bounded queue that drops its oldest item when full, and can be closed."""

    def __init__(self, maxsize: int) -> None:
        self._items: collections.deque[_Item] = collections.deque()
        self._maxsize = max(1, maxsize)
        self._cond = threading.Condition()
        self._closed = False

    def put(self, item: _Item) -> _Item | None:
        """Queue `item`; return what was dropped for it (the item itself once closed)."""
        with self._cond:
            if self._closed:
                return item
            dropped = self._items.popleft() if len(self._items) >= self._maxsize else None
            self._items.append(item)
            self._cond.notify()
            return dropped

    def get(self) -> _Item | None:
        """The next item; None once closed and empty."""
        with self._cond:
            while not self._items and not self._closed:
                self._cond.wait()
            return self._items.popleft() if self._items else None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def clear(self) -> list[_Item]:
        with self._cond:
            items = list(self._items)
            self._items.clear()
            return items


class AlertManager:
    """Thread-safe holder of the alert state; observation methods only compute and enqueue.

    Every string that enters (error messages, config errors) and every event that leaves goes
    through the Redactor. Sinks run on one worker thread with a bounded queue, so a webhook
    that never answers or a command that hangs delays no observation. The worker starts with
    the first event to deliver. Each observation returns the events it produced (the daemon
    saves `to_dict()` into its state file when there are any).
    """

    def __init__(
        self,
        settings: AlertSettings,
        *,
        redactor: Redactor,
        logger: Logger | None = None,
        host: str | None = None,
        environ: Mapping[str, str] | None = None,
        sinks: Iterable[Sink] | None = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        state: AlertState | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        if logger is None:
            import structlog

            logger = cast(Logger, structlog.get_logger("credfresh.alerts"))
        self._log = logger
        self._clock = clock
        self._redactor = redactor
        self._environ: Mapping[str, str] = os.environ if environ is None else environ
        self._settings = settings
        self._policy = Policy.from_settings(settings, host or socket.gethostname())
        self._sinks = (
            tuple(sinks) if sinks is not None else build_sinks(settings, self._environ, redactor)
        )
        self._state = state or AlertState()
        self._lock = threading.Lock()
        self._outbox = _Outbox(queue_size)
        self._worker: threading.Thread | None = None
        self._closed = False
        self._aborted = threading.Event()
        self._retired: list[Sink] = []

    @property
    def host(self) -> str:
        return self._policy.host

    def reconfigure(self, settings: AlertSettings, sinks: Iterable[Sink] | None = None) -> None:
        """Apply reloaded alert settings: new timings now, new sinks for events from now on.

        Sinks are rebuilt only when their settings changed. Replaced sinks may still serve
        queued events, so they are closed only by `close`.
        """
        with self._lock:
            unchanged = _sink_settings(settings) == _sink_settings(self._settings)
        if sinks is None and unchanged:
            new_sinks = None
        elif sinks is not None:
            new_sinks = tuple(sinks)
        else:
            new_sinks = build_sinks(settings, self._environ, self._redactor)
        with self._lock:
            self._settings = settings
            self._policy = Policy.from_settings(settings, self._policy.host)
            if new_sinks is not None:
                self._retired.extend(self._sinks)
                self._sinks = new_sinks

    # Observations ----------------------------------------------------------------------------

    def refresh_failed(
        self,
        profile: str,
        *,
        role_arn: str | None,
        code: str,
        message: str,
        hint: str | None = None,
        permanent: bool,
        now: datetime,
        expires_at: datetime | None = None,
        refresh_at: datetime | None = None,
        grace: timedelta = timedelta(0),
    ) -> tuple[AlertEvent, ...]:
        """A refresh failed; `expires_at`/`refresh_at` are those of the credentials on disk."""
        clean = self._redactor.text
        return self._apply(
            lambda state, policy: on_refresh_failed(
                state,
                policy,
                profile=profile,
                role_arn=role_arn,
                code=clean(code),
                message=clean(message),
                hint=clean(hint) if hint else None,
                permanent=permanent,
                now=now,
                expires_at=expires_at,
                refresh_at=refresh_at,
                grace=grace,
            )
        )

    def refresh_succeeded(
        self, profile: str, now: datetime, expires_at: datetime | None = None
    ) -> tuple[AlertEvent, ...]:
        """Call once the new credentials are in the file (after the rename), never before."""
        return self._apply(
            lambda state, policy: on_refresh_succeeded(
                state, policy, profile=profile, now=now, expires_at=expires_at
            )
        )

    def tick(self, now: datetime, profiles: Mapping[str, ProfileFacts]) -> tuple[AlertEvent, ...]:
        """Every ~30 s, with facts (what is on disk) for every configured profile."""
        return self._apply(lambda state, policy: on_tick(state, policy, now=now, profiles=profiles))

    def write_failed(
        self, code: str, message: str, now: datetime, permanent: bool = True
    ) -> tuple[AlertEvent, ...]:
        clean = self._redactor.text
        return self._apply(
            lambda state, policy: on_write_failed(
                state,
                policy,
                code=clean(code),
                message=clean(message),
                now=now,
                permanent=permanent,
            )
        )

    def write_succeeded(self, now: datetime) -> tuple[AlertEvent, ...]:
        return self._apply(lambda state, policy: on_write_succeeded(state, policy, now=now))

    def config_rejected(self, errors: Sequence[str], now: datetime) -> tuple[AlertEvent, ...]:
        clean = [self._redactor.text(e) for e in errors]
        return self._apply(
            lambda state, policy: on_config_rejected(state, policy, errors=clean, now=now)
        )

    def config_applied(self, now: datetime) -> tuple[AlertEvent, ...]:
        """After any reload that leaves a valid config in force, applied or unchanged."""
        return self._apply(lambda state, policy: on_config_applied(state, policy, now=now))

    def profile_removed(self, profile: str, now: datetime | None = None) -> tuple[AlertEvent, ...]:
        when = now if now is not None else self._clock()
        return self._apply(
            lambda state, policy: on_profile_removed(state, policy, profile=profile, now=when)
        )

    # State -----------------------------------------------------------------------------------

    def firing_count(self) -> int:
        with self._lock:
            return self._state.firing_count()

    def snapshot(self) -> AlertState:
        with self._lock:
            return self._state

    def to_dict(self) -> dict[str, object]:
        return self.snapshot().to_dict()

    def load(self, data: object) -> bool:
        """Restore state saved by `to_dict`; unusable data is logged and replaced by nothing.

        None or an empty mapping (a state file from before alerts) is a clean empty state.
        """
        if data is None or (isinstance(data, Mapping) and not data):
            data = AlertState().to_dict()
        try:
            state = AlertState.from_dict(data)
        except ValueError as exc:
            self._log.warning("alert_state_discarded", error=self._redactor.text(str(exc)))
            state = AlertState()
            loaded = False
        else:
            loaded = True
        with self._lock:
            self._state = state
        return loaded

    # Delivery --------------------------------------------------------------------------------

    def _apply(self, transition: Callable[[AlertState, Policy], Step]) -> tuple[AlertEvent, ...]:
        """Transition and enqueue under one lock, so sinks see events in transition order.

        Queueing never blocks (a full queue drops its oldest item), so holding the lock for
        it is cheap; logging happens after the lock is released.
        """
        dropped: list[_Item] = []
        with self._lock:
            step = transition(self._state, self._policy)
            self._state = step.state
            events = tuple(event.redacted(self._redactor) for event in step.events)
            if self._sinks:
                for event in events:
                    lost = self._outbox.put((event.to_json(), self._sinks))
                    if lost is not None:
                        dropped.append(lost)
                if self._worker is None and not self._closed:
                    self._worker = threading.Thread(
                        target=self._run, name="credfresh-alerts", daemon=True
                    )
                    self._worker.start()
        for event in events:
            log = self._log.warning if event.status == "firing" else self._log.info
            log(
                "alert",
                alert_id=event.alert_id,
                status=event.status,
                severity=event.severity,
                transition=event.transition,
                error_code=event.error_code,
            )
        for payload, _ in dropped:
            self._log.warning("alert_dropped", alert_id=payload.get("alert_id"))
        return events

    def _run(self) -> None:
        while (item := self._outbox.get()) is not None:
            payload, sinks = item
            for sink in sinks:
                if self._aborted.is_set():
                    self._log.warning("alert_dropped", alert_id=payload.get("alert_id"))
                    continue
                self._deliver(sink, payload)

    def _deliver(self, sink: Sink, payload: Mapping[str, object]) -> None:
        alert = payload.get("alert_id")
        try:
            status = sink.send(payload)
        except SinkError as exc:
            self._log.warning(
                "alert_failed", alert_id=alert, sink=sink.name, error=self._redactor.text(str(exc))
            )
        except Exception as exc:  # a sink bug must not kill the worker
            self._log.warning(
                "alert_failed", alert_id=alert, sink=sink.name, error=type(exc).__name__
            )
        else:
            self._log.info("alert_sent", alert_id=alert, sink=sink.name, status=status)

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued within `timeout`, then drop the rest and stop the worker."""
        with self._lock:
            self._closed = True
            worker = self._worker
            sinks = (*self._sinks, *self._retired)
        self._outbox.close()
        if worker is not None:
            worker.join(timeout)
            if worker.is_alive():
                self._aborted.set()
                for payload, _ in self._outbox.clear():
                    self._log.warning("alert_dropped", alert_id=payload.get("alert_id"))
                for sink in sinks:
                    sink.abort()
                worker.join(1.0)
        if worker is None or not worker.is_alive():
            for sink in sinks:
                sink.close()
