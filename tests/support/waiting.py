"""How long a test waits for an event: it returns as soon as the event happens, and gives up
only after a wide bound, so a loaded machine (one core kept busy) slows a test, never fails it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: Seconds added to every wait's own bound; a bound is a failure verdict, not a timing claim.
PATIENCE_FLOOR = 20.0


def patience(timeout: float) -> float:
    """The bound actually waited for a wait written as `timeout` seconds."""
    return max(timeout * 3, timeout + PATIENCE_FLOOR)


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll `predicate` until it holds; AssertionError naming `what` after `patience(timeout)`."""
    bound = patience(timeout)
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {bound:g} s: {what}")
