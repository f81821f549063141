"""Batches credentials that finish close together into one write of the credentials file:
each lands at most `linger` plus one write after its STS answer."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Collection, Mapping
from typing import Final

from credfresh.context import Clock, SystemClock
from credfresh.credentials import Credentials
from credfresh.engine.policy import retry_delay
from credfresh.errors import CredfileError

LINGER: Final = 0.4
RETRY_MIN: Final = 1.0
RETRY_MAX: Final = 30.0
#: The longest a refresh thread waits for a write in progress (`step_aside`).
STEP_ASIDE: Final = 0.5

WriteFn = Callable[[Mapping[str, Credentials], Collection[str]], Mapping[str, CredfileError]]


class BatchWriter:
    """A thread that owns every write of one credentials file.

    `write` returns per-profile conflicts; any exception keeps the batch pending, retried
    with backoff, as a `write_failed`: one bad value must never end the thread.
    """

    def __init__(  # noqa: PLR0913 - a constructor taking its injected parts
        self,
        write: WriteFn,
        *,
        on_written: Callable[[Mapping[str, Credentials], Collection[str], float], None],
        on_conflict: Callable[[str, CredfileError], None],
        on_failed: Callable[[CredfileError, float], None],
        linger: float = LINGER,
        clock: Clock | None = None,
    ) -> None:
        self._write = write
        self._on_written = on_written
        self._on_conflict = on_conflict
        self._on_failed = on_failed
        self._linger = linger
        self._clock: Clock = clock or SystemClock()
        self._cond = threading.Condition()
        self._updates: dict[str, Credentials] = {}
        self._removals: set[str] = set()
        self._busy = False
        self._stopping = False
        self._started = False
        self._hurry = False
        self._failures = 0
        self._not_writing = threading.Event()
        self._not_writing.set()
        self._thread = threading.Thread(target=self._loop, name="credfresh-writer", daemon=True)

    def start(self) -> None:
        self._started = True
        self._thread.start()

    def alive(self) -> bool:
        """False only when the thread ended without being stopped: nothing gets written."""
        return not self._started or self._stopping or self._thread.is_alive()

    def submit(
        self,
        updates: Mapping[str, Credentials] | None = None,
        removals: Collection[str] = (),
        *,
        urgent: bool = False,
    ) -> None:
        """Queue a change; `urgent` skips the linger (a profile someone just added waits)."""
        with self._cond:
            self._hurry = self._hurry or urgent
            for name, creds in (updates or {}).items():
                self._updates[name] = creds
                self._removals.discard(name)
            for name in removals:
                self._updates.pop(name, None)
                self._removals.add(name)
            self._cond.notify_all()

    def step_aside(self, longest: float = STEP_ASIDE) -> None:
        """Refresh threads call this between their CPU bursts: while a write runs they wait
        (at most `longest`, for a stuck disk). Credentials already issued reach the file
        first: on a 2-core machine the write's child otherwise shares the cores with 16
        refresh threads and the STS answering them, and took 1.4-1.8x its time alone
        (benchmarks/PROFILE.md, "The write in a child")."""
        self._not_writing.wait(longest)

    def pending(self) -> bool:
        with self._cond:
            return bool(self._updates or self._removals or self._busy)

    def flush(self, timeout: float) -> bool:
        """Wait until everything submitted so far is written; False when `timeout` ran out."""
        deadline = self._clock.monotonic() + timeout
        with self._cond:
            self._hurry = True
            self._cond.notify_all()
            while self._updates or self._removals or self._busy:
                remaining = deadline - self._clock.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def stop(self, timeout: float) -> bool:
        flushed = self.flush(timeout)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=1.0)
        return flushed

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._updates or self._removals) and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                deadline = self._clock.monotonic() + self._linger
                while not self._hurry and (remaining := deadline - self._clock.monotonic()) > 0:
                    self._cond.wait(remaining)
                self._hurry = False
                updates, removals = dict(self._updates), set(self._removals)
                self._updates.clear()
                self._removals.clear()
                self._busy = True
            retry = self._write_batch(updates, removals)
            with self._cond:
                self._busy = False
                self._cond.notify_all()
                # Back off for the whole delay: new submissions join the batch, not end the wait.
                deadline = self._clock.monotonic() + retry
                while (
                    retry
                    and not self._stopping
                    and not self._hurry
                    and (remaining := deadline - self._clock.monotonic()) > 0
                ):
                    self._cond.wait(remaining)

    def _write_batch(self, updates: dict[str, Credentials], removals: set[str]) -> float:
        """Write one batch; return the delay before retrying it, or 0 when done."""
        started = self._clock.monotonic()
        try:
            self._not_writing.clear()
            try:
                conflicts = self._write(updates, removals)
            finally:
                self._not_writing.set()
            for name, error in conflicts.items():
                updates.pop(name, None)
                self._on_conflict(name, error)
            self._on_written(updates, removals, self._clock.monotonic() - started)
        except CredfileError as exc:
            return self._failed(updates, removals, exc)
        except Exception as exc:
            return self._failed(updates, removals, unexpected(exc))
        self._failures = 0
        return 0.0

    def _failed(
        self, updates: dict[str, Credentials], removals: set[str], error: CredfileError
    ) -> float:
        """Keep the batch pending (newer submissions win) and say when to retry it."""
        self._failures += 1
        delay = retry_delay(self._failures - 1, initial=RETRY_MIN, maximum=RETRY_MAX)
        with self._cond:
            for name, creds in updates.items():
                self._updates.setdefault(name, creds)
            for name in removals:
                if name not in self._updates:
                    self._removals.add(name)
        # A failing report must not end the writer either.
        with contextlib.suppress(Exception):
            self._on_failed(error, delay)
        return delay


def unexpected(exc: Exception) -> CredfileError:
    """Any other exception as a `write_failed` naming its type, in one bounded line (the
    engine redacts it again before logging)."""
    detail = " ".join(str(exc).split())[:200]
    message = f"unexpected {type(exc).__name__} while writing"
    return CredfileError(f"{message}: {detail}" if detail else message, code="write_failed")
