"""The refresh engine: one date job per profile on an APScheduler, and one batching writer.

APScheduler's defaults silently drop a late one-shot job (misfire_grace_time=1 s), and that
profile would never be refreshed again: every job here runs however late, coalesced, one
instance at a time. A wake-up every 30 s re-checks due times, because the scheduler's
monotonic wait stops during suspend.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from credfresh.config.model import Config, Profile
from credfresh.credentials import Credentials, format_time
from credfresh.credfile import format as credfile
from credfresh.credfile import store
from credfresh.engine import policy as refresh
from credfresh.engine.batcher import BatchWriter
from credfresh.engine.state import ProfileState
from credfresh.errors import CredfileError
from credfresh.sources.sts import Failure, StsClients, StsError, classify

if TYPE_CHECKING:
    from structlog.stdlib import BoundLogger

    from credfresh.alerts.manager import AlertManager
    from credfresh.observe.logs import Redactor
    from credfresh.observe.metrics import Metrics, RefreshResult

WAKEUP_INTERVAL: Final = 30.0
WAKEUP_JOB: Final = "__credfresh_wakeup__"
SKEW_REPORT: Final = timedelta(minutes=5)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def same_on_disk(found: Credentials | None, wrote: Credentials) -> bool:
    """Pure: does a section read back from the file hold what credfresh wrote?

    The file keeps times to the second, so times compare as written, not as held.
    """
    return found is not None and (
        found.access_key_id,
        found.secret_access_key,
        found.session_token,
        format_time(found.expiration),
    ) == (
        wrote.access_key_id,
        wrote.secret_access_key,
        wrote.session_token,
        format_time(wrote.expiration),
    )


class Engine:
    """Keeps every profile of a config fresh; the daemon builds one and drives its life."""

    def __init__(
        self,
        config: Config,
        *,
        log: BoundLogger,
        redactor: Redactor,
        clients_factory: Callable[[Config], StsClients],
        alerts: AlertManager | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], datetime] = _utcnow,
        wakeup_interval: float = WAKEUP_INTERVAL,
        rng: random.Random | None = None,
    ) -> None:
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.schedulers.background import BackgroundScheduler

        self.config = config
        self.log = log
        self.redactor = redactor
        self.alerts = alerts
        self.metrics = metrics
        self.clock = clock
        self.wakeup_interval = wakeup_interval
        self._clients_factory = clients_factory
        self.clients = clients_factory(config)
        self._rng = rng or random.Random()
        self._lock = threading.RLock()
        self.states: dict[str, ProfileState] = {}
        self.current: dict[str, Credentials] = {}
        self.written: dict[str, Credentials] = {}
        # A successful refresh's credentials until the writer confirms them on disk: only
        # then do the profile's alerts resolve.
        self._landing: dict[str, Credentials] = {}
        self._retry_in: dict[str, float] = {}  # the retry delay a failing profile is in
        self._running: set[str] = set()
        self._pending: dict[str, float] = {}  # handed to the scheduler, at (monotonic)
        self._urgent: set[str] = set()
        self._secrets: dict[str, list[Credentials]] = {}
        self._first_pass: set[str] = set()
        self.first_pass_done = threading.Event()
        self.on_first_pass: Callable[[], None] | None = None
        self.state_dirty = threading.Event()
        self.heartbeat = time.monotonic()
        self._skew_reported = False
        self._expired_reported: set[str] = set()
        self.writer = self._make_writer(config)
        self.scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={
                "default": ThreadPoolExecutor(config.sts.max_concurrency),
                "control": ThreadPoolExecutor(1),
            },
            job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1},
        )

    # ----- life -----------------------------------------------------------------------

    def start(self, saved: Mapping[str, ProfileState]) -> None:
        """Keep what is fresh on disk (a restart costs no STS call), refresh the rest now."""
        view = self._read_file()
        now = self.clock()
        with self._lock:
            for name, profile in self.config.profiles.items():
                self.states[name] = saved.get(name) or ProfileState()
                creds = view.managed.get(name) if view else None
                if creds is not None:
                    self.current[name] = creds
                    self.written[name] = creds
                    self._remember_secrets(name, creds)
                kind = refresh.state_of(now, creds, profile.refresh_before)
                self.states[name].state = kind
                self.states[name].expires_at = creds.expiration if creds else None
                if kind != "fresh":
                    self._first_pass.add(name)
            if not self._first_pass:
                self.first_pass_done.set()
        self.writer.start()
        from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED

        self.scheduler.add_listener(self._skipped, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
        self.scheduler.start()
        self.scheduler.add_job(
            self.wakeup,
            "interval",
            seconds=self.wakeup_interval,
            id=WAKEUP_JOB,
            executor="control",
            replace_existing=True,
        )
        for name, profile in self.config.profiles.items():
            source = profile.source_profile
            if profile.chained and name in self._first_pass and source in self._first_pass:
                # Waits for its source: `_wake_dependants` runs it once the source is fresh,
                # and the wake-up catches it should the source fail for long.
                self._schedule(name, now + timedelta(seconds=self.wakeup_interval))
                continue
            self._schedule_next(name, now)
        self._update_gauges()

    def stop(self, grace: float) -> bool:
        """Stop scheduling, give in-flight calls `grace` seconds, write what finished."""
        self.scheduler.shutdown(wait=False)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            with self._lock:
                if not self._running:
                    break
            time.sleep(0.05)
        with self._lock:
            idle = not self._running
        self.writer.stop(timeout=max(1.0, deadline - time.monotonic()))
        return idle

    # ----- scheduling -----------------------------------------------------------------

    def _schedule(self, name: str, when: datetime) -> None:
        self.scheduler.add_job(
            self._job,
            "date",
            run_date=when,
            id=name,
            args=[name],
            replace_existing=True,
        )
        with self._lock:
            self._pending[name] = time.monotonic()
            state = self.states.get(name)
            if state is not None:
                state.next_attempt = when
        self.state_dirty.set()

    def _schedule_next(self, name: str, now: datetime) -> None:
        """Due profiles run now; fresh ones at their jittered due time (always earlier)."""
        profile = self.config.profiles[name]
        creds = self.current.get(name)
        if creds is None or refresh.is_due(now, creds, profile.refresh_before):
            self._schedule(name, now)
        else:
            self._schedule(name, refresh.jittered_due_at(creds, profile.refresh_before, self._rng))

    def expected_run(self, name: str, now: datetime) -> datetime | None:
        """When a profile should next run: its due time, or its retry time while failing."""
        with self._lock:
            state = self.states.get(name)
            creds = self.current.get(name)
            profile = self.config.profiles.get(name)
        if profile is None or state is None:
            return None
        if state.consecutive_failures and state.next_attempt is not None:
            return state.next_attempt
        if creds is None:
            return now
        return refresh.due_at(creds, profile.refresh_before)

    # ----- the refresh job ------------------------------------------------------------

    def _job(self, name: str) -> None:
        self.heartbeat = time.monotonic()
        with self._lock:
            profile = self.config.profiles.get(name)
            self._pending.pop(name, None)
            if profile is None or name in self._running:
                return
            self._running.add(name)
        try:
            self._refresh(profile)
        finally:
            with self._lock:
                self._running.discard(name)
                self._first_pass.discard(name)
                finished = not self._first_pass and not self.first_pass_done.is_set()
                if not self._first_pass:
                    self.first_pass_done.set()
            if finished and self.on_first_pass is not None:
                self.on_first_pass()
            self.heartbeat = time.monotonic()

    def _skipped(self, event: Any) -> None:
        """APScheduler dropped a run (max_instances=1: a retry came due while its own job was
        still finishing). A dropped one-shot job is gone, so schedule it again, from another
        thread: this listener runs inside the scheduler's own loop.
        """
        name = str(getattr(event, "job_id", ""))
        if name == WAKEUP_JOB or not name:
            return
        with self._lock:
            self._pending.pop(name, None)
        timer = threading.Timer(0.2, self._reschedule_skipped, args=(name,))
        timer.daemon = True
        timer.start()

    def _reschedule_skipped(self, name: str) -> None:
        with self._lock:
            busy = name in self._running or name in self._pending
        if not busy and name in self.config.profiles and self.scheduler.get_job(name) is None:
            self._schedule(name, self.clock())

    def _source_for(self, profile: Profile) -> Credentials | None:
        if not profile.chained or profile.source_profile is None:
            return None
        with self._lock:
            source = self.current.get(profile.source_profile)
        if source is None or source.expiration <= self.clock():
            return None
        return source

    def _refresh(self, profile: Profile) -> None:
        started = time.monotonic()
        source = self._source_for(profile)
        try:
            if profile.chained and source is None:
                raise StsError(classify("source_unavailable", "source has no valid credentials"))
            issued = self.clients.assume(profile, source)
        except StsError as exc:
            self._failed(profile, exc.failure, time.monotonic() - started)
            return
        creds = issued.credentials
        self._remember_secrets(profile.name, creds)
        took = time.monotonic() - started
        self._report_skew(issued.skew)
        with self._lock:
            if self.config.profiles.get(profile.name) != profile:
                return
            self.current[profile.name] = creds
            state = self.states.setdefault(profile.name, ProfileState())
            recovered = state.consecutive_failures > 0
            state.state = "fresh"
            state.expires_at = creds.expiration
            state.last_success = creds.issued
            state.consecutive_failures = 0
            state.failing_since = None
            state.last_error_code = None
            state.last_error_message = None
            state.last_error_permanent = False
            self._expired_reported.discard(profile.name)
            self._landing[profile.name] = creds
            self._retry_in.pop(profile.name, None)
        with self._lock:
            urgent = profile.name in self._urgent
            self._urgent.discard(profile.name)
        self.writer.submit({profile.name: creds}, urgent=urgent)
        self.log.info(
            "refreshed",
            profile=profile.name,
            role_arn=profile.role_arn,
            expires_at=format_time(creds.expiration),
            took_ms=round(took * 1000),
            **({"recovered": True} if recovered else {}),
        )
        if self.metrics is not None:
            self.metrics.refresh(profile.name, "success", took)
            self.metrics.set_expiry(profile.name, creds.expiration.timestamp())
            self.metrics.set_last_success(profile.name, creds.issued.timestamp())
        self._schedule_next(profile.name, self.clock())
        self._wake_dependants(profile.name)

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

    def _wake_dependants(self, source: str) -> None:
        """A chained profile waiting for this source runs now; fresh dependants are left be."""
        now = self.clock()
        for name, profile in self.config.profiles.items():
            if profile.chained and profile.source_profile == source:
                with self._lock:
                    state = self.states.get(name)
                    creds = self.current.get(name)
                    waiting = state is not None and (
                        state.last_error_code == "source_unavailable"
                        or refresh.state_of(now, creds, profile.refresh_before) != "fresh"
                    )
                if waiting:
                    self._schedule(name, now)

    def _failed(self, profile: Profile, failure: Failure, took: float) -> None:
        now = self.clock()
        message = self.redactor.text(failure.message)
        with self._lock:
            if self.config.profiles.get(profile.name) != profile:
                return
            state = self.states.setdefault(profile.name, ProfileState())
            attempt = state.consecutive_failures
            state.consecutive_failures += 1
            state.failing_since = state.failing_since or now
            state.last_error_code = failure.code
            state.last_error_message = message
            state.last_error_permanent = failure.permanent
            creds = self.current.get(profile.name)
            state.state = refresh.state_of(now, creds, profile.refresh_before)
            disk = self.written.get(profile.name)
        delay = refresh.retry_delay(
            attempt,
            permanent=failure.permanent,
            initial=self.config.retry.initial,
            maximum=self.config.retry.max,
            rng=self._rng,
        )
        with self._lock:
            self._retry_in[profile.name] = delay
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
                refresh_at=self._refresh_point(profile, disk) if disk else None,
                grace=self.alert_grace(profile.name),
            )
            self._update_gauges()
        self._schedule(profile.name, now + timedelta(seconds=delay))

    def _report_skew(self, skew: timedelta) -> None:
        if abs(skew) > SKEW_REPORT and not self._skew_reported:
            self._skew_reported = True
            self.log.warning(
                "clock_skew",
                skew_seconds=round(skew.total_seconds(), 1),
                hint="this machine's clock differs from STS's: check NTP; expiries are corrected",
            )
        elif abs(skew) <= SKEW_REPORT:
            self._skew_reported = False

    # ----- the writer -----------------------------------------------------------------

    def _make_writer(self, config: Config) -> BatchWriter:
        path, owner = config.credentials_file, config.owner

        def write(
            updates: Mapping[str, Credentials], removals: Collection[str]
        ) -> Mapping[str, CredfileError]:
            adopt = [n for n in updates if (p := self.config.profiles.get(n)) and p.adopt]
            result = store.write_profiles(
                path, owner, updates, removals, adopt=adopt, on_event=self._file_event
            )
            return result.conflicts

        def written(
            updates: Mapping[str, Credentials], removals: Collection[str], took: float
        ) -> None:
            if path == self.config.credentials_file and owner == self.config.owner:
                self._written(updates, removals, took)

        return BatchWriter(
            write,
            on_written=written,
            on_conflict=self._conflict,
            on_failed=self._write_failed,
        )

    def _file_event(self, name: str, fields: Mapping[str, object]) -> None:
        self.log.info(name, **fields)

    def _written(
        self, updates: Mapping[str, Credentials], removals: Collection[str], took: float
    ) -> None:
        """The writer renamed these into place: only now do views and alerts see them."""
        with self._lock:
            self.written.update(updates)
            for name in removals:
                self.written.pop(name, None)
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
        if self.alerts is not None:
            now = self.clock()
            for name, creds in sorted(landed.items()):
                self.alerts.refresh_succeeded(name, now, creds.expiration)
            self.alerts.write_succeeded(now)
            self._update_gauges()
        self.state_dirty.set()

    def _conflict(self, name: str, error: CredfileError) -> None:
        profile = self.config.profiles.get(name)
        if profile is None:
            return
        with self._lock:
            self.current.pop(name, None)
        self._failed(profile, classify("section_conflict", str(error)), 0.0)

    def _write_failed(self, error: CredfileError, retry_in: float) -> None:
        self.log.error(
            "write_failed",
            error_code=error.code,
            message=self.redactor.text(str(error)),
            path=str(self.config.credentials_file),
            retry_in=retry_in,
        )
        if self.alerts is not None:
            self.alerts.write_failed(error.code, self.redactor.text(str(error)), self.clock())

    def _read_file(self) -> credfile.FileView | None:
        try:
            return store.read_managed(self.config.credentials_file, self.config.owner)
        except CredfileError as exc:
            self.log.error(
                "file_unreadable",
                error_code=exc.code,
                message=str(exc),
                path=str(self.config.credentials_file),
            )
            return None

    # ----- the wake-up ----------------------------------------------------------------

    def wakeup(self) -> None:
        """Every 30 s: beat, re-check due times, restore edited sections, report expiry."""
        self.heartbeat = time.monotonic()
        now = self.clock()
        self._recheck_jobs(now)
        self._heal(now)
        self._report_expired(now)
        if self.alerts is not None:
            self.alerts.tick(now, self.alert_facts())
        self._update_gauges()
        self.heartbeat = time.monotonic()

    def _recheck_jobs(self, now: datetime) -> None:
        for name in list(self.config.profiles):
            job = self.scheduler.get_job(name)
            with self._lock:
                handed = self._pending.get(name)
                about_to_run = (
                    job is None
                    and handed is not None
                    and time.monotonic() - handed < self.wakeup_interval
                )
                if name in self._running or about_to_run:
                    continue  # running, or handed to the executor a moment ago
            expected = self.expected_run(name, now)
            if expected is None:
                continue
            if job is None or job.next_run_time is None:
                self._schedule(name, max(expected, now))
            elif expected <= now < job.next_run_time:
                self._schedule(name, now)
        self.scheduler.wakeup()

    def _heal(self, now: datetime) -> None:
        """A managed section that differs from what credfresh last wrote is written again.

        Only while no write is pending: until then the file rightly lags `current`.
        """
        if self.writer.pending():
            return
        view = self._read_file()
        if view is None or self.writer.pending():
            return
        restore: dict[str, Credentials] = {}
        with self._lock:
            for name, wrote in self.written.items():
                if name not in self.config.profiles:
                    continue
                newest = self.current.get(name, wrote)
                if not same_on_disk(view.managed.get(name), wrote) and newest.expiration > now:
                    restore[name] = newest
        for name in sorted(restore):
            found = view.managed.get(name)
            self.log.warning(
                "section_restored",
                profile=name,
                reason="missing" if found is None else "changed",
            )
        if restore:
            self.writer.submit(restore)

    def _report_expired(self, now: datetime) -> None:
        for name, profile in self.config.profiles.items():
            with self._lock:
                creds = self.current.get(name)
                state = self.states.get(name)
                if state is not None:
                    state.state = refresh.state_of(now, creds, profile.refresh_before)
                newly = (
                    creds is not None
                    and creds.expiration <= now
                    and name not in self._expired_reported
                )
                if newly:
                    self._expired_reported.add(name)
            if newly and creds is not None:
                self.log.error(
                    "credentials_expired",
                    profile=name,
                    role_arn=profile.role_arn,
                    expired_at=format_time(creds.expiration),
                    error_code=state.last_error_code if state else None,
                )

    # ----- reload ---------------------------------------------------------------------

    def apply(self, new: Config) -> dict[str, list[str]]:
        """Switch to a validated config: fetch added and changed profiles now, remove the
        sections of removed ones, and leave untouched ones with their credentials and jobs.
        """
        now = self.clock()
        with self._lock:
            old = self.config
            added = sorted(set(new.profiles) - set(old.profiles))
            removed = sorted(set(old.profiles) - set(new.profiles))
            changed = sorted(
                name
                for name in set(old.profiles) & set(new.profiles)
                if old.profiles[name].sts_identity() != new.profiles[name].sts_identity()
            )
            retimed = sorted(
                name
                for name in set(old.profiles) & set(new.profiles)
                if name not in changed and old.profiles[name] != new.profiles[name]
            )
            moved = (old.credentials_file, old.owner) != (new.credentials_file, new.owner)
            self.config = new
            for name in removed:
                self.states.pop(name, None)
                self.current.pop(name, None)
                self._landing.pop(name, None)
                self._retry_in.pop(name, None)
            self._urgent.update(added + changed)
            for name in added + changed:
                previous = self.states.get(name)
                self.states[name] = ProfileState(
                    expires_at=previous.expires_at if previous else None
                )
        if old.sts != new.sts:
            self.clients = self._clients_factory(new)
        for name in removed:
            if self.scheduler.get_job(name) is not None:
                self.scheduler.remove_job(name)
            if self.alerts is not None:
                self.alerts.profile_removed(name)
            if self.metrics is not None:
                self.metrics.remove_profile(name)
        if moved:
            self._move_file(old, removed)
        elif removed:
            self.writer.submit(removals=removed)
        for name in added + changed:
            self._schedule(name, now)
        for name in retimed:
            self._schedule_next(name, now)
        self._update_gauges()
        return {"added": added, "removed": removed, "changed": changed, "retimed": retimed}

    def _move_file(self, old: Config, removed: Collection[str]) -> None:
        """A new credentials_file (or owner): write every section there, then drop the old."""
        old_writer = self.writer
        with self._lock:
            old_names = set(self.written) | set(removed)
            keep = {
                name: creds
                for name, creds in self.current.items()
                if name in self.config.profiles and creds.expiration > self.clock()
            }
            self.written = {}
        old_writer.submit(removals=old_names)
        old_writer.stop(timeout=10.0)
        self.writer = self._make_writer(self.config)
        self.writer.start()
        self.writer.submit(keep)
        self.log.info(
            "credentials_file_moved",
            old=str(old.credentials_file),
            new=str(self.config.credentials_file),
            profiles=sorted(keep),
        )

    # ----- views for health, status and alerts ----------------------------------------

    def alert_facts(self) -> dict[str, Any]:
        """What the alert rules judge: the credentials ON DISK, their refresh point, the grace.

        Not `current`: credentials issued but not yet written help no consumer.
        """
        from credfresh.alerts.rules import ProfileFacts

        with self._lock:
            return {
                name: ProfileFacts(
                    role_arn=profile.role_arn,
                    expires_at=disk.expiration if disk else None,
                    refresh_at=self._refresh_point(profile, disk) if disk else None,
                    grace=self.alert_grace(name),
                )
                for name, profile in self.config.profiles.items()
                for disk in [self.written.get(name)]
            }

    def _refresh_point(self, profile: Profile, creds: Credentials) -> datetime:
        """The refresh rule's due time for these credentials: refresh.py alone decides it."""
        return refresh.due_at(creds, profile.refresh_before)

    def alert_grace(self, name: str) -> timedelta:
        """How late past its refresh point a healthy daemon may land a profile's refresh.

        One wake-up interval (the wake-up catches a late or lost job), the retry delay the
        profile is in, and one STS call's connect and read timeouts.
        """
        with self._lock:
            retry = self._retry_in.get(name, 0.0)
        return timedelta(seconds=self.wakeup_interval + retry + 2 * self.config.sts.timeout)

    def _update_gauges(self) -> None:
        if self.metrics is None:
            return
        self.metrics.set_profiles(len(self.config.profiles))
        if self.alerts is not None:
            self.metrics.set_alerts_firing(self.alerts.firing_count())

    def snapshot(self) -> dict[str, tuple[ProfileState, Credentials | None]]:
        with self._lock:
            return {
                name: (self.states.get(name) or ProfileState(), self.current.get(name))
                for name in self.config.profiles
            }

    def disk_expiries(self) -> dict[str, datetime | None]:
        """Each configured profile's expiry as last written to disk (None: not on disk)."""
        with self._lock:
            return {
                name: self.written[name].expiration if name in self.written else None
                for name in self.config.profiles
            }

    def on_disk(self, name: str) -> Credentials | None:
        """What the file holds for a profile, for the container credentials endpoint."""
        with self._lock:
            return self.written.get(name) if name in self.config.profiles else None
