"""The refresh engine: one job per profile on an injected scheduler, one batching writer.

A wake-up every 30 s re-checks due times (the scheduler's monotonic wait stops during
suspend) and reschedules a job the scheduler dropped.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Collection, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Final

from credfresh.credentials import Credentials, format_expiry
from credfresh.engine import policy as refresh
from credfresh.engine.core import WAKEUP_INTERVAL, EngineCore
from credfresh.engine.ondemand import Ticket
from credfresh.engine.parts import Parts, same_on_disk
from credfresh.engine.state import ProfileState
from credfresh.errors import CODES, CredfileError
from credfresh.sources.classify import Failure, SourceError, classify

if TYPE_CHECKING:
    from credfresh.config.model import Config, Profile
    from credfresh.engine.batcher import BatchWriter
    from credfresh.observe.metrics import RefreshResult

SKEW_REPORT: Final = timedelta(minutes=5)
STOPPING: Final = Failure(
    "daemon_stopping",
    "the daemon stopped before the refresh landed",
    False,
    CODES["daemon_stopping"],
)

REMOVED: Final = Failure(
    "unknown_profile", "a reload removed it from the config", True, CODES["unknown_profile"]
)


class Engine(EngineCore):
    """Keeps every profile of a config fresh: `start`, `stop`, `apply` (reload), `wakeup`;
    the views are `EngineCore`'s."""

    def __init__(
        self, config: Config, parts: Parts, *, wakeup_interval: float = WAKEUP_INTERVAL
    ) -> None:
        super().__init__(config, parts, wakeup_interval=wakeup_interval)
        self._writer = self._make_writer(config)
        self._dependants: tuple[Config, dict[str, tuple[Profile, ...]]] | None = None

    def start(
        self, saved: Mapping[str, ProfileState], on_first_pass: Callable[[], None] | None = None
    ) -> None:
        """Keep what is fresh on disk (a restart costs no STS call), refresh the rest now;
        `on_first_pass()` once every profile that needed a refresh has had its first try."""
        self._on_first_pass = on_first_pass
        view = self._read_file()
        now = self.clock.now()
        with self._lock:
            for name, profile in self._config.profiles.items():
                state = self._states[name] = saved.get(name) or ProfileState()
                creds = view.managed.get(name) if view else None
                if creds is not None and creds.static and profile.kind != "copy":
                    creds = None  # only a copy holds long-term keys: an STS profile refreshes
                if creds is not None:
                    self._current[name] = self._written[name] = creds
                    self._remember_secrets(name, creds)
                state.state = refresh.state_of(now, creds, profile.refresh_before)
                state.expires_at = creds.expiration if creds else None
                if state.state != "fresh":
                    self._first_pass.add(name)
            nothing_due = not self._first_pass
            if nothing_due:
                self._first_pass_done.set()
        self._writer.start()
        self._scheduler.start(self._missed)
        self._scheduler.every(self.wakeup_interval, self.wakeup)
        for name, profile in self._config.profiles.items():
            source = profile.source_profile
            if profile.chained and name in self._first_pass and source in self._first_pass:
                # Waits for its source (`_wake_dependants`), or the wake-up if that fails long.
                self._schedule(name, now + timedelta(seconds=self.wakeup_interval))
                continue
            held = self._current.get(name)
            if held is not None and held.static:
                self._schedule(name, now)  # read again: its source may have changed meanwhile
                continue
            self._schedule_next(name, now)
        self._update_gauges()
        if nothing_due and on_first_pass is not None:
            on_first_pass()  # READY=1 at once: no tick's wait when every profile is fresh

    def stop(self, grace: float) -> bool:
        """Stop scheduling, give in-flight calls `grace` seconds, write what finished."""
        with self._lock:
            self._stopped = True
        self._scheduler.shutdown()
        deadline = self.clock.monotonic() + grace
        idle = threading.Event()
        while not idle.is_set() and self.clock.monotonic() < deadline:
            with self._lock:
                if not self._running:
                    idle.set()
            idle.wait(0.05)
        with self._lock:
            idle_now = not self._running
        self._writer.stop(timeout=max(1.0, deadline - self.clock.monotonic()))
        with self._lock:
            for ticket in self._tickets:
                ticket.close(STOPPING)
        return idle_now

    def refresh_now(self, names: Collection[str], wait: float) -> dict[str, Credentials | Failure]:
        """Run these profiles' refresh jobs now (`credfresh refresh`) and wait up to `wait`
        seconds for each to land on disk or fail; a profile still out is absent."""
        ticket = Ticket(names)
        now = self.clock.now()
        with self._lock:
            if self._stopped:
                return dict.fromkeys(ticket.names, STOPPING)
            self._tickets.append(ticket)
            self._urgent.update(ticket.names)
            busy = {name for name in ticket.names if name in self._running}
            self._rerun |= busy
        self.log.info("refresh_requested", profiles=list(ticket.names), wait=wait)
        for name in ticket.names:
            if name not in busy:
                self._schedule(name, now)
        self._scheduler.poke()
        try:
            return ticket.wait(wait)
        finally:
            with self._lock:
                self._tickets.remove(ticket)

    def _job(self, name: str) -> None:
        self._heartbeat = self.clock.monotonic()
        with self._lock:
            profile = self._config.profiles.get(name)
            self._pending.pop(name, None)
            if profile is None or name in self._running:
                return
            self._running.add(name)
            for ticket in self._tickets:
                ticket.started(name)
        try:
            self._refresh(profile)
        finally:
            with self._lock:
                self._running.discard(name)
                again = name in self._rerun and not self._stopped
                self._rerun.discard(name)
                self._first_pass.discard(name)
                finished = not self._first_pass and not self._first_pass_done.is_set()
                if not self._first_pass:
                    self._first_pass_done.set()
            if again:
                self._schedule(name, self.clock.now())
            if finished and self._on_first_pass is not None:
                self._on_first_pass()
            self._heartbeat = self.clock.monotonic()

    def _parent_of(self, profile: Profile) -> Credentials | None:
        if not profile.chained or profile.source_profile is None:
            return None
        with self._lock:
            parent = self._current.get(profile.source_profile)
        if parent is None or not parent.valid_at(self.clock.now()):
            return None
        return parent

    def _refresh(self, profile: Profile) -> None:
        started = self.clock.monotonic()
        parent = self._parent_of(profile)
        try:
            if profile.chained and parent is None:
                raise SourceError(classify("source_unavailable", "source has no valid credentials"))
            self._writer.step_aside()
            issued = self._source.fetch(profile, parent)
            self._writer.step_aside()
        except SourceError as exc:
            self._failed(profile, exc.failure, self.clock.monotonic() - started)
            return
        creds = issued.credentials
        self._remember_secrets(profile.name, creds)
        self._source_issued()
        took = self.clock.monotonic() - started
        self._report_skew(issued.skew)
        with self._lock:
            if self._config.profiles.get(profile.name) != profile:
                return
            self._current[profile.name] = creds
            state = self._states.setdefault(profile.name, ProfileState())
            recovered = state.consecutive_failures > 0
            self._states[profile.name] = ProfileState(
                state="fresh",
                expires_at=creds.expiration,
                last_success=creds.issued,
                next_attempt=state.next_attempt,
            )
            self._expired_reported.discard(profile.name)
            self._landing[profile.name] = creds
            self._retry_in.pop(profile.name, None)
            urgent = profile.name in self._urgent
            self._urgent.discard(profile.name)
            for ticket in self._tickets:
                ticket.issued(profile.name, creds)
        self._writer.submit({profile.name: creds}, urgent=urgent)
        self.log.info(
            "refreshed",
            profile=profile.name,
            role_arn=profile.role_arn,
            expires_at=format_expiry(creds.expiration),
            took_ms=round(took * 1000),
            **({"recovered": True} if recovered else {}),
        )
        if self.metrics is not None:
            self.metrics.refresh(profile.name, "success", took)
            self.metrics.set_expiry(profile.name, creds.expiration)  # None: static, no gauge
            self.metrics.set_last_success(profile.name, creds.issued.timestamp())
        self._schedule_next(profile.name, self.clock.now())
        self._wake_dependants(profile.name)

    def _wake_dependants(self, source: str) -> None:
        """A chained profile waiting for this source runs now; fresh dependants are left be."""
        now = self.clock.now()
        for profile in self._dependants_of(source):
            name = profile.name
            with self._lock:
                state = self._states.get(name)
                creds = self._current.get(name)
                waiting = state is not None and (
                    state.last_error_code == "source_unavailable"
                    or refresh.state_of(now, creds, profile.refresh_before) != "fresh"
                )
            if waiting:
                self._schedule(name, now)

    def _dependants_of(self, source: str) -> tuple[Profile, ...]:
        """The chained profiles whose source is `source`, indexed once per config: a scan of
        every profile after every refresh cost 1,000 profiles a million steps."""
        config = self._config
        cached = self._dependants
        if cached is None or cached[0] is not config:
            index: dict[str, list[Profile]] = {}
            for profile in config.profiles.values():
                if profile.chained and profile.source_profile is not None:
                    index.setdefault(profile.source_profile, []).append(profile)
            cached = self._dependants = (config, {k: tuple(v) for k, v in index.items()})
        return cached[1].get(source, ())

    def _failed(self, profile: Profile, failure: Failure, took: float) -> None:
        now = self.clock.now()
        message = self.redactor.text(failure.message)
        with self._lock:
            if self._config.profiles.get(profile.name) != profile:
                return
            state = self._states.setdefault(profile.name, ProfileState())
            attempt = state.consecutive_failures
            state.consecutive_failures += 1
            state.failing_since = state.failing_since or now
            state.last_error_code = failure.code
            state.last_error_message = message
            state.last_error_permanent = failure.permanent
            for ticket in self._tickets:
                ticket.failed(profile.name, dataclasses.replace(failure, message=message))
            state.state = refresh.state_of(
                now, self._current.get(profile.name), profile.refresh_before
            )
            disk = self._written.get(profile.name)
            delay = self._retry_in[profile.name] = refresh.retry_delay(
                attempt,
                permanent=failure.permanent,
                initial=self._config.retry.initial,
                maximum=self._config.retry.max,
                rng=self._rng,
            )
        self.log.warning(
            "refresh_failed",
            profile=profile.name,
            role_arn=profile.role_arn,
            error_code=failure.code,
            permanent=failure.permanent,
            hint=failure.hint,
            message=message,
            retry_in=round(delay, 1),
            consecutive_failures=attempt + 1,
        )
        if self.metrics is not None:
            result: RefreshResult = "permanent_error" if failure.permanent else "transient_error"
            self.metrics.refresh(profile.name, result, took)
            self.metrics.sts_error(profile.name, failure.code)
        if self.alerts is not None:
            self.alerts.refresh_failed(
                profile.name,
                role_arn=profile.role_arn,
                code=failure.code,
                message=message,
                hint=failure.hint,
                permanent=failure.permanent,
                now=now,
                expires_at=disk.expiration if disk else None,
                refresh_at=refresh.due_at(disk, profile.refresh_before) if disk else None,
                grace=self.alert_grace(profile.name),
            )
            self._update_gauges()
        self._schedule(profile.name, now + timedelta(seconds=delay))

    def _report_skew(self, skew: timedelta) -> None:
        if abs(skew) <= SKEW_REPORT:
            self._skew_reported = False
        elif not self._skew_reported:
            self._skew_reported = True
            self.log.warning(
                "clock_skew",
                skew_seconds=round(skew.total_seconds(), 1),
                hint="this machine's clock differs from STS's: check NTP; expiries are corrected",
            )

    def _make_writer(self, config: Config) -> BatchWriter:
        path, owner = config.credentials_file, config.owner

        def write(
            updates: Mapping[str, Credentials], removals: Collection[str]
        ) -> Mapping[str, CredfileError]:
            adopt = [n for n in updates if (p := self._config.profiles.get(n)) and p.adopt]
            result = self._parts.store.write_profiles(
                path, owner, updates, removals, adopt=adopt, on_event=self._file_event
            )
            return result.conflicts

        def written(
            updates: Mapping[str, Credentials], removals: Collection[str], took: float
        ) -> None:
            if path == self._config.credentials_file and owner == self._config.owner:
                self._written_to_disk(updates, removals, took)

        return self._parts.writer_factory(
            write, on_written=written, on_conflict=self._conflict, on_failed=self._write_failed
        )

    def _conflict(self, name: str, error: CredfileError) -> None:
        profile = self._config.profiles.get(name)
        if profile is None:
            return
        with self._lock:
            self._current.pop(name, None)
        self._failed(profile, classify("section_conflict", str(error)), 0.0)

    def wakeup(self) -> None:
        """Every 30 s: beat, re-check due times, restore edited sections, report expiry."""
        self._heartbeat = self.clock.monotonic()
        now = self.clock.now()
        for name in self.static_changed():
            self._schedule(name, now)
        self._recheck_jobs(now)
        self._heal(now)
        self._report_expired(now)
        self.recheck_sources()
        if self.alerts is not None:
            self.alerts.tick(now, self.alert_facts())
        self._update_gauges()
        self._heartbeat = self.clock.monotonic()

    def _recheck_jobs(self, now: datetime) -> None:
        for name in list(self._config.profiles):
            next_run = self._scheduler.next_run(name)
            with self._lock:
                handed = self._pending.get(name)
                about_to_run = (
                    next_run is None
                    and handed is not None
                    and self.clock.monotonic() - handed < self.wakeup_interval
                )
                if name in self._running or about_to_run:
                    continue  # running, or handed to the executor a moment ago
            expected = self.expected_run(name, now)
            if expected is None:
                continue
            if next_run is None:
                self._schedule(name, max(expected, now))
            elif expected <= now < next_run:
                self._schedule(name, now)
        self._scheduler.poke()

    def _heal(self, now: datetime) -> None:
        """Write again a managed section that differs from what credfresh last wrote; not
        while a write is pending (the file then rightly lags `current`)."""
        if self._writer.pending():
            return
        view = self._read_file()
        if view is None or self._writer.pending():
            return
        restore: dict[str, Credentials] = {}
        with self._lock:
            for name, wrote in self._written.items():
                if name not in self._config.profiles:
                    continue
                newest = self._current.get(name, wrote)
                if not same_on_disk(view.managed.get(name), wrote) and newest.valid_at(now):
                    restore[name] = newest
        for name in sorted(restore):
            reason = "missing" if view.managed.get(name) is None else "changed"
            self.log.warning("section_restored", profile=name, reason=reason)
        if restore:
            self._writer.submit(restore)

    def _report_expired(self, now: datetime) -> None:
        newly: list[tuple[Profile, Credentials, ProfileState | None]] = []
        with self._lock:
            for name, profile in self._config.profiles.items():
                creds = self._current.get(name)
                state = self._states.get(name)
                if state is not None:
                    state.state = refresh.state_of(now, creds, profile.refresh_before)
                if (
                    creds is not None
                    and not creds.valid_at(now)
                    and name not in self._expired_reported
                ):
                    self._expired_reported.add(name)
                    newly.append((profile, creds, state))
        for profile, creds, state in newly:
            self.log.error(
                "credentials_expired",
                profile=profile.name,
                role_arn=profile.role_arn,
                expired_at=format_expiry(creds.expiration),
                error_code=state.last_error_code if state else None,
            )

    def apply(self, new: Config) -> dict[str, list[str]]:
        """Switch to a validated config: fetch added and changed profiles now, remove the
        sections of removed ones, leave the others with their credentials and jobs."""
        now = self.clock.now()
        with self._lock:
            old = self._config
            changes = refresh.config_changes(old, new)
            removed, renewed = changes["removed"], changes["added"] + changes["changed"]
            self._config = new
            for name in removed:
                for table in (self._states, self._current, self._landing, self._retry_in):
                    table.pop(name, None)
                for ticket in self._tickets:
                    ticket.removed(name, REMOVED)
            self._urgent.update(renewed)
            for name in renewed:
                previous = self._states.get(name)
                self._states[name] = ProfileState(
                    expires_at=previous.expires_at if previous else None
                )
        if old.sts != new.sts:
            self._replace_source(new)
        for name in removed:
            self._scheduler.cancel(name)
            if self.alerts is not None:
                self.alerts.profile_removed(name)
            if self.metrics is not None:
                self.metrics.remove_profile(name)
        if (old.credentials_file, old.owner) != (new.credentials_file, new.owner):
            self._move_file(old, removed)
        elif removed:
            self._writer.submit(removals=removed)
        for name in renewed:
            self._schedule(name, now)
        for name in changes["retimed"]:
            self._schedule_next(name, now)
        self._update_gauges()
        return changes

    def _move_file(self, old: Config, removed: Collection[str]) -> None:
        """A new credentials_file (or owner): write every section there, then drop the old."""
        old_writer = self._writer
        now = self.clock.now()
        with self._lock:
            old_names = set(self._written) | set(removed)
            keep = {
                name: creds
                for name, creds in self._current.items()
                if name in self._config.profiles and creds.valid_at(now)
            }
            self._written = {}
        old_writer.submit(removals=old_names)
        old_writer.stop(timeout=10.0)
        self._writer = self._make_writer(self._config)
        self._writer.start()
        self._writer.submit(keep)
        self.log.info(
            "credentials_file_moved",
            old=str(old.credentials_file),
            new=str(self._config.credentials_file),
            profiles=sorted(keep),
        )
