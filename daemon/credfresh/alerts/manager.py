"""The stateful side of alerts: holds the state, feeds the rules, hands events to the sinks."""

from __future__ import annotations

import collections
import socket
import threading
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Final, cast

from credfresh.alerts import rules
from credfresh.alerts.records import AlertEvent, AlertState, Step
from credfresh.alerts.rules import Policy, ProfileFacts
from credfresh.config.model import AlertSettings
from credfresh.context import Clock, SystemClock
from credfresh.observe.logs import Logger, Redactor

if TYPE_CHECKING:
    from credfresh.alerts.sinks import Sink

#: Events waiting for the sink worker; past this the oldest is dropped (and logged).
DEFAULT_QUEUE_SIZE: Final = 256

_Item = tuple[dict[str, object], tuple["Sink", ...]]


def _sink_settings(settings: AlertSettings) -> tuple[object, ...]:
    return (settings.webhook_url, tuple(settings.command), settings.command_timeout)


def _build_sinks(
    settings: AlertSettings, environ: Mapping[str, str], redactor: Redactor | None
) -> tuple[Sink, ...]:
    """`sinks.build_sinks`, its module (urllib, urllib3) loaded only when a sink is set."""
    if not settings.webhook_url and not settings.command:
        return ()
    from credfresh.alerts.sinks import build_sinks

    return build_sinks(settings, environ, redactor)


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
    """Thread-safe holder of the alert state; observations only compute, enqueue and return events.

    Every string in and every event out goes through the Redactor. Sinks run on one worker
    thread (started by the first event) with a bounded queue, so a hung sink delays nothing.
    `environ` is read for the webhook's proxy settings only.
    """

    def __init__(  # noqa: PLR0913  a manager built from injected parts
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
        clock: Clock | None = None,
    ) -> None:
        if logger is None:
            import structlog

            logger = cast(Logger, structlog.get_logger("credfresh.alerts"))
        self._log = logger
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._redactor = redactor
        self._environ: Mapping[str, str] = (
            types.MappingProxyType({}) if environ is None else environ
        )
        self._settings = settings
        self._policy = Policy.from_settings(settings, host or socket.gethostname())
        self._sinks = (
            tuple(sinks) if sinks is not None else _build_sinks(settings, self._environ, redactor)
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
            new_sinks = _build_sinks(settings, self._environ, self._redactor)
        with self._lock:
            self._settings = settings
            self._policy = Policy.from_settings(settings, self._policy.host)
            if new_sinks is not None:
                self._retired.extend(self._sinks)
                self._sinks = new_sinks

    # Observations ----------------------------------------------------------------------------

    def refresh_failed(  # noqa: PLR0913  the facts of one failure, as rules.on_refresh_failed
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
            lambda state, policy: rules.on_refresh_failed(
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
            lambda state, policy: rules.on_refresh_succeeded(
                state, policy, profile=profile, now=now, expires_at=expires_at
            )
        )

    def tick(self, now: datetime, profiles: Mapping[str, ProfileFacts]) -> tuple[AlertEvent, ...]:
        """Every ~30 s, with facts (what is on disk) for every configured profile."""
        return self._apply(
            lambda state, policy: rules.on_tick(state, policy, now=now, profiles=profiles)
        )

    def write_failed(
        self, code: str, message: str, now: datetime, permanent: bool = True
    ) -> tuple[AlertEvent, ...]:
        clean = self._redactor.text
        return self._apply(
            lambda state, policy: rules.on_write_failed(
                state,
                policy,
                code=clean(code),
                message=clean(message),
                now=now,
                permanent=permanent,
            )
        )

    def write_succeeded(self, now: datetime) -> tuple[AlertEvent, ...]:
        return self._apply(lambda state, policy: rules.on_write_succeeded(state, policy, now=now))

    def hook_failed(
        self, hook: str, failures: int, message: str, code: str, now: datetime
    ) -> tuple[AlertEvent, ...]:
        clean = self._redactor.text(message)
        return self._apply(
            lambda state, policy: rules.on_hook_failed(
                state, policy, hook=hook, failures=failures, message=clean, code=code, now=now
            )
        )

    def hook_succeeded(self, hook: str, now: datetime) -> tuple[AlertEvent, ...]:
        return self._apply(
            lambda state, policy: rules.on_hook_succeeded(state, policy, hook=hook, now=now)
        )

    def config_rejected(self, errors: Sequence[str], now: datetime) -> tuple[AlertEvent, ...]:
        clean = [self._redactor.text(e) for e in errors]
        return self._apply(
            lambda state, policy: rules.on_config_rejected(state, policy, errors=clean, now=now)
        )

    def config_applied(self, now: datetime) -> tuple[AlertEvent, ...]:
        """After any reload that leaves a valid config in force, applied or unchanged."""
        return self._apply(lambda state, policy: rules.on_config_applied(state, policy, now=now))

    def profile_removed(self, profile: str, now: datetime | None = None) -> tuple[AlertEvent, ...]:
        when = now if now is not None else self._clock.now()
        return self._apply(
            lambda state, policy: rules.on_profile_removed(state, policy, profile=profile, now=when)
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
        from credfresh.alerts.sinks import SinkError

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
