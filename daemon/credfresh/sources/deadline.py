"""An overall deadline for blocking network calls: botocore's timeouts bound each read only,
and an endpoint trickling one byte a second never trips a read timeout.

Each call runs in a helper thread of a bounded pool (helpers end when idle); past the deadline
the caller gets DeadlineExceeded, the late result is dropped, and the helper's sockets are shut
down so it ends too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from credfresh.context import Clock, SystemClock
from credfresh.threads import ElasticPool

T = TypeVar("T")


class DeadlineExceeded(Exception):
    """The call did not finish within its deadline and was abandoned."""


@dataclasses.dataclass(eq=False)
class _Outcome(Generic[T]):
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    value: T | None = None
    error: BaseException | None = None
    ident: int | None = None
    abandoned: bool = False


class CallGuard:
    """Runs calls under a deadline in at most `limit` helper (daemon) threads; when all are
    busy a call waits for one within its own deadline.
    """

    def __init__(
        self, limit: int, *, name: str = "credfresh-call", clock: Clock | None = None
    ) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1 (got {limit})")
        self._slots = threading.BoundedSemaphore(limit)
        self._pool = ElasticPool(limit, name=name)
        self._clock: Clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._tracked: dict[int, list[Any]] = {}
        self._abandoned: set[int] = set()
        self.abandoned = 0

    def run(self, call: Callable[[], T], timeout: float) -> T:
        """`call()`'s result or exception; DeadlineExceeded after `timeout` seconds."""
        deadline = self._clock.monotonic() + timeout
        if not self._slots.acquire(timeout=max(0.0, timeout)):
            raise DeadlineExceeded("no free call slot within the deadline")
        outcome: _Outcome[T] = _Outcome()
        try:
            self._pool.submit(self._helper, call, outcome)
        except BaseException:
            self._slots.release()
            raise
        if not outcome.done.wait(max(0.0, deadline - self._clock.monotonic())):
            self._cut(outcome)
            raise DeadlineExceeded(f"no complete answer within {timeout:g} s")
        if outcome.error is not None:
            raise outcome.error
        return outcome.value  # type: ignore[return-value]

    def in_flight(self) -> int:
        """Calls whose helper still runs, abandoned ones included (they end once cut)."""
        with self._lock:
            return len(self._tracked)

    def track(self, connection: Any) -> None:
        """Remember a connection (its `sock` is cut on abandon) the current helper uses; a
        no-op outside a helper. An abandoned helper gets DeadlineExceeded: no new connection.
        """
        ident = threading.get_ident()
        with self._lock:
            if ident in self._abandoned:
                raise DeadlineExceeded("the call was abandoned")
            tracked = self._tracked.get(ident)
            if tracked is not None and all(item is not connection for item in tracked):
                tracked.append(connection)

    def _helper(self, call: Callable[[], T], outcome: _Outcome[T]) -> None:
        ident = threading.get_ident()
        with self._lock:
            start = not outcome.abandoned  # a call abandoned before it began never begins
            if start:
                outcome.ident = ident
                self._tracked.setdefault(ident, [])
        try:
            if start:
                outcome.value = call()
        except BaseException as exc:  # handed to the caller, who decides
            outcome.error = exc
        finally:
            with self._lock:
                self._tracked.pop(ident, None)
                self._abandoned.discard(ident)
                outcome.done.set()
            self._slots.release()

    def _cut(self, outcome: _Outcome[Any]) -> None:
        """Abandon the call and shut down its helper's sockets: its blocked read returns and
        the helper ends. Decided under the lock the helper finishes under: a pool thread may
        take its next call the moment this one ends, and that call must not be cut."""
        with self._lock:
            self.abandoned += 1
            outcome.abandoned = True
            ident = outcome.ident
            if ident is None or outcome.done.is_set() or ident not in self._tracked:
                return
            self._abandoned.add(ident)
            connections = list(self._tracked[ident])
        for connection in connections:
            sock = getattr(connection, "sock", None)
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def within_deadline(guard: CallGuard, call: Callable[[], T], deadline: float, profile: str) -> T:
    """`guard.run`, with a missed deadline as a transient `timeout` for `profile` (the
    abandoned call's result is dropped, never reaching the state). Every source uses it."""
    from credfresh.sources.classify import SourceError, classify

    try:
        return guard.run(call, deadline)
    except DeadlineExceeded:
        raise SourceError(
            classify("timeout", f"no complete answer within {deadline:g} s"), profile
        ) from None
