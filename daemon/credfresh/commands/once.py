"""`credfresh once`: refresh every missing or due profile, sources first, in one write."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from credfresh.commands.report import failed_lines, refreshed_line
from credfresh.commands.status import select
from credfresh.credentials import Credentials
from credfresh.credfile import store as credfile
from credfresh.engine import policy as refresh
from credfresh.errors import EXIT_FAILED, EXIT_OK

if TYPE_CHECKING:
    from datetime import datetime
    from pathlib import Path

    from credfresh.config.model import Config, Profile
    from credfresh.context import Clock, Context
    from credfresh.credfile.format import FileView
    from credfresh.sources.assume_role import StsSource
    from credfresh.sources.classify import Failure


def plan_once(
    config: Config, view: FileView, chosen: Sequence[str], *, force: bool, now: datetime
) -> tuple[list[str], dict[str, str]]:
    """Which chosen profiles to refresh, and which already fail (section conflicts)."""
    current, foreign = view.managed, view.foreign
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
    clock: Clock,
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
        if source is None or not source.valid_at(clock.now()):
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


def once(config_path: Path, names: Sequence[str], force: bool, ctx: Context) -> int:
    """Refresh missing or due profiles (all with --force) in ONE write; the verdict is 1 when
    any profile failed (each is reported), errors are raised."""
    from credfresh.config.validate import load_config
    from credfresh.sources.assume_role import StsSource
    from credfresh.sources.classify import classify

    config = load_config(config_path, ctx.environ, ctx.home, ctx.clock.now())
    chosen = select(names, config.profiles, config_path)
    view = credfile.read_managed(config.credentials_file, config.owner, euid=ctx.euid)
    to_refresh, conflicts = plan_once(config, view, chosen, force=force, now=ctx.clock.now())
    clients = StsSource(config.sts, credentials_file=str(config.credentials_file))
    issued, failed = refresh_all(config, clients, to_refresh, view.managed, ctx.clock)
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
            ctx.out.write(refreshed_line(name, issued[name].expiration, ctx.clock.now()))
        elif name in failed:
            ctx.err.write(failed_lines(name, failed[name]))
        else:
            ctx.out.write(f"fresh {name}: nothing to do\n")
    return EXIT_FAILED if failed else EXIT_OK
