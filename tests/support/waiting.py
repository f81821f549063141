"""How long a test waits for an event: it returns as soon as the event happens, and gives up
only after a wide bound, so a loaded machine (one core kept busy) slows a test, never fails it.

`wait_until` is the verdict (AssertionError after `patience(timeout)`); `poll_until` is the
measurement under it (the seconds it took, or None after exactly `bound` seconds), for the
few tests that time a recovery or decide what a miss means themselves.
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: Seconds added to every wait's own bound; a bound is a failure verdict, not a timing claim.
PATIENCE_FLOOR = 20.0
#: Seconds between two polls unless a wait asks for finer steps.
INTERVAL = 0.05


def patience(timeout: float) -> float:
    """The bound actually waited for a wait written as `timeout` seconds."""
    return max(timeout * 3, timeout + PATIENCE_FLOOR)


def poll_until(
    predicate: Callable[[], object], bound: float, *, interval: float = INTERVAL
) -> float | None:
    """Seconds until `predicate()` held, or None once `bound` seconds passed first."""
    started = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - started
        if time.monotonic() - started > bound:
            return None
        time.sleep(interval)


def wait_until(
    predicate: Callable[[], object], timeout: float, what: str, *, interval: float = INTERVAL
) -> float:
    """Seconds until `predicate()` held; AssertionError naming `what` after `patience(timeout)`."""
    bound = patience(timeout)
    took = poll_until(predicate, bound, interval=interval)
    if took is None:
        raise AssertionError(f"not within {bound:g} s: {what}")
    return took
