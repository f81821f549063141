"""The /healthz, /readyz and /metrics endpoint, served from a daemon thread."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable, Mapping
from datetime import datetime
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Final

from credfresh.context import Clock, SystemClock
from credfresh.credentials import NEVER, format_time
from credfresh.outputs.http import (
    JSON_CONTENT_TYPE,
    LOG_INTERVAL,
    REQUEST_TIMEOUT,
    BoundedRequestHandler,
    LoopbackHTTPServer,
    RateLimitedLog,
    ServerThread,
)

if TYPE_CHECKING:
    from credfresh.observe.logs import Logger

#: `health() -> (healthy, detail)`: the scheduler heartbeat check.
HealthCheck = Callable[[], tuple[bool, Mapping[str, object]]]
#: `ready(profile or None) -> (HTTP status, body)`: 200, 503, or 404 for an unknown profile.
ReadyCheck = Callable[[str | None], tuple[int, Mapping[str, object]]]
#: `render() -> bytes`: the metrics text exposition.
MetricsRender = Callable[[], bytes]

METRICS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
_NOT_ALLOWED: Final = frozenset({"POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"})
MAX_PROFILE_NAME_ECHO: Final = 128


def liveness(
    now: float, last_heartbeat: float | None, interval: float, *, writer_alive: bool = True
) -> tuple[bool, dict[str, object]]:
    """Healthy while the heartbeat (monotonic seconds) is under two intervals old and the
    writer thread lives.

    A missed wake-up can be a busy moment; two in a row mean the loop is stuck. A dead
    writer means refreshes land in memory only: the supervisor must restart the daemon.
    """
    if not writer_alive:
        return False, {"healthy": False, "reason": "writer thread died"}
    if last_heartbeat is None:
        return False, {"healthy": False, "reason": "no heartbeat yet"}
    age = max(0.0, now - last_heartbeat)
    healthy = age < 2 * interval
    return healthy, {"healthy": healthy, "heartbeat_age_seconds": round(age, 3)}


def readiness(
    now: datetime, expiries: Mapping[str, datetime | None], profile: str | None = None
) -> tuple[int, dict[str, object]]:
    """200 when every profile (or the one asked for) has unexpired credentials on disk; 503
    lists the failing ones as `missing` or `expired`; 404 for an unknown profile."""
    if profile is not None:
        if profile not in expiries:
            return 404, {"error": "unknown profile", "profile": profile[:MAX_PROFILE_NAME_ECHO]}
        expires_at = expiries[profile]
        problem = _problem(now, expires_at)
        body: dict[str, object] = {
            "profile": profile,
            "ready": problem is None,
            "expires_at": (
                None if expires_at is None or expires_at == NEVER else format_time(expires_at)
            ),
        }
        if problem is not None:
            body["reason"] = problem
        return (200 if problem is None else 503), body
    failing = {
        name: problem
        for name, expires_at in sorted(expiries.items())
        if (problem := _problem(now, expires_at)) is not None
    }
    ready = not failing
    return (200 if ready else 503), {"ready": ready, "profiles": len(expiries), "failing": failing}


def _problem(now: datetime, expires_at: datetime | None) -> str | None:
    if expires_at is None:
        return "missing"
    return "expired" if expires_at <= now else None


class _Handler(BoundedRequestHandler):
    server: _Server

    def respond(self) -> None:
        if self.command in ("GET", "HEAD"):
            self._route(head=self.command == "HEAD")
        elif self.command in _NOT_ALLOWED:
            self._send(
                405,
                _json({"error": "method not allowed"}),
                JSON_CONTENT_TYPE,
                head=False,
                extra={"Allow": "GET, HEAD"},
            )
        else:
            self.send_error(HTTPStatus.NOT_IMPLEMENTED)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        self.close_connection = True
        if not self.shed():
            super().send_error(code, message, explain)

    def _route(self, *, head: bool) -> None:
        app = self.server.app
        parts = urllib.parse.urlsplit(self.path)
        try:
            if parts.path == "/healthz":
                healthy, detail = app.health()
                self._send(200 if healthy else 503, _json(detail), JSON_CONTENT_TYPE, head=head)
            elif parts.path == "/readyz":
                query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
                names = query.get("profile")
                status, body = app.ready(names[-1] if names else None)
                self._send(status, _json(body), JSON_CONTENT_TYPE, head=head)
            elif parts.path == "/metrics":
                self._send(200, app.metrics(), METRICS_CONTENT_TYPE, head=head)
            else:
                self._send(404, _json({"error": "not found"}), JSON_CONTENT_TYPE, head=head)
        except Exception as exc:
            name = type(exc).__name__
            app.limited.warning(
                f"handler:{parts.path}:{name}", "http_handler_failed", path=parts.path, error=name
            )
            self._send(500, _json({"error": "internal error"}), JSON_CONTENT_TYPE, head=head)

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str,
        *,
        head: bool,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)


def _json(body: Mapping[str, object]) -> bytes:
    return json.dumps(body, sort_keys=True).encode() + b"\n"


class _Server(LoopbackHTTPServer):
    """A client that vanished mid-answer is routine and silent; other failures are logged."""

    app: HttpServer
    handler = _Handler
    prefix = "http"
    routine = (ConnectionError, TimeoutError)


class HttpServer:
    """The health and metrics endpoint; `start()` binds and serves, `stop()` ends it."""

    def __init__(  # noqa: PLR0913  a server built from injected parts
        self,
        host: str,
        port: int,
        *,
        health: HealthCheck,
        ready: ReadyCheck,
        metrics: MetricsRender,
        request_timeout: float = REQUEST_TIMEOUT,
        logger: Logger | None = None,
        poll_interval: float = 0.5,
        clock: Clock | None = None,
    ) -> None:
        if logger is None:
            import structlog

            logger = structlog.get_logger("credfresh.http")
        self.host = host
        self.health = health
        self.ready = ready
        self.metrics = metrics
        self.request_timeout = request_timeout
        self.log: Logger = logger
        self.clock: Clock = clock or SystemClock()
        #: Per-connection failures: one line per kind and LOG_INTERVAL, however many clients.
        self.limited = RateLimitedLog(logger, LOG_INTERVAL, self.clock.monotonic)
        self._runner = ServerThread(
            lambda bound: _Server(self.host, bound, self),
            port,
            name="credfresh-http",
            poll_interval=poll_interval,
        )

    @classmethod
    def from_listen(cls, listen: str, **options: Any) -> HttpServer:
        """From the config's `http.listen` (`127.0.0.1:9464`, `[::]:9464`); `options` as above."""
        from credfresh.config.model import parse_listen

        return cls(*parse_listen(listen), **options)

    @property
    def port(self) -> int:
        """The bound port (the real one when asked for port 0); the requested one before start."""
        return self._runner.port

    def start(self) -> None:
        """Bind (OSError if the address is taken) and serve from a daemon thread."""
        self._runner.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting and close the socket; requests in flight finish on their own threads."""
        self._runner.stop(timeout)
