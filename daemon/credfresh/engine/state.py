"""The daemon's state file (the one reader and writer): what `credfresh status` shows and
what survives a restart."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from credfresh.credentials import format_time, parse_time
from credfresh.credfile.atomic import atomic_write
from credfresh.credfile.handles import read_file
from credfresh.errors import CredfileError

STATE_VERSION: Final = 1


@dataclasses.dataclass
class ProfileState:
    """Per-profile history. Times are UTC; messages never hold secrets (they are redacted)."""

    state: str = "missing"
    expires_at: datetime | None = None
    last_success: datetime | None = None
    last_error_code: str | None = None
    last_error_message: str | None = None
    last_error_permanent: bool = False
    consecutive_failures: int = 0
    failing_since: datetime | None = None
    next_attempt: datetime | None = None
    source_expires_at: datetime | None = None  # a Roles Anywhere certificate's end

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            out[field.name] = format_time(value) if isinstance(value, datetime) else value
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProfileState:
        kwargs: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            value = data.get(field.name)
            if value is None:
                continue
            if field.name in _TIME_FIELDS:
                try:
                    kwargs[field.name] = parse_time(str(value))
                except ValueError:
                    continue
            elif isinstance(value, _FIELD_TYPES.get(field.name, str)):
                kwargs[field.name] = value
        return cls(**kwargs)


_FIELD_TYPES: Final[Mapping[str, type]] = {
    "consecutive_failures": int,
    "last_error_permanent": bool,
}
_TIME_FIELDS: Final = frozenset(
    {"expires_at", "last_success", "failing_since", "next_attempt", "source_expires_at"}
)


def render(profiles: Mapping[str, ProfileState], alerts: Mapping[str, Any]) -> bytes:
    document = {
        "version": STATE_VERSION,
        "profiles": {name: state.to_json() for name, state in sorted(profiles.items())},
        "alerts": alerts,
    }
    return (json.dumps(document, indent=1, sort_keys=False) + "\n").encode("utf-8")


def load(path: Path, *, euid: int | None = None) -> tuple[dict[str, ProfileState], dict[str, Any]]:
    """Read the state file; a missing, foreign-version, broken or unsafe one starts afresh
    (read with the write's checks: as root, another user's tree could plant a history)."""
    try:
        data = read_file(path, euid=euid)
        document = json.loads(data.decode("utf-8")) if data is not None else None
    except (OSError, ValueError, CredfileError):
        return {}, {}
    if not isinstance(document, dict) or document.get("version") != STATE_VERSION:
        return {}, {}
    raw_profiles = document.get("profiles")
    profiles = {
        str(name): ProfileState.from_json(value)
        for name, value in (raw_profiles.items() if isinstance(raw_profiles, dict) else ())
        if isinstance(value, dict)
    }
    alerts = document.get("alerts")
    return profiles, alerts if isinstance(alerts, dict) else {}


def save(
    path: Path,
    profiles: Mapping[str, ProfileState],
    alerts: Mapping[str, Any],
    *,
    euid: int | None = None,
) -> bool:
    """Written with the same atomic helper as the credentials file, 0600."""
    return atomic_write(path, render(profiles, alerts), mode=0o600, euid=euid)
