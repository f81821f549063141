"""The systemd notification protocol by hand: READY, STATUS, RELOADING, WATCHDOG, STOPPING."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Final

from credfresh.config.model import format_duration
from credfresh.context import SystemClock

if TYPE_CHECKING:
    from credfresh.context import Clock

#: A full receive queue on systemd's side must not stall the daemon's main loop for long.
SEND_TIMEOUT_SECONDS: Final = 2.0
#: Failing profiles named in the STATUS line; the rest are counted ("+3 more").
STATUS_MAX_FAILING: Final = 2
#: `systemctl status` shows one line; longer text is cut with an ellipsis.
STATUS_MAX_CHARS: Final = 200
#: The scheduler's heartbeat may miss one wake-up (a slow refresh round) before pings stop.
HEARTBEAT_WAKEUPS: Final = 2


def _one_line(text: str) -> str:
    """A newline would start a new `KEY=value` assignment in the datagram: fold it away."""
    return " ".join(text.split())


class Notifier:
    """Sends sd_notify(3) messages to `$NOTIFY_SOCKET`; without it, every call does nothing.

    A failed send never raises (the daemon must not die for a status message): it is counted
    in `errors` and described in `last_error`. Thread-safe; after `close()` a no-op again.
    """

    def __init__(self, environ: Mapping[str, str], *, clock: Clock | None = None) -> None:
        """`clock.monotonic()` must be CLOCK_MONOTONIC: systemd compares MONOTONIC_USEC."""
        self._environ = environ
        self._clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._closed = False
        self.errors = 0
        self.last_error: str | None = None
        self._address = self._parse_address(environ.get("NOTIFY_SOCKET", ""))

    def _parse_address(self, value: str) -> bytes | None:
        """`/path` or `@abstract` (the `@` stands for a leading NUL), as sd_notify accepts."""
        if not value:
            return None
        if value.startswith("@"):
            return b"\0" + os.fsencode(value[1:])
        if value.startswith("/"):
            return os.fsencode(value)
        self.last_error = "NOTIFY_SOCKET is neither an absolute path nor an @abstract name"
        return None

    @property
    def enabled(self) -> bool:
        """True when messages go somewhere: NOTIFY_SOCKET names a usable address."""
        return self._address is not None and not self._closed

    def notify(self, *assignments: str) -> bool:
        """Send `KEY=value` assignments as one datagram; True if it was sent."""
        if self._address is None:
            return False
        payload = "\n".join(assignments).encode("utf-8", "replace")
        with self._lock:
            if self._closed:
                return False
            try:
                if self._socket is None:
                    self._socket = socket.socket(
                        socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                    )
                    self._socket.settimeout(SEND_TIMEOUT_SECONDS)
                self._socket.sendto(payload, self._address)
            except OSError as exc:
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc.strerror or exc}"
                return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Startup (or a reload) is complete; `systemctl start` returns now."""
        if status is None:
            return self.notify("READY=1")
        return self.notify("READY=1", f"STATUS={_one_line(status)}")

    def status(self, text: str) -> bool:
        """The one-line summary `systemctl status` shows."""
        return self.notify(f"STATUS={_one_line(text)}")

    def reloading(self) -> bool:
        """A reload started; `ready()` ends it. MONOTONIC_USEC is what notify-reload requires."""
        return self.notify(
            "RELOADING=1", f"MONOTONIC_USEC={round(self._clock.monotonic() * 1_000_000)}"
        )

    def stopping(self) -> bool:
        """Shutdown started, so systemd does not mistake the exit for a crash."""
        return self.notify("STOPPING=1")

    def watchdog(self) -> bool:
        """Keep-alive ping; send every `watchdog_interval()` seconds while healthy."""
        return self.notify("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half of WATCHDOG_USEC), or None when no watchdog is asked
        of this process (WATCHDOG_PID, when set, names the one it is for)."""
        pid = self._environ.get("WATCHDOG_PID")
        if pid is not None and pid.strip() != str(os.getpid()):
            return None
        try:
            usec = int(self._environ.get("WATCHDOG_USEC", ""))
        except ValueError:
            return None
        if usec <= 0:
            return None
        return usec / 2 / 1_000_000

    def close(self) -> None:
        """Close the socket; later calls send nothing."""
        with self._lock:
            self._closed = True
            if self._socket is not None:
                self._socket.close()
                self._socket = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def status_line(
    fresh: int,
    failing: Sequence[tuple[str, str]],
    next_refresh: tuple[str, float] | None,
    *,
    max_failing: int = STATUS_MAX_FAILING,
) -> str:
    """`12 fresh, 1 failing (app-prod: AccessDenied), next refresh db-ro in 41m`.

    `failing` is (profile, error code) in order, only the first `max_failing` named;
    `next_refresh` is (profile, seconds from now), or None when nothing is scheduled.
    """
    parts = [f"{fresh} fresh"]
    if failing:
        shown = [f"{name}: {code}" for name, code in failing[:max_failing]]
        hidden = len(failing) - len(shown)
        if hidden:
            shown.append(f"+{hidden} more")
        parts.append(f"{len(failing)} failing ({', '.join(shown)})")
    if next_refresh is None:
        parts.append("no refresh scheduled")
    else:
        name, seconds = next_refresh
        when = f"in {format_duration(seconds)}" if seconds >= 1 else "now"
        parts.append(f"next refresh {name} {when}")
    line = _one_line(", ".join(parts))
    if len(line) > STATUS_MAX_CHARS:
        line = line[: STATUS_MAX_CHARS - 1] + "…"
    return line


def should_ping(heartbeat_age: float, wakeup_interval: float, *, writer_alive: bool = True) -> bool:
    """Feed the watchdog only while the scheduler's heartbeat is younger than
    HEARTBEAT_WAKEUPS wake-ups and the writer lives: the main loop's own thread outlives a
    hung scheduler, and without a writer refreshes never reach the file.
    """
    if not wakeup_interval > 0:
        raise ValueError(f"wakeup_interval must be positive (got {wakeup_interval!r})")
    return writer_alive and heartbeat_age < HEARTBEAT_WAKEUPS * wakeup_interval
