"""The one-shot commands: `once`, `status` and `credential-process`.

`status` and `credential-process` run often (botocore spawns `credential-process` at every
refresh of every job), so they import neither boto3 nor pydantic.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from credfresh.config.model import (
    format_duration,
    parse_document,
    parse_duration,
    read_bytes,
    read_light,
)
from credfresh.config.model import resolve_paths as _resolve_paths
from credfresh.credentials import Credentials, format_time, parse_time
from credfresh.credfile import format as credfile
from credfresh.engine import policy as refresh
from credfresh.errors import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, ConfigError

if TYPE_CHECKING:
    from credfresh.cli import Streams
    from credfresh.config.model import Config, Profile
    from credfresh.sources.assume_role import StsSource
    from credfresh.sources.classify import Failure


def _now() -> datetime:
    return datetime.now(UTC)


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


def plan_once(
    config: Config,
    current: Mapping[str, Credentials],
    foreign: AbstractSet[str],
    chosen: Sequence[str],
    *,
    force: bool,
    now: datetime,
) -> tuple[list[str], dict[str, str]]:
    """Which chosen profiles to refresh, and which already fail (section conflicts)."""
    to_refresh: list[str] = []
    conflicts: dict[str, str] = {}
    for name in chosen:
        profile = config.profiles[name]
        if name in foreign and not profile.adopt:
            conflicts[name] = "section_conflict"
            continue
        state = refresh.state_of(now, current.get(name), profile.refresh_before)
        if force or state != "fresh":
            to_refresh.append(name)
    pending = list(to_refresh)
    while pending:
        source = config.profiles[pending.pop()].source_profile
        if source is None or source not in config.profiles:
            continue
        if source not in to_refresh and source not in conflicts:
            usable = refresh.state_of(now, current.get(source), 0.0) == "fresh"
            if not usable:
                to_refresh.append(source)
                pending.append(source)
    return to_refresh, conflicts


def refresh_all(
    config: Config,
    clients: StsSource,
    names: Sequence[str],
    current: Mapping[str, Credentials],
) -> tuple[dict[str, Credentials], dict[str, Failure]]:
    """Refresh profiles concurrently, sources before dependants (waves of the chain order)."""
    from credfresh.config.model import topological_order
    from credfresh.sources.classify import SourceError, classify

    wanted = {name: config.profiles[name] for name in names}
    issued: dict[str, Credentials] = {}
    failed: dict[str, Failure] = {}

    def source_of(profile: Profile) -> Credentials | None:
        if not profile.chained or profile.source_profile is None:
            return None
        source = issued.get(profile.source_profile) or current.get(profile.source_profile)
        if source is None or source.expiration <= _now():
            return None
        return source

    def one(profile: Profile) -> tuple[str, Credentials | Failure]:
        source = source_of(profile)
        if profile.chained and source is None:
            return profile.name, classify("source_unavailable", "source has no valid credentials")
        try:
            return profile.name, clients.fetch(profile, source).credentials
        except SourceError as exc:
            return profile.name, exc.failure

    with ThreadPoolExecutor(max_workers=config.sts.max_concurrency) as pool:
        for wave in topological_order(wanted):
            for name, outcome in pool.map(one, [wanted[n] for n in wave]):
                if isinstance(outcome, Credentials):
                    issued[name] = outcome
                else:
                    failed[name] = outcome
    return issued, failed


def once(config_path: Path, names: Sequence[str], force: bool, streams: Streams) -> int:
    """Refresh missing or due profiles (all with --force) and write them in ONE write."""
    from credfresh.config.validate import load_config
    from credfresh.sources.assume_role import StsSource
    from credfresh.sources.classify import classify

    config = load_config(config_path, streams.environ)
    chosen = select(names, config.profiles, config_path)
    view = credfile.read_managed(config.credentials_file, config.owner)
    to_refresh, conflicts = plan_once(
        config, view.managed, view.foreign, chosen, force=force, now=_now()
    )
    clients = StsSource(config.sts, credentials_file=str(config.credentials_file))
    issued, failed = refresh_all(config, clients, to_refresh, view.managed)
    for name in conflicts:
        failed[name] = classify(
            "section_conflict",
            f"[{name}] exists in {config.credentials_file} and is not credfresh's "
            "(set adopt: true to take it over)",
        )
    if issued:
        adopt = [name for name in issued if config.profiles[name].adopt]
        result = credfile.write_profiles(config.credentials_file, config.owner, issued, adopt=adopt)
        for name, error in result.conflicts.items():
            issued.pop(name, None)
            failed[name] = classify(error.code, str(error))
    for name in chosen:
        if name in issued:
            creds = issued[name]
            streams.out.write(
                f"refreshed {name}: expires {format_time(creds.expiration)} "
                f"(in {format_duration((creds.expiration - _now()).total_seconds())})\n"
            )
        elif name in failed:
            failure = failed[name]
            kind = "permanent" if failure.permanent else "transient"
            streams.err.write(f"failed {name}: {failure.code} ({kind}): {failure.message}\n")
            if failure.hint:
                streams.err.write(f"  hint: {failure.hint}\n")
        else:
            streams.out.write(f"fresh {name}: nothing to do\n")
    return EXIT_FAILED if failed else EXIT_OK


def _read_state(path: Path) -> Mapping[str, Any]:
    """The daemon's state file, if any; a missing or broken one just means no history."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    profiles = data.get("profiles") if isinstance(data, dict) else None
    return profiles if isinstance(profiles, dict) else {}


def status_rows(
    now: datetime,
    profiles: Mapping[str, tuple[str, float | None]],
    managed: Mapping[str, Credentials],
    foreign: AbstractSet[str],
    state: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """One plain row per profile: the data behind both the table and --json.

    `refresh_at` is the due time of what is on disk: the daemon refreshes then, or up to
    10% of the window earlier (its jitter is random and not recorded).
    """
    rows = []
    for name, (role_arn, refresh_before) in profiles.items():
        creds = managed.get(name)
        kind: refresh.State = refresh.state_of(now, creds, refresh_before)
        if creds is None and name in foreign:
            kind = "conflict"
        found = state.get(name)
        entry: Mapping[str, Any] = found if isinstance(found, dict) else {}
        rows.append(
            {
                "profile": name,
                "state": kind,
                "expires_at": format_time(creds.expiration) if creds else None,
                "remaining_seconds": (
                    round((creds.expiration - now).total_seconds()) if creds else None
                ),
                "refresh_at": (
                    format_time(refresh.due_at(creds, refresh_before)) if creds else None
                ),
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


def render_table(rows: Sequence[Mapping[str, Any]], now: datetime | None = None) -> str:
    headers = [
        "PROFILE",
        "STATE",
        "EXPIRES AT",
        "LEFT",
        "REFRESH",
        "ROLE ARN",
        "LAST ERROR",
        "NEXT ATTEMPT",
    ]
    moment = now or _now()
    body = [
        [
            str(row["profile"]),
            str(row["state"]),
            row["expires_at"] or "-",
            format_duration(row["remaining_seconds"])
            if row["remaining_seconds"] is not None
            else "-",
            _refresh_cell(row.get("refresh_at"), moment),
            str(row["role_arn"]),
            row["last_error"] or "-",
            row["next_attempt"] or "-",
        ]
        for row in rows
    ]
    widths = [
        max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(headers)
    ]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip()
        for line in [headers, *body]
    ]
    return "\n".join(lines) + "\n"


def status(
    config_path: Path,
    names: Sequence[str],
    min_remaining: str,
    *,
    as_json: bool,
    streams: Streams,
) -> int:
    """Show every profile; exit 1 unless each selected one has `min_remaining` left."""
    try:
        threshold = parse_duration(min_remaining)
    except ValueError as exc:
        streams.err.write(f"credfresh: --min-remaining: {exc}\n")
        return EXIT_CONFIG
    light = read_light(config_path, streams.environ)
    chosen = select(names, light.profiles, config_path)
    view = credfile.read_managed(light.credentials_file, light.owner)
    now = _now()
    profiles = {n: (light.profiles[n].role_arn, light.profiles[n].refresh_before) for n in chosen}
    rows = status_rows(now, profiles, view.managed, view.foreign, _read_state(light.state_file))
    if as_json:
        streams.out.write(json.dumps({"profiles": rows}, indent=2) + "\n")
    else:
        streams.out.write(render_table(rows, now))
    ok = all(
        row["remaining_seconds"] is not None
        and row["remaining_seconds"] >= threshold
        and row["remaining_seconds"] > 0
        for row in rows
    )
    return EXIT_OK if ok else EXIT_FAILED


def credential_process(config_path: Path, profile: str, streams: Streams) -> int:
    """Print one profile as credential_process JSON, straight from the credentials file."""
    document = parse_document(read_bytes(config_path), config_path)
    credentials_file, owner, _ = _resolve_paths(document, config_path, streams.environ)
    view = credfile.read_managed(credentials_file, owner)
    creds = view.managed.get(profile)
    if creds is None:
        streams.err.write(
            f"credfresh: profile {profile} has no credentials in {credentials_file} "
            "(is credfresh running?)\n"
        )
        return EXIT_FAILED
    if creds.expiration <= _now():
        streams.err.write(
            f"credfresh: profile {profile} expired at {format_time(creds.expiration)} "
            "(is credfresh running? see `credfresh status`)\n"
        )
        return EXIT_FAILED
    streams.out.write(
        json.dumps(
            {
                "Version": 1,
                "AccessKeyId": creds.access_key_id,
                "SecretAccessKey": creds.secret_access_key,
                "SessionToken": creds.session_token,
                "Expiration": format_time(creds.expiration),
            }
        )
        + "\n"
    )
    return EXIT_OK
