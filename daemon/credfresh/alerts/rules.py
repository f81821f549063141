"""The alert rules: a pure state machine, plain data in and out, `now` always passed in."""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final

from credfresh.alerts.records import (
    GLOBAL_KINDS,
    PROFILE_KINDS,
    Alert,
    AlertEvent,
    AlertState,
    Kind,
    Severity,
    Status,
    Step,
    Transition,
    alert_id,
)
from credfresh.config.model import AlertSettings, format_duration
from credfresh.credentials import format_time

#: Bounds that keep one alert a chat line, whatever an error message holds.
MAX_MESSAGE_CHARS: Final = 500
MAX_TEXT_CHARS: Final = 1000

_ICONS: Final[Mapping[str, str]] = types.MappingProxyType(
    {"warning": ":warning:", "critical": ":rotating_light:", "resolved": ":white_check_mark:"}
)


# One alert per (kind, profile), id `host:kind:profile`: pending -> fired -> repeated every
# `repeat` (sts_error escalates once, same id, to critical when the credentials on disk
# expire) -> resolved once. Per profile: sts_error (the cause, until the next success) and
# expiring/expired (the symptom: a refresh that should have happened has not). A profile's
# alerts resolve only when new credentials are on disk (or it is removed); until then a more
# severe one COVERS a firing one, which stays open and silent. So "resolved" always means the
# fix is in the file. Global: config_rejected and write_failed.


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
    """What `tick` needs of one configured profile: its role and what is on disk.

    `refresh_at`: the refresh point of those credentials (None: the warning window alone
    decides); `grace`: how late past it a healthy daemon may land a refresh.
    """

    role_arn: str | None = None
    expires_at: datetime | None = None
    refresh_at: datetime | None = None
    static: bool = False  # a set that never expires is on disk: no expiry alert applies
    grace: timedelta = timedelta(0)
    #: When the profile's source itself ends (a Roles Anywhere certificate), and how long
    #: before that `source_expiring` warns; None: the source does not run out.
    source_expires_at: datetime | None = None
    source_warning: timedelta = timedelta(0)
    source_kind: str = "certificate"  # or "SSO session": what the message names


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
    """Critical means consumers are broken now: the credentials on disk have expired (or,
    for `source_expiring`, the source has: no refresh can succeed)."""
    if alert.kind == "expired":
        return True
    if alert.kind == "source_expiring":
        return alert.expires_at is not None and alert.expires_at <= now
    return alert.kind == "sts_error" and alert.expires_at is not None and alert.expires_at <= now


def _failure(draft: _Draft, kind: Kind, profile: str | None, message: str, **details: Any) -> Alert:
    """Start the alert, or update the open one in place (the next repeat carries it)."""
    hint = details.pop("hint", None)
    details = {key: value for key, value in details.items() if value is not None}
    details |= {"message": _bounded(message), "hint": _bounded(hint) if hint else None}
    old = draft.get(kind, profile)
    if old is None:
        return Alert(kind=kind, profile=profile, since=draft.now, **details)
    return dataclasses.replace(old, **details)


def on_refresh_failed(  # noqa: PLR0913  the facts of one failure, each named by the caller
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
        message,
        hint=hint,
        permanent=permanent,
        error_code=code,
        role_arn=role_arn,
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
    """The periodic check (every ~30 s): `after`, expiry, escalation and repeats; `profiles`
    holds every configured one with what is ON DISK (others are `on_profile_removed`'s)."""
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
        _source_rules(draft, name, facts)
    for kind in GLOBAL_KINDS:
        alert = draft.get(kind, None)
        if alert is not None:
            draft.evaluate(alert)
    return draft.step()


def _expiry_rules(draft: _Draft, profile: str, facts: ProfileFacts) -> None:
    """`expiring` (from `alert_from`) and `expired`: what sts_error cannot see (a stalled
    scheduler, a lost job, a write that never lands). A firing sts_error carries the expiry
    itself, so neither starts then; each resolves only when other credentials are on disk."""
    now, expires_at = draft.now, facts.expires_at
    if expires_at is None and not facts.static:
        return
    for old in ("expired", "expiring"):
        stale = draft.get(old, profile)
        if stale is not None and not _same_second(stale.expires_at, expires_at):
            draft.resolve(old, profile, "credentials refreshed", expires_at)
    if expires_at is None:
        return
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


#: What `source_expiring` says of each kind of source: (ends, ended, the fix).
_SOURCE_WORDS: Final[Mapping[str, tuple[str, str, str]]] = {
    "certificate": (
        "expires",
        "expired",
        "renew the certificate; credfresh re-reads its files when they change",
    ),
    "SSO session": ("ends", "ended", "run aws sso login for the profile's sso_session"),
}


def _source_rules(draft: _Draft, profile: str, facts: ProfileFacts) -> None:
    """`source_expiring`: warning within `source_warning` of the source's end, critical
    past it; resolved when another source expiry is seen (a renewed certificate)."""
    now, ends = draft.now, facts.source_expires_at
    old = draft.get("source_expiring", profile)
    if old is not None and (ends is None or not _same_second(old.expires_at, ends)):
        draft.resolve("source_expiring", profile, "a renewed source is in use", ends)
    if ends is None or now < ends - facts.source_warning:
        return
    current = draft.get("source_expiring", profile) or Alert(
        kind="source_expiring", profile=profile, since=now
    )
    ending, ended, hint = _SOURCE_WORDS.get(facts.source_kind, _SOURCE_WORDS["certificate"])
    verb = ended if ends <= now else ending
    draft.evaluate(
        dataclasses.replace(
            current,
            role_arn=facts.role_arn or current.role_arn,
            expires_at=ends,
            message=f"the profile's {facts.source_kind} {verb} at {format_time(ends)}",
            hint=hint,
        )
    )


def _same_second(a: datetime | None, b: datetime | None) -> bool:
    """The file keeps times to the second: a restart reads back what was held finer."""
    return a is not None and b is not None and abs(a - b) < timedelta(seconds=1)


def _expiry_message(kind: Kind, expires_at: datetime, now: datetime) -> str:
    if kind == "expired":
        return f"credentials expired at {format_time(expires_at)} and were not refreshed"
    left = format_duration((expires_at - now).total_seconds())
    return f"credentials expire in {left} and have not been refreshed"


def on_write_failed(  # noqa: PLR0913  like on_refresh_failed
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
    failure = _failure(draft, "write_failed", None, message, permanent=permanent, error_code=code)
    draft.evaluate(failure)
    return draft.step()


def on_write_succeeded(state: AlertState, policy: Policy, *, now: datetime) -> Step:
    draft = _Draft(state, policy, now)
    draft.resolve("write_failed", None, "the credentials file was written")
    return draft.step()


#: `hook_failed` fires after this many failures of a hook in a row (one is often a blip).
HOOK_FAILURES_TO_ALERT: Final = 3


def on_hook_failed(  # noqa: PLR0913  the facts of one failed run, named by the caller
    state: AlertState,
    policy: Policy,
    *,
    hook: str,
    failures: int,
    message: str,
    code: str,
    now: datetime,
) -> Step:
    """A hook failed `failures` times in a row; `hook` names it by the profiles it serves."""
    draft = _Draft(state, policy, now)
    if failures >= HOOK_FAILURES_TO_ALERT or draft.get("hook_failed", hook) is not None:
        message = f"{failures} failures in a row: {message}"
        hint = "the credentials file is fresh but its consumers were not told"
        draft.evaluate(_failure(draft, "hook_failed", hook, message, error_code=code, hint=hint))
    return draft.step()


def on_hook_succeeded(state: AlertState, policy: Policy, *, hook: str, now: datetime) -> Step:
    draft = _Draft(state, policy, now)
    draft.resolve("hook_failed", hook, "the hook ran")
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
            f"{len(errors)} problem(s): {message}",
            hint="run `credfresh validate` on the config file",
            permanent=True,
            error_code="config_invalid",
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
    for kind in (*PROFILE_KINDS, "source_expiring"):
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
