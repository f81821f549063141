"""An overall deadline for blocking network calls: botocore's timeouts bound each read only,
and an endpoint trickling one byte a second never trips a read timeout.

Two ways to hold it:
- `CallGuard` runs each call in a helper thread of a bounded pool (helpers end when idle); past
  the deadline the caller gets DeadlineExceeded, the late result is dropped, and the helper's
  sockets are shut down so it ends too. It bounds any call, sockets or not.
- `CutGuard` runs the call in the caller's own thread, and one timer thread shuts down the
  call's sockets at the deadline, so its blocked read returns. Only opening a connection (a
  name lookup no socket shutdown interrupts) goes through a `CallGuard` helper. A hop per call
  costs two thread switches; STS answers arrive on reused connections.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import itertools
import socket
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from credfresh.context import Clock, SystemClock
from credfresh.threads import IDLE_EXIT, ElasticPool

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
        _shut(connections)


def _shut(connections: list[Any]) -> None:
    """Shut down each connection's socket (a blocked read on it returns at once)."""
    for connection in connections:
        sock = getattr(connection, "sock", None)
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@dataclasses.dataclass(eq=False)
class _Call:
    deadline: float
    connections: list[Any] = dataclasses.field(default_factory=list)
    cut: bool = False
    done: bool = False


class CutGuard:
    """Runs calls under a deadline in the caller's thread: at the deadline a timer thread (one
    per guard, ended when idle) shuts down the sockets the call `track`ed, and the call raises
    DeadlineExceeded. A call that opens a connection does it through `connect`, in a helper
    (at most `limit` at once) that keeps the deadline however long the name lookup hangs.
    """

    def __init__(
        self,
        limit: int,
        *,
        name: str = "credfresh-call",
        clock: Clock | None = None,
        idle_exit: float = IDLE_EXIT,
    ) -> None:
        self._name = name
        self._idle_exit = idle_exit
        self._clock: Clock = clock or SystemClock()
        self._connects = CallGuard(limit, name=f"{name}-connect", clock=self._clock)
        self._cond = threading.Condition(threading.Lock())
        self._calls: dict[int, _Call] = {}
        self._due: list[tuple[float, int, _Call]] = []
        self._serial = itertools.count()
        self._timer: threading.Thread | None = None
        self.abandoned = 0

    def run(self, call: Callable[[], T], timeout: float) -> T:
        """`call()`'s result or exception; DeadlineExceeded once `timeout` seconds cut it."""
        ident = threading.get_ident()
        entry = _Call(self._clock.monotonic() + timeout)
        with self._cond:
            self._calls[ident] = entry
            heapq.heappush(self._due, (entry.deadline, next(self._serial), entry))
            if self._timer is None:
                self._timer = threading.Thread(
                    target=self._watch, name=f"{self._name}-timer", daemon=True
                )
                self._timer.start()
            elif self._due[0][2] is entry:
                self._cond.notify()
        try:
            result = call()
        except BaseException:
            if entry.cut:
                raise DeadlineExceeded(f"no complete answer within {timeout:g} s") from None
            raise
        finally:
            with self._cond:
                entry.done = True
                entry.connections.clear()
                del self._calls[ident]
                due = self._due
                while due and due[0][2].done:
                    heapq.heappop(due)
                if not due:  # the timer sleeps toward a deadline now moot: idle from here
                    self._cond.notify()
        if entry.cut:
            raise DeadlineExceeded(f"no complete answer within {timeout:g} s")
        return result

    def in_flight(self) -> int:
        """Calls running, and connections still being opened for calls that gave up on them."""
        with self._cond:
            running = len(self._calls)
        return running + self._connects.in_flight()

    def watching(self) -> bool:
        """Whether the timer thread runs (it ends once idle)."""
        with self._cond:
            return self._timer is not None

    def track(self, connection: Any) -> None:
        """Remember a connection (its `sock` is shut down at the deadline) the current call
        uses; a no-op outside `run`. A call already cut gets DeadlineExceeded."""
        with self._cond:
            entry = self._calls.get(threading.get_ident())
            if entry is None:
                return
            if entry.cut:
                raise DeadlineExceeded("the call was abandoned")
            if all(item is not connection for item in entry.connections):
                entry.connections.append(connection)

    def connect(self, connection: Any, opens: Callable[[], None]) -> None:
        """Open `connection` (`opens()`) in a helper, within what is left of the current call's
        deadline; a socket it opens after the cut is shut down too."""
        self.track(connection)
        with self._cond:
            entry = self._calls.get(threading.get_ident())
        if entry is None:
            opens()
            return

        def helper() -> None:
            self._connects.track(connection)  # cut with the helper if its deadline passes
            opens()
            with self._cond:
                gone = entry.cut or entry.done
            if gone:  # opened after the call gave up: nobody will read or close it
                _shut([connection])

        self._connects.run(helper, max(0.0, entry.deadline - self._clock.monotonic()))
        with self._cond:
            cut = entry.cut
        if cut:
            _shut([connection])
            raise DeadlineExceeded("the call was abandoned")

    def _watch(self) -> None:
        """Cut each call at its deadline; end after `idle_exit` s with no call to watch."""
        with self._cond:
            while True:
                while self._due and self._due[0][2].done:
                    heapq.heappop(self._due)
                if not self._due:
                    if not self._cond.wait(self._idle_exit) and not self._due:
                        self._timer = None
                        return
                    continue
                wait = self._due[0][0] - self._clock.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                entry = heapq.heappop(self._due)[2]
                entry.cut = True
                self.abandoned += 1
                connections = list(entry.connections)
                self._cond.release()
                try:
                    _shut(connections)
                finally:
                    self._cond.acquire()


def within_deadline(
    guard: CallGuard | CutGuard, call: Callable[[], T], deadline: float, profile: str
) -> T:
    """`guard.run`, with a missed deadline as a transient `timeout` for `profile` (the
    abandoned call's result is dropped, never reaching the state). Every source uses it."""
    from credfresh.sources.classify import SourceError, classify

    try:
        return guard.run(call, deadline)
    except DeadlineExceeded:
        raise SourceError(
            classify("timeout", f"no complete answer within {deadline:g} s"), profile
        ) from None
