"""What an alert is, as data: its record, the saved state and the event sinks receive."""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from datetime import datetime
from typing import Final, Literal, cast

from credfresh.credentials import format_time
from credfresh.observe.logs import Redactor

Kind = Literal[
    "sts_error",
    "expiring",
    "expired",
    "source_expiring",
    "config_rejected",
    "write_failed",
    "hook_failed",
]
Status = Literal["firing", "resolved"]
Severity = Literal["warning", "critical"]
Transition = Literal["fired", "repeated", "escalated", "resolved"]
Key = tuple[Kind, str | None]

KINDS: Final[tuple[Kind, ...]] = (
    "sts_error",
    "expiring",
    "expired",
    "source_expiring",
    "config_rejected",
    "write_failed",
    "hook_failed",
)
PROFILE_KINDS: Final[tuple[Kind, ...]] = ("sts_error", "expiring", "expired")
GLOBAL_KINDS: Final[tuple[Kind, ...]] = ("config_rejected", "write_failed")
STATE_VERSION: Final = 1


@dataclasses.dataclass(frozen=True, slots=True)
class Alert:
    """One alert: pending until its rule says fire, then firing; resolving removes it."""

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
        """Every field in order, times as ISO 8601 with their offset."""
        return {
            f.name: v.isoformat() if isinstance(v := getattr(self, f.name), datetime) else v
            for f in dataclasses.fields(self)
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
        """Every field in order, times in credfresh's time format."""
        return {
            f.name: format_time(v) if isinstance(v := getattr(self, f.name), datetime) else v
            for f in dataclasses.fields(self)
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
