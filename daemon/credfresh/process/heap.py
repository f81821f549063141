"""The cyclic garbage collector and the daemon's long-lived heap.

A full collection walks every tracked object. With botocore's session, clients and models
loaded that took 90-130 ms, and the write of a 1,000-section file allocates enough to set one
off: a third of the writes inside the daemon paid for it (benchmarks/PROFILE.md, "Heap, idle
and the write inside the daemon"). What is built once (the imports, the config, botocore's
session, clients and models) is frozen out of the collector's sight once it exists. Frozen
objects are still freed by reference counting; one dropped inside a reference cycle would
never be, so the engine thaws the heap before it drops its sources (an `sts` settings change)
and it is collected, then frozen again, once the new ones issued.
"""

from __future__ import annotations

import gc


class FrozenHeap:
    """The engine's `Heap`: freeze what was just built, thaw before dropping any of it."""

    def __init__(self) -> None:
        self._thawed = False

    def settled(self, *, collect: bool = False) -> None:
        """Long-lived objects were just built: keep the collector off them. `collect` first
        frees the garbage already made (once the first pass is on disk, not in its middle);
        after a thaw it always does, or what was dropped would be frozen again."""
        if collect or self._thawed:
            gc.collect()
        self._thawed = False
        gc.freeze()

    def dropping(self) -> None:
        """Long-lived objects are about to be dropped: let the collector see them again."""
        gc.unfreeze()
        self._thawed = True
