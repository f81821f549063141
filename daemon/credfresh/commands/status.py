"""`credfresh status`: each profile's credentials on disk and the daemon's last word on them
(it runs often, from health checks and prompts: no boto3, no pydantic)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any

from credfresh.config.load import read_light
from credfresh.config.model import format_duration, parse_duration
from credfresh.credentials import Credentials, format_time, parse_time
from credfresh.credfile import store as credfile
from credfresh.engine import policy as refresh
from credfresh.engine import state as state_file
from credfresh.errors import EXIT_FAILED, EXIT_OK, ConfigError, UsageError

if TYPE_CHECKING:
    from datetime import datetime
    from pathlib import Path

    from credfresh.context import Context

HEADERS = [
    "PROFILE",
    "STATE",
    "EXPIRES AT",
    "LEFT",
    "REFRESH",
    "SOURCE EXPIRES",
    "ROLE ARN",
    "LAST ERROR",
    "NEXT ATTEMPT",
]


def select(names: Sequence[str], known: Mapping[str, object], path: Path) -> list[str]:
    """The profiles a command acts on; unknown names are a usage error."""
    if not names:
        return list(known)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ConfigError(
            [f"--profile {name}: not in the config" for name in unknown], path=str(path)
        )
    return list(dict.fromkeys(names))


def status_rows(
    now: datetime,
    profiles: Mapping[str, tuple[str, float | None]],
    managed: Mapping[str, Credentials],
    foreign: AbstractSet[str],
    state: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """One plain row per profile, behind both the table and --json. `refresh_at` is the due
    time of what is on disk (the daemon's unrecorded jitter may come up to 10% earlier)."""
    rows = []
    for name, (role_arn, refresh_before) in profiles.items():
        creds = managed.get(name)
        kind: refresh.State = refresh.state_of(now, creds, refresh_before)
        if creds is None and name in foreign:
            kind = "conflict"
        found = state.get(name)
        entry: Mapping[str, Any] = found if isinstance(found, dict) else {}
        expires = creds.expiration if creds else None
        due = refresh.due_at(creds, refresh_before) if creds else None
        rows.append(
            {
                "profile": name,
                "state": kind,
                "static": creds is not None and creds.static,
                "expires_at": format_time(expires) if expires else None,
                "remaining_seconds": round((expires - now).total_seconds()) if expires else None,
                "refresh_at": format_time(due) if due else None,
                "source_expires_at": entry.get("source_expires_at"),
                "role_arn": role_arn,
                "last_error": entry.get("last_error_code"),
                "next_attempt": entry.get("next_attempt"),
            }
        )
    return rows


def _refresh_cell(refresh_at: str | None, now: datetime) -> str:
    """REFRESH: the time until the refresh point, `now` once it has passed."""
    if refresh_at is None:
        return "-"
    seconds = (parse_time(refresh_at) - now).total_seconds()
    return format_duration(seconds) if seconds > 0 else "now"


def render_table(rows: Sequence[Mapping[str, Any]], now: datetime) -> str:
    """The human table: one line per row, columns as wide as their widest cell."""
    body = [
        [
            str(row["profile"]),
            str(row["state"]),
            "never" if row["static"] else row["expires_at"] or "-",
            "-" if row["remaining_seconds"] is None else format_duration(row["remaining_seconds"]),
            _refresh_cell(row.get("refresh_at"), now),
            row.get("source_expires_at") or "-",
            str(row["role_arn"]) or "-",
            row["last_error"] or "-",
            row["next_attempt"] or "-",
        ]
        for row in rows
    ]
    widths = [max([len(h), *(len(r[i]) for r in body)]) for i, h in enumerate(HEADERS)]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip()
        for line in [HEADERS, *body]
    ]
    return "\n".join(lines) + "\n"


def status(
    config_path: Path, names: Sequence[str], min_remaining: str, *, as_json: bool, ctx: Context
) -> int:
    """Show every profile; the verdict is 1 unless each selected one has `min_remaining` (and
    more than nothing) left. Errors are raised for `cli`."""
    try:
        threshold = parse_duration(min_remaining)
    except ValueError as exc:
        raise UsageError(f"--min-remaining: {exc}") from None
    light = read_light(config_path, ctx.environ, ctx.home)
    chosen = select(names, light.profiles, config_path)
    view = credfile.read_managed(light.credentials_file, light.owner, euid=ctx.euid)
    now = ctx.clock.now()
    profiles = {n: (light.profiles[n].role_arn, light.profiles[n].refresh_before) for n in chosen}
    saved = {n: entry.to_json() for n, entry in state_file.load(light.state_file)[0].items()}
    rows = status_rows(now, profiles, view.managed, view.foreign, saved)
    if as_json:
        ctx.out.write(json.dumps({"profiles": rows}, indent=2) + "\n")
    else:
        ctx.out.write(render_table(rows, now))
    ok = all(
        row["static"]
        or (
            row["remaining_seconds"] is not None
            and row["remaining_seconds"] >= threshold
            and row["remaining_seconds"] > 0
        )
        for row in rows
    )
    return EXIT_OK if ok else EXIT_FAILED
