"""Work done in a forked child that hands back one pickled answer over a pipe.

Two jobs of the daemon run this way: validating the config (so the daemon never maps
pydantic) and writing the credentials file (so its strict re-parse of the whole file runs on
the other core instead of taking the GIL in turns with the refresh threads). The child
inherits the parent's memory, so nothing is sent to it; it answers once and ends in os._exit.
Callers do the work in-process whenever no answer comes: no fork, a child that died, hung or
answered garbage.

The parent has threads, and a forked child holds only the thread that forked: any lock
another thread held stays held. So `work` must take no lock the parent's threads use (no
logging, no imports of modules not yet loaded), and the patience bounds a child that did.
"""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import select
import signal
from collections.abc import Callable
from typing import Final

#: Signals the daemon handles: the child ignores them and finishes its short job (a write
#: stopped halfway leaves a temp file behind); the parent kills it if it must.
_SHIELDED: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_OPEN_MAX: Final = 1 << 20


class Forked:
    """`work()` running in a child forked now; `answer()` collects what it returned.

    Leaving the `with` block without an answer kills and reaps a child still running.
    """

    def __init__(self, work: Callable[[], object]) -> None:
        self._child = _fork(work) if hasattr(os, "fork") else None

    def __enter__(self) -> Forked:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cancel()

    @property
    def started(self) -> bool:
        return self._child is not None

    def answer(self, patience: float) -> object | None:
        """What `work` returned, or None: no child, or one that died, raised, answered
        garbage or stayed silent for `patience` s (then it is killed)."""
        if self._child is None:
            return None
        pid, fd = self._child
        self._child = None
        data: bytes | None = None
        try:
            data = read_all(fd, patience)
        finally:
            os.close(fd)
            _reap(pid, kill=data is None)
        if not data:
            return None
        try:
            answer: object = pickle.loads(data)  # noqa: S301 - our own child, our own pipe
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError):
            return None
        return answer

    def cancel(self) -> None:
        if self._child is not None:
            pid, fd = self._child
            self._child = None
            os.close(fd)
            _reap(pid, kill=True)


def _fork(work: Callable[[], object]) -> tuple[int, int] | None:
    """(pid, read end) of a child running `work`; None when no child could start."""
    read_end, write_end = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(read_end)
        os.close(write_end)
        return None
    if pid == 0:  # pragma: no cover - the child ends in os._exit, out of coverage's sight
        _child(write_end, work)
    os.close(write_end)
    return pid, read_end


def _child(fd: int, work: Callable[[], object]) -> None:  # pragma: no cover - in the child
    """Run `work` and write its answer; never return, never touch the parent's streams.

    Every other inherited descriptor is closed: an orphaned child must not hold the daemon's
    instance lock or its sockets while a new daemon starts.
    """
    status = 1
    try:
        for signum in _SHIELDED:
            signal.signal(signum, signal.SIG_IGN)
        # A collection would touch every object's header and copy the parent's whole heap.
        gc.disable()
        _close_inherited(keep=fd)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.close(null)
        payload = memoryview(pickle.dumps(work(), protocol=pickle.HIGHEST_PROTOCOL))
        while payload:
            payload = payload[os.write(fd, payload) :]
        status = 0
    finally:
        os._exit(status)


def _close_inherited(keep: int) -> None:  # pragma: no cover - in the child
    """Close what this process holds (listed in /proc), not every number up to the limit:
    without close_range(2) (kernels before 5.9) that is a million close calls a write."""
    try:
        held = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        os.closerange(3, keep)
        os.closerange(keep + 1, _OPEN_MAX)
        return
    for fd in held:
        if fd > 2 and fd != keep:  # past stdin, stdout and stderr
            with contextlib.suppress(OSError):
                os.close(fd)


def read_all(fd: int, patience: float) -> bytes | None:
    """Everything the child writes until it closes the pipe; None after `patience` s of silence."""
    chunks: list[bytes] = []
    while True:
        ready, _, _ = select.select([fd], [], [], patience)
        if not ready:
            return None
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _reap(pid: int, *, kill: bool) -> None:
    if kill:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
