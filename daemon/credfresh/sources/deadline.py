"""An overall deadline for blocking network calls: botocore's timeouts bound each read only.

An endpoint that trickles its answer one byte a second never trips a 3 s read timeout. Each
call runs in a helper thread while the caller waits at most the deadline; a call past it is
abandoned (the caller gets DeadlineExceeded and its result, if one ever comes, is dropped),
and the sockets the helper is using are shut down so the helper ends too. Helpers are
bounded: when all are busy, a new call waits for a free one within its own deadline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class DeadlineExceeded(Exception):
    """The call did not finish within its deadline and was abandoned."""


@dataclasses.dataclass(eq=False)
class _Outcome(Generic[T]):
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    value: T | None = None
    error: BaseException | None = None


class CallGuard:
    """Runs calls under a deadline in at most `limit` helper threads (daemon threads).

    `track(obj)` is called by connection code running in a helper: an object with a
    `sock` attribute (an http.client / urllib3 connection) whose socket is shut down when
    that helper's call is abandoned.
    """

    def __init__(self, limit: int, *, name: str = "credfresh-call") -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1 (got {limit})")
        self._slots = threading.BoundedSemaphore(limit)
        self._name = name
        self._lock = threading.Lock()
        self._tracked: dict[int, list[Any]] = {}
        self._abandoned: set[int] = set()
        self.abandoned = 0

    def run(self, call: Callable[[], T], timeout: float) -> T:
        """`call()`'s result or exception; DeadlineExceeded after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        if not self._slots.acquire(timeout=max(0.0, timeout)):
            raise DeadlineExceeded("no free call slot within the deadline")
        outcome: _Outcome[T] = _Outcome()
        helper = threading.Thread(
            target=self._helper, args=(call, outcome), name=self._name, daemon=True
        )
        try:
            helper.start()
        except BaseException:
            self._slots.release()
            raise
        with self._lock:
            if not outcome.done.is_set() and helper.ident is not None:
                self._tracked.setdefault(helper.ident, [])
        if not outcome.done.wait(max(0.0, deadline - time.monotonic())):
            with self._lock:
                self.abandoned += 1
            self._cut(helper.ident)
            raise DeadlineExceeded(f"no complete answer within {timeout:g} s")
        if outcome.error is not None:
            raise outcome.error
        return outcome.value  # type: ignore[return-value]

    def track(self, connection: Any) -> None:
        """Remember a connection the current helper uses (a no-op outside a helper).

        In a helper whose call was already abandoned it raises DeadlineExceeded, so the
        helper opens or reuses no connection after its deadline.
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
            self._tracked.setdefault(ident, [])
        try:
            outcome.value = call()
        except BaseException as exc:  # handed to the caller, who decides
            outcome.error = exc
        finally:
            with self._lock:
                self._tracked.pop(ident, None)
                self._abandoned.discard(ident)
                outcome.done.set()
            self._slots.release()

    def _cut(self, ident: int | None) -> None:
        """Shut down the helper's sockets: its blocked read returns and the helper ends."""
        with self._lock:
            if ident is None or ident not in self._tracked:
                return
            self._abandoned.add(ident)
            connections = list(self._tracked[ident])
        for connection in connections:
            sock = getattr(connection, "sock", None)
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
