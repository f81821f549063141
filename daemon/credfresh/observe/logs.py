"""Structured logs: JSON lines for machines, console for people, and no secret ever.

Nothing here is global but the stdlib root handler, which the composition root installs and
removes. Loggers are built with `structlog.wrap_logger`, not `structlog.configure`.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Iterable, Mapping
from typing import IO, Any, Final, Protocol

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

#: What `Logging.get` gives: structlog's level-filtering logger (a level below is a no-op).
BoundLogger = FilteringBoundLogger

REDACTED: Final = "[redacted]"
SECRET_KEYS: Final = frozenset(
    {
        "aws_secret_access_key",
        "secret_access_key",
        "secretaccesskey",
        "aws_session_token",
        "session_token",
        "sessiontoken",
        "token",
        "web_identity_token",
        "webidentitytoken",
        "authorization",
        "password",
        "x-amz-security-token",
    }
)
_ACCESS_KEY_ID = re.compile(r"\b(AKIA|ASIA|AROA|AIDA|ABIA|ACCA)[A-Z0-9]{12}([A-Z0-9]{4})\b")
_SECRET_LIKE = re.compile(
    r"(?<![A-Za-z0-9/+=])(?=[A-Za-z0-9/+]*[A-Z])(?=[A-Za-z0-9/+]*[a-z])"
    r"[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"
)
_LONG_TOKEN = re.compile(r"[A-Za-z0-9/+=_-]{100,}")
_SCAN_ALL_BELOW: Final = 64
_PREFIX: Final = 8
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
#: Any of the four shapes above: most values match none, and one search costs a fraction of
#: four substitutions (a `refreshed` line scans seven strings). Nothing matched, nothing to
#: substitute; anything matched, all four run in their order.
_ANY_SHAPE = re.compile(
    "|".join(f"(?:{p.pattern})" for p in (_JWT, _LONG_TOKEN, _SECRET_LIKE, _ACCESS_KEY_ID))
)
#: credfresh's own loggers (`credfresh`, `credfresh.*`) log at the chosen level.
OWN_LOGGER: Final = "credfresh"
#: Other libraries at WARNING, so their INFO lines never pass for credfresh events; with
#: `--log-level debug` these at INFO (botocore's DEBUG logs signed headers), others at DEBUG.
THIRD_PARTY_LEVEL: Final = logging.WARNING
LIBRARY_FLOORS: Final = dict.fromkeys(
    ("botocore", "boto3", "urllib3", "s3transfer", "watchdog", "apscheduler"), logging.INFO
)


class Logger(Protocol):
    """The slice of a structlog logger credfresh's parts use, so tests pass a recorder."""

    def info(self, event: str, **kw: Any) -> Any: ...

    def warning(self, event: str, **kw: Any) -> Any: ...


def third_party_level(level: int, floor: int = logging.DEBUG) -> int:
    """The level of a library's logger when credfresh runs at `level` (pure, for tests)."""
    if level <= logging.DEBUG:
        return max(level, floor)
    return max(level, THIRD_PARTY_LEVEL)


class Redactor:
    """Scrubs known secrets (every one credfresh handled) exactly, and anything shaped like one
    (a source key in a botocore message) from any text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: set[str] = set()
        self._index: dict[str, tuple[str, ...]] = {}
        self._alphabet: set[str] = set()
        self._runs = _runs_of(self._alphabet)

    def add(self, *secrets: str | None) -> None:
        """Known from now on; in place (a copy of every known secret per refresh cost O(n))."""
        with self._lock:
            for secret in secrets:
                if secret and len(secret) >= _PREFIX and secret not in self._known:
                    self._known.add(secret)
                    key = secret[:_PREFIX]
                    self._index[key] = (*self._index.get(key, ()), secret)
                    if not self._alphabet.issuperset(key):
                        self._alphabet.update(key)
                        self._runs = _runs_of(self._alphabet)

    def forget(self, *secrets: str | None) -> None:
        with self._lock:
            for secret in secrets:
                if secret and secret in self._known:
                    self._known.discard(secret)
                    key = secret[:_PREFIX]
                    left = tuple(s for s in self._index.get(key, ()) if s != secret)
                    if left:
                        self._index[key] = left
                    else:
                        self._index.pop(key, None)

    def _by_prefix(self, value: str) -> str:
        """Many profiles: one lookup in the index add/forget keep (rebuilding it per refresh
        was a third of the daemon's CPU at 1,000 profiles) per position that can start a
        secret: inside a run of at least `_PREFIX` characters that begin known secrets. A
        timestamp or an ARN has few such positions, or none."""
        index = self._index
        found = {
            secret
            for run in self._runs.finditer(value)
            for start in range(run.start(), run.end() - _PREFIX + 1)
            for secret in index.get(value[start : start + _PREFIX], ())
            if value.startswith(secret, start)
        }
        for secret in sorted(found, key=len, reverse=True):
            value = value.replace(secret, REDACTED)
        return value

    def text(self, value: str) -> str:
        if len(value) < _PREFIX:
            return value  # shorter than any secret it knows and than every shape below
        if self._known:
            if len(self._known) <= _SCAN_ALL_BELOW:
                with self._lock:
                    few = tuple(self._known)
                for secret in few:
                    if secret in value:
                        value = value.replace(secret, REDACTED)
            else:
                value = self._by_prefix(value)
        if _ANY_SHAPE.search(value) is None:
            return value
        value = _JWT.sub(REDACTED, value)
        value = _LONG_TOKEN.sub(REDACTED, value)
        value = _SECRET_LIKE.sub(REDACTED, value)
        return _ACCESS_KEY_ID.sub(r"\1...\2", value)

    def value(self, value: object, depth: int = 0) -> object:
        if isinstance(value, str):
            return self.text(value)
        if depth > 20:
            return REDACTED
        if isinstance(value, Mapping):
            return {
                self.text(str(k)): (
                    REDACTED if str(k).lower() in SECRET_KEYS else self.value(v, depth + 1)
                )
                for k, v in value.items()
            }
        if isinstance(value, list | tuple | set | frozenset):
            return [self.value(v, depth + 1) for v in value]
        if isinstance(value, int | float | bool) or value is None:
            return value
        return self.text(repr(value))

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> EventDict:
        return {
            key: REDACTED if key.lower() in SECRET_KEYS else self.value(item)
            for key, item in event_dict.items()
        }


def _runs_of(alphabet: set[str]) -> re.Pattern[str]:
    """Runs of `_PREFIX` or more characters of `alphabet` (the first characters of known
    secrets): a known secret starts only inside one."""
    if not alphabet:
        return re.compile(r"(?!)")
    return re.compile("[" + "".join(map(re.escape, sorted(alphabet))) + f"]{{{_PREFIX},}}")


def _drop_noise(logger: WrappedLogger, name: str, event_dict: EventDict) -> EventDict:
    event_dict.pop("_record", None)
    event_dict.pop("_from_structlog", None)
    return event_dict


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]


def renderer(fmt: str) -> Processor:
    if fmt == "console":
        return structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    return structlog.processors.JSONRenderer(sort_keys=False)


class _OwnLines:
    """Where credfresh's own events go, rendered in `get`'s chain: the handler's stream under
    its lock (lines never interleave with a library's), with no LogRecord and no second pass
    through the formatter, a third of a line's cost. Until installed nothing is written, as
    with a handler not attached yet."""

    name: Final = OWN_LOGGER

    def __init__(self, handler: logging.StreamHandler[IO[str]]) -> None:
        self._handler = handler
        self.installed = False

    def msg(self, line: str) -> None:
        if not self.installed:
            return
        handler = self._handler
        with handler.lock or contextlib.nullcontext():
            try:
                handler.stream.write(line + handler.terminator)
                handler.stream.flush()
            except (OSError, ValueError):
                pass  # as `logging` does: a line that cannot be written never fails its caller

    debug = info = warning = error = critical = exception = msg


class Logging:
    """Installs the handler for a process's life and gives out bound loggers."""

    def __init__(
        self,
        stream: IO[str],
        *,
        fmt: str | None = None,
        level: str | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        self.redactor = redactor or Redactor()
        self.format = fmt or ("console" if _isatty(stream) else "json")
        self.level = getattr(logging, (level or "info").upper(), logging.INFO)
        self._handler = logging.StreamHandler(stream)
        self._handler.setFormatter(
            # credfresh's own events were redacted in `get`'s chain; a library's record is
            # redacted here, once (twice was 30% of a log line's cost).
            structlog.stdlib.ProcessorFormatter(
                foreign_pre_chain=[*_shared_processors(), _drop_noise, self.redactor],
                processors=[_drop_noise, renderer(self.format)],
            )
        )
        self._handler.setLevel(self.level)
        self._own = _OwnLines(self._handler)
        self._saved: list[tuple[logging.Logger, int, bool]] = []

    def install(self) -> None:
        """Root (every library without a level of its own) at the third-party level, ours at
        the chosen one; the handler passes both, and each line's `logger` names its source."""
        root = logging.getLogger()
        root.addHandler(self._handler)
        own = logging.getLogger(OWN_LOGGER)
        self._saved = [(root, root.level, root.propagate), (own, own.level, own.propagate)]
        root.setLevel(third_party_level(self.level))
        own.setLevel(self.level)
        for name, floor in LIBRARY_FLOORS.items():
            lib = logging.getLogger(name)
            self._saved.append((lib, lib.level, lib.propagate))
            lib.setLevel(third_party_level(self.level, floor))
        self._own.installed = True

    def uninstall(self) -> None:
        self._own.installed = False
        logging.getLogger().removeHandler(self._handler)
        for logger, level, propagate in self._saved:
            logger.setLevel(level)
            logger.propagate = propagate
        self._saved = []

    def get(self, **context: Any) -> BoundLogger:
        processors: Iterable[Processor] = [
            *_shared_processors(),
            self.redactor,  # the last step before rendering: no line ever holds a raw secret
            renderer(self.format),
        ]
        logger: BoundLogger = structlog.wrap_logger(
            self._own,
            processors=list(processors),
            wrapper_class=structlog.make_filtering_bound_logger(self.level),
            cache_logger_on_first_use=False,
        )
        return logger.bind(**context) if context else logger


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
