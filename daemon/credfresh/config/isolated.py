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

#: A 1,000-profile config validates in well under a second; this much silence means stuck.
CHILD_TIMEOUT: Final = 60.0
_OK: Final = "ok"
_INVALID: Final = "invalid"


def load_isolated(
    path: Path, environ: Mapping[str, str], home: Path, now: datetime | None = None
) -> Config:
    """`validate.load_config`, run in a forked child; same result, same ConfigError."""
    answer = _ask_child(path, environ, home, now) if hasattr(os, "fork") else None
    if answer is not None:
        kind, value = answer
        if kind == _OK:
            return value  # type: ignore[return-value]
        problems, where = cast("tuple[list[str], str]", value)
        raise ConfigError(list(problems), path=where)
    from credfresh.config.validate import load_config

    return load_config(path, environ, home, now)


def _ask_child(
    path: Path, environ: Mapping[str, str], home: Path, now: datetime | None
) -> tuple[str, object] | None:
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
    data: bytes | None = None
    try:
        data = _read_all(read_end, CHILD_TIMEOUT)
    finally:
        os.close(read_end)
        _reap(pid, kill=data is None)
    if not data:
        return None
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
