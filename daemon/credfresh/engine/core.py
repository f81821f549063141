"""The engine's tables under its one lock, their scheduling, the file's side and the views;
`Engine` (engine.py) adds the refresh job, the wake-up and reloads."""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from credfresh.engine import policy as refresh
from credfresh.engine.parts import Parts, Snapshot, expiry
from credfresh.engine.state import ProfileState
from credfresh.errors import CODES, CredfileError
from credfresh.sources.classify import Failure

if TYPE_CHECKING:
    from credfresh.config.model import Config
    from credfresh.credentials import Credentials
    from credfresh.credfile.format import FileView
    from credfresh.engine.batcher import BatchWriter
    from credfresh.engine.ondemand import Ticket
    from credfresh.sources.base import Source

WAKEUP_INTERVAL: Final = 30.0


class EngineCore:
    """Profile tables under one lock, their scheduling, the writer's reports, the views."""

    _writer: BatchWriter

    def _job(self, name: str) -> None:
        """One profile's refresh run, as the scheduler calls it (`Engine` has it)."""
        raise NotImplementedError

    def __init__(self, config: Config, parts: Parts, *, wakeup_interval: float) -> None:
        self._config = config
        self.log = parts.log
        self.redactor = parts.redactor
        self.alerts = parts.alerts
        self.metrics = parts.metrics
        self.clock = parts.clock
        self.wakeup_interval = wakeup_interval
        self._parts = parts
        self._source: Source = parts.source_factory(config)
        self._scheduler = parts.scheduler
        self._rng = parts.rng
        self._lock = threading.RLock()
        self._states: dict[str, ProfileState] = {}
        self._current: dict[str, Credentials] = {}
        self._written: dict[str, Credentials] = {}
        #: When each profile's source runs out, re-read at each wake-up and write (not on the
        #: health probes' path): `recheck_sources`.
        self._source_ends: dict[str, datetime] = {}
        # Refreshed credentials until the writer confirms them on disk (then alerts resolve).
        self._landing: dict[str, Credentials] = {}
        self._retry_in: dict[str, float] = {}  # the retry delay a failing profile is in
        self._running: set[str] = set()
        self._pending: dict[str, float] = {}  # handed to the scheduler, at (monotonic)
        self._urgent: set[str] = set()
        self._secrets: dict[str, list[Credentials]] = {}
        self._first_pass: set[str] = set()
        self._first_pass_done = threading.Event()
        self._on_first_pass: Callable[[], None] | None = None
        self._dirty = threading.Event()
        self._heartbeat = self.clock.monotonic()
        self._skew_reported = False
        self._expired_reported: set[str] = set()
        self._tickets: list[Ticket] = []  # open on-demand requests (`Engine.refresh_now`)
        self._rerun: set[str] = set()  # asked for while running: run again once it ends
        self._stopped = False
        self._heap_settled = False  # the heap was told the current sources are built

    @property
    def config(self) -> Config:
        return self._config

    def _schedule(self, name: str, when: datetime) -> None:
        self._scheduler.at(name, when, self._job)
        with self._lock:
            self._pending[name] = self.clock.monotonic()
            state = self._states.get(name)
            if state is not None:
                state.next_attempt = when
        self._dirty.set()

    def _schedule_next(self, name: str, now: datetime) -> None:
        """Due profiles run now; fresh ones at their jittered due time (always earlier); a
        static set is not rescheduled by time (`static_changed` refetches it)."""
        profile = self._config.profiles[name]
        creds = self._current.get(name)
        if creds is None or refresh.is_due(now, creds, profile.refresh_before):
            self._schedule(name, now)
            return
        when = refresh.jittered_due_at(creds, profile.refresh_before, self._rng)
        if when is not None:
            self._schedule(name, when)

    def expected_run(self, name: str, now: datetime) -> datetime | None:
        """When a profile should next run: its due time, or its retry time while failing."""
        with self._lock:
            state = self._states.get(name)
            creds = self._current.get(name)
            profile = self._config.profiles.get(name)
        if profile is None or state is None:
            return None
        if state.consecutive_failures and state.next_attempt is not None:
            return state.next_attempt
        if creds is None:
            return now
        return refresh.due_at(creds, profile.refresh_before)

    def _missed(self, name: str) -> None:
        """The scheduler dropped a run (a dropped one-shot job is gone): schedule it again
        unless the profile is running or has a run handed out already."""
        with self._lock:
            self._pending.pop(name, None)
            busy = name in self._running
        if not busy and name in self._config.profiles and self._scheduler.next_run(name) is None:
            self._schedule(name, self.clock.now())

    def _remember_secrets(self, name: str, creds: Credentials) -> None:
        """Redact this set and the one before it; older sets are forgotten (memory stays flat)."""
        self.redactor.add(creds.secret_access_key, creds.session_token)
        with self._lock:
            generations = self._secrets.setdefault(name, [])
            generations.append(creds)
            stale = generations[:-2]
            del generations[:-2]
        for old in stale:
            self.redactor.forget(old.secret_access_key, old.session_token)

    def _source_issued(self) -> None:
        """A source issued credentials: botocore, its clients and models exist now, so the
        heap may freeze them, once per set of sources (not for sets read back from the file)."""
        if not self._heap_settled:
            self._heap_settled = True
            if self._parts.heap is not None:
                self._parts.heap.settled()

    def _replace_source(self, config: Config) -> None:
        """New sources for new `sts` settings; the old ones may be frozen, so thaw first."""
        if self._parts.heap is not None:
            self._parts.heap.dropping()
        self._heap_settled = False
        self._source = self._parts.source_factory(config)

    def _file_event(self, name: str, fields: Mapping[str, object]) -> None:
        self.log.info(name, **fields)

    def _written_to_disk(
        self, updates: Mapping[str, Credentials], removals: Collection[str], took: float
    ) -> None:
        """The writer renamed these into place: only now do views and alerts see them."""
        with self._lock:
            self._written.update(updates)
            for name in removals:
                self._written.pop(name, None)
            landed = {
                name: creds
                for name, creds in updates.items()
                if (fresh := self._landing.get(name)) is not None
                and fresh.access_key_id == creds.access_key_id
            }
            for name in landed:
                del self._landing[name]
        if updates or removals:
            self.log.info(
                "file_written",
                profiles=sorted(updates),
                removed=sorted(removals) or None,
                took_ms=round(took * 1000, 1),
            )
            if self.metrics is not None:
                self.metrics.file_written()
        for output in self._parts.after_write:
            output(self._config, updates)
        with self._lock:  # `credfresh refresh` answers once the outputs have them too
            for ticket in self._tickets:
                for name, creds in updates.items():
                    ticket.landed(name, creds)
        self.recheck_sources()
        if self.alerts is not None:
            now = self.clock.now()
            for name, creds in sorted(landed.items()):
                self.alerts.refresh_succeeded(name, now, creds.expiration)  # None: static
            self.alerts.write_succeeded(now)
            self._update_gauges()
        self._dirty.set()

    def _write_failed(self, error: CredfileError, retry_in: float) -> None:
        message = self.redactor.text(str(error))
        failure = Failure(error.code, message, permanent=False, hint=CODES.get(error.code))
        with self._lock:
            for ticket in self._tickets:
                ticket.write_failed(failure)
        self.log.error(
            "write_failed",
            error_code=error.code,
            message=message,
            path=str(self._config.credentials_file),
            retry_in=retry_in,
        )
        if self.alerts is not None:
            self.alerts.write_failed(error.code, message, self.clock.now())

    def _read_file(self) -> FileView | None:
        try:
            return self._parts.store.read_managed(self._config.credentials_file, self._config.owner)
        except CredfileError as exc:
            self.log.error(
                "file_unreadable",
                error_code=exc.code,
                message=str(exc),
                path=str(self._config.credentials_file),
            )
            return None

    # ----- what the daemon, the outputs and the alerts see -----------------------------

    def alert_facts(self) -> dict[str, Any]:
        """What the alert rules judge: the credentials ON DISK (issued but unwritten ones help
        no consumer), their refresh point, the grace. Every 30 s for every profile, so what
        does not vary by profile is computed once."""
        from credfresh.alerts.rules import ProfileFacts

        alerts = self._config.alerts
        session_warning = timedelta(seconds=alerts.expiry_warning)
        certificate_warning = timedelta(seconds=alerts.certificate_warning)
        facts: dict[str, Any] = {}
        with self._lock:
            for name, profile in self._config.profiles.items():
                disk = self._written.get(name)
                copy = profile.kind == "copy"
                facts[name] = ProfileFacts(
                    role_arn=profile.role_arn,
                    expires_at=disk.expiration if disk else None,
                    refresh_at=refresh.due_at(disk, profile.refresh_before) if disk else None,
                    static=disk is not None and disk.static,
                    grace=self._grace_for(self._retry_in.get(name, 0.0)),
                    source_expires_at=self._source_ends.get(name),
                    source_warning=session_warning if copy else certificate_warning,
                    source_kind="SSO session" if copy else "certificate",
                )
        return facts

    def static_changed(self) -> list[str]:
        """Profiles holding a static set whose source files changed since it was read (the
        wake-up refetches them); asked of the source, which knows the files. A failing one
        is left to its retry schedule (its backoff)."""
        changed = getattr(self._source, "source_changed", None)
        if changed is None:
            return []
        with self._lock:
            held = [
                profile
                for name, profile in self._config.profiles.items()
                if (creds := self._current.get(name)) is not None
                and creds.static
                and name not in self._running
                and not (self._states.get(name) or ProfileState()).consecutive_failures
            ]
        return [profile.name for profile in held if changed(profile)]

    def recheck_sources(self) -> None:
        """Ask the source when each profile's own source runs out (a certificate, an SSO
        session); the views, alerts and metrics read what this stored."""
        expiry = getattr(self._source, "source_expiry", None)
        found = (
            {}
            if expiry is None
            else {name: expiry(profile) for name, profile in self._config.profiles.items()}
        )
        with self._lock:
            self._source_ends = {name: when for name, when in found.items() if when is not None}

    def alert_grace(self, name: str) -> timedelta:
        """How late past its refresh point a healthy daemon may land a profile's refresh: one
        wake-up (it catches a lost job), the retry delay it is in, one STS call's timeouts."""
        with self._lock:
            return self._grace_for(self._retry_in.get(name, 0.0))

    def _grace_for(self, retry: float) -> timedelta:
        return timedelta(seconds=self.wakeup_interval + retry + 2 * self._config.sts.timeout)

    def _update_gauges(self) -> None:
        if self.metrics is None:
            return
        self.metrics.set_profiles(len(self._config.profiles))
        with self._lock:
            ends = dict(self._source_ends)
        self.metrics.set_source_expiries(ends)
        if self.alerts is not None:
            self.metrics.set_alerts_firing(self.alerts.firing_count())

    def snapshot(self) -> Snapshot:
        """Copies of every configured profile's state and expiries, and the engine's pulse."""
        with self._lock:
            ends = dict(self._source_ends)
            names = list(self._config.profiles)
            return Snapshot(
                states={n: _copied(self._states.get(n), ends.get(n)) for n in names},
                in_memory={n: expiry(self._current.get(n)) for n in names},
                on_disk={n: expiry(self._written.get(n)) for n in names},
                first_pass_done=self._first_pass_done.is_set(),
                heartbeat=self._heartbeat,
                writer_alive=self._writer.alive(),
            )

    def status_facts(
        self, now: datetime
    ) -> tuple[int, list[tuple[str, str]], tuple[str, float] | None]:
        """(fresh, failing, next refresh) for systemd's status line, every 10 s: read in
        place, where `snapshot` would copy every state."""
        with self._lock:
            fresh = 0
            failing: list[tuple[str, str]] = []
            soonest: tuple[str, datetime] | None = None
            for name in self._config.profiles:
                creds = self._current.get(name)
                fresh += creds is not None and creds.valid_at(now)
                state = self._states.get(name)
                if state is None:
                    continue
                if state.last_error_code:
                    failing.append((name, state.last_error_code))
                at = state.next_attempt
                if at is not None and (soonest is None or at < soonest[1]):
                    soonest = (name, at)
        upcoming = None if soonest is None else (soonest[0], (soonest[1] - now).total_seconds())
        return fresh, failing, upcoming

    def first_pass_done(self) -> bool:
        """`snapshot().first_pass_done` without the copy of every profile's state."""
        return self._first_pass_done.is_set()

    def pulse(self) -> tuple[float, bool]:
        """(heartbeat, writer alive): the liveness facts, without a snapshot."""
        return self._heartbeat, self._writer.alive()

    def all_on_disk(self, now: datetime) -> bool:
        """Every profile holding valid credentials in memory has valid ones on disk."""
        with self._lock:
            for name in self._config.profiles:
                held = expiry(self._current.get(name))
                if held is not None and held > now:
                    written = expiry(self._written.get(name))
                    if written is None or written <= now:
                        return False
        return True

    def take_dirty(self) -> bool:
        """Whether the state changed since the last call (the daemon then saves it)."""
        dirty = self._dirty.is_set()
        self._dirty.clear()
        return dirty

    def flush(self, timeout: float) -> bool:
        """Wait until every submitted write is on disk; False when `timeout` ran out."""
        return self._writer.flush(timeout=timeout)

    def knows(self, name: str) -> bool:
        return name in self._config.profiles

    def on_disk(self, name: str) -> Credentials | None:
        """What the file holds for a profile, for the container credentials endpoint."""
        with self._lock:
            return self._written.get(name) if name in self._config.profiles else None


def _copied(state: ProfileState | None, source_end: datetime | None) -> ProfileState:
    """A copy with the source's end filled in; `dataclasses.replace` costs 20x more, and a
    1,000-profile snapshot makes a thousand of these."""
    clone = ProfileState.__new__(ProfileState)
    clone.__dict__.update((state or ProfileState()).__dict__)
    clone.source_expires_at = source_end
    return clone
