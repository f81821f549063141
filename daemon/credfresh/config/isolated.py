"""Validating the config in a forked child, so the daemon never maps pydantic.

pydantic and the schema built on it cost `credfresh run` about 10 MB of RSS for the life of
the process (benchmarks/PROFILE.md, "Footprint"), for work done once per start or reload.
A child forked for that work validates, sends back the plain `Config` (or the problems) over
a pipe and exits; the daemon keeps only `config.model`'s dataclasses. Anything unexpected
(no fork, a child that dies, hangs or answers garbage) falls back to validating in-process,
which gives the same result or the same exception, only with pydantic loaded.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Final, cast

from credfresh.errors import ConfigError
from credfresh.forked import Forked

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
        self._child = Forked(partial(_validate, path, environ, home, now)) if start else None

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
            self._child.cancel()
            self._child = None

    def _collect(self) -> tuple[str, object] | None:
        child, self._child = self._child, None
        answer = None if child is None else child.answer(CHILD_TIMEOUT)
        if isinstance(answer, tuple) and len(answer) == 2 and answer[0] in (_OK, _INVALID):
            return answer
        return None


def load_isolated(
    path: Path, environ: Mapping[str, str], home: Path, now: datetime | None = None
) -> Config:
    """`validate.load_config`, run in a forked child; same result, same ConfigError."""
    with Pending(path, environ, home, now) as pending:
        return pending.result()


def unchanged_on_disk(config: Config) -> bool:
    """The config file and its policy files still hold the bytes `config` was built from.

    The 60 s poll asks first: validating forks a child that imports pydantic, about 0.2 s of
    CPU a minute for a file that did not change (benchmarks/PROFILE.md, "The write in a
    child"). Anything unreadable is a change, for the validation to report.
    """
    from credfresh.config.model import digest_of

    try:
        parts = [config.path.read_bytes(), *(path.read_bytes() for path in config.policy_files)]
    except OSError:
        return False
    return digest_of(*parts) == config.digest


def _validate(  # pragma: no cover - runs in the forked child
    path: Path, environ: Mapping[str, str], home: Path, now: datetime | None
) -> tuple[str, object]:
    from credfresh.config.validate import load_config

    try:
        return (_OK, load_config(path, environ, home, now))
    except ConfigError as exc:
        return (_INVALID, (list(exc.problems), str(path)))
