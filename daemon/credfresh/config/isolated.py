"""Validating the config in a forked child, so the daemon never maps pydantic.

pydantic and the schema built on it cost `credfresh run` about 10 MB of RSS for the life of
the process (benchmarks/PROFILE.md, "Footprint"), for work done once per start or reload.
A child forked for that work validates, sends back the plain `Config` (or the problems) over
a pipe and exits; the daemon keeps only `config.model`'s dataclasses. Anything unexpected
(no fork, a child that dies, hangs or answers garbage) falls back to validating in-process,
which gives the same result or the same exception, only with pydantic loaded.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
from typing import TYPE_CHECKING, Final, cast

from credfresh.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import datetime
    from pathlib import Path

    from credfresh.config.model import Config

#: A 1,000-profile config validates in 0.05 s; this much silence means stuck (and stays well
#: inside systemd's 90 s watchdog, which the main loop, waiting here on a reload, must ping).
CHILD_TIMEOUT: Final = 30.0
_OK: Final = "ok"
_INVALID: Final = "invalid"


class Pending:
    """A validation started now in a forked child, its answer collected by `result()`: the
    daemon imports its own modules meanwhile, on the other core. Leaving the `with` block
    without asking kills and reaps a child still running."""

    def __init__(
        self,
        path: Path,
        environ: Mapping[str, str],
        home: Path,
        now: datetime | None = None,
        *,
        start: bool = True,
    ) -> None:
        self._args = (path, environ, home, now)
        forking = start and hasattr(os, "fork")
        self._child = _fork(path, environ, home, now) if forking else None

    def __enter__(self) -> Pending:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cancel()

    def result(self) -> Config:
        """`validate.load_config`'s result, or its ConfigError; in-process if the child failed."""
        answer = self._collect()
        if answer is not None:
            kind, value = answer
            if kind == _OK:
                return value  # type: ignore[return-value]
            problems, where = cast("tuple[list[str], str]", value)
            raise ConfigError(list(problems), path=where)
        from credfresh.config.validate import load_config

        return load_config(*self._args)

    def cancel(self) -> None:
        if self._child is not None:
            pid, fd = self._child
            self._child = None
            os.close(fd)
            _reap(pid, kill=True)

    def _collect(self) -> tuple[str, object] | None:
        if self._child is None:
            return None
        pid, fd = self._child
        self._child = None
        data: bytes | None = None
        try:
            data = _read_all(fd, CHILD_TIMEOUT)
        finally:
            os.close(fd)
            _reap(pid, kill=data is None)
        return _decode(data) if data else None


def load_isolated(
    path: Path, environ: Mapping[str, str], home: Path, now: datetime | None = None
) -> Config:
    """`validate.load_config`, run in a forked child; same result, same ConfigError."""
    with Pending(path, environ, home, now) as pending:
        return pending.result()


def _fork(
    path: Path, environ: Mapping[str, str], home: Path, now: datetime | None
) -> tuple[int, int] | None:
    """(pid, read end) of a child validating the config; None when no child could start."""
    read_end, write_end = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(read_end)
        os.close(write_end)
        return None
    if pid == 0:  # pragma: no cover - the child ends in os._exit, out of coverage's sight
        os.close(read_end)
        _child(write_end, path, environ, home, now)
    os.close(write_end)
    return pid, read_end


def _decode(data: bytes) -> tuple[str, object] | None:
    try:
        answer = pickle.loads(data)  # noqa: S301 - our own child, over our own pipe
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError):
        return None
    if isinstance(answer, tuple) and len(answer) == 2 and answer[0] in (_OK, _INVALID):
        return answer
    return None


def _child(  # pragma: no cover - runs in the forked child
    fd: int, path: Path, environ: Mapping[str, str], home: Path, now: datetime | None
) -> None:
    """Validate and write the answer; never return, never touch the parent's streams."""
    status = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        from credfresh.config.validate import load_config

        try:
            answer: tuple[str, object] = (_OK, load_config(path, environ, home, now))
        except ConfigError as exc:
            answer = (_INVALID, (list(exc.problems), str(path)))
        payload = memoryview(pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL))
        while payload:
            payload = payload[os.write(fd, payload) :]
        status = 0
    finally:
        os._exit(status)


def _read_all(fd: int, patience: float) -> bytes | None:
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
