"""The small HTTP servers credfresh runs (health, container credentials): shared plumbing.

Their clients are not the daemon's to control, so each is bounded: MAX_CONNECTIONS at once,
one deadline and byte budget per request head, one log line per reason and interval. No
client can take the descriptors the daemon needs for its lock, state and credentials files.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import io
import resource
import socket
import socketserver
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal, Protocol

#: Connections one server serves at once. A newcomer at the limit takes the place of the
#: oldest connection still sending its request head (a slow client), or is closed at once.
MAX_CONNECTIONS: Final = 64
#: Bytes read for one request head at most: far above any real request, far below a flood.
MAX_HEAD_BYTES: Final = 32 * 1024
MAX_REQUEST_LINE: Final = 8 * 1024
#: After an accept failed for want of descriptors or memory, wait this long before the next
#: one, rather than spin on a listening socket that stays readable.
ACCEPT_BACKOFF: Final = 0.1
#: The soft descriptor limit is raised to the hard one, but not beyond this: child processes
#: (alert commands) inherit it, and some loop over every possible descriptor.
MAX_NOFILE: Final = 65536
#: The whole request head must arrive within this, or the connection is dropped; its thread
#: (one per connection) is then free again.
REQUEST_TIMEOUT: Final = 5.0
#: Refusals and connection failures are logged at most once per reason in this many seconds.
LOG_INTERVAL: Final = 60.0
JSON_CONTENT_TYPE: Final = "application/json"

if TYPE_CHECKING:
    from credfresh.context import Clock
    from credfresh.observe.logs import Logger

Admission = Literal["admit", "evict", "refuse"]


def nofile_target(soft: int, hard: int, ceiling: int = MAX_NOFILE) -> int | None:
    """The soft RLIMIT_NOFILE to set (the hard limit, at most `ceiling`), or None to keep it."""
    wanted = ceiling if hard == resource.RLIM_INFINITY else min(hard, ceiling)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        return wanted
    return None


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft descriptor limit to the hard one; return (before, after). Never raises:
    a limit that cannot move is no reason not to start."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = nofile_target(soft, hard)
    if target is None:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError):
        return soft, soft
    return soft, target


def admission(live: int, dying: int, evictable: bool, limit: int) -> Admission:
    """Admit below the limit; at it evict the oldest slow head (only slow clients ever are),
    else refuse. `dying` were evicted and are closing: never twice the limit descriptors."""
    if live + dying >= 2 * limit:
        return "refuse"
    if live < limit:
        return "admit"
    return "evict" if evictable else "refuse"


class _Slot:
    __slots__ = ("evicted", "reading")

    def __init__(self) -> None:
        self.reading = True
        self.evicted = False


class ConnectionSlots:
    """One server's connections, oldest first, and whether each still reads its head.

    One lock, and a socket leaves the table before it is closed, so an eviction (a `shutdown`)
    can never hit a descriptor number closed and reused meanwhile.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._slots: OrderedDict[socket.socket, _Slot] = OrderedDict()

    def __len__(self) -> int:
        return len(self._slots)

    def admit(self, sock: socket.socket) -> Admission:
        """Track `sock` unless refused; on "evict" the oldest slow head was shut down."""
        with self._lock:
            live = [(s, slot) for s, slot in self._slots.items() if not slot.evicted]
            oldest = next(((s, slot) for s, slot in live if slot.reading), None)
            decision = admission(
                len(live), len(self._slots) - len(live), oldest is not None, self.limit
            )
            if decision == "evict" and oldest is not None:
                victim, slot = oldest
                slot.evicted = True
                with contextlib.suppress(OSError):
                    victim.shutdown(socket.SHUT_RDWR)
            if decision != "refuse":
                self._slots[sock] = _Slot()
            return decision

    def head_received(self, sock: socket.socket) -> bool:
        """The request head is in: from now on this connection is never evicted. False when it
        was evicted already."""
        with self._lock:
            slot = self._slots.get(sock)
            if slot is None or slot.evicted:
                return False
            slot.reading = False
            return True

    def evicted(self, sock: socket.socket) -> bool:
        with self._lock:
            slot = self._slots.get(sock)
            return slot is not None and slot.evicted

    def release(self, sock: socket.socket) -> None:
        with self._lock:
            self._slots.pop(sock, None)


class RateLimitedLog:
    """One warning per key per interval, with how many were held back: no client floods the log."""

    def __init__(self, log: Logger, interval: float, clock: Callable[[], float]) -> None:
        self._log = log
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, key: str, event: str, **fields: Any) -> None:
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                self._held[key] = self._held.get(key, 0) + 1
                return
            self._last[key] = now
            held = self._held.pop(key, 0)
        self._log.warning(event, suppressed=held, **fields)


class HeadTooLarge(http.client.HTTPException):
    pass


class HeadReader(io.BufferedIOBase):
    """Reads a request head from the socket within one byte budget and one deadline.

    http.server reads 64 KiB per line and lets a trickling client hold its thread forever.
    Over budget raises an HTTPException, which parse_request answers with 431.
    """

    def __init__(self, sock: socket.socket, budget: int, timeout: float, clock: Clock) -> None:
        super().__init__()
        self._sock = sock
        self._budget = budget
        self._monotonic = clock.monotonic
        self._deadline = clock.monotonic() + timeout
        self._buffer = bytearray()
        self._received = 0
        self._lines = 0
        #: A bare CR or NUL, or a folded header line, which http.client would split or join:
        self.malformed = False  # answered with 400

    def readable(self) -> bool:
        return True

    def readline(self, size: int | None = -1, /) -> bytes:
        limit = self._budget + 1 if size is None or size < 0 else size
        while True:
            end = self._buffer.find(b"\n", 0, limit)
            if end >= 0:
                count = end + 1
                break
            if len(self._buffer) >= limit:
                count = limit
                break
            if self._received >= self._budget:
                raise HeadTooLarge(f"request head larger than {self._budget} bytes")
            remaining = self._deadline - self._monotonic()
            if remaining <= 0:
                raise TimeoutError("request head not received in time")
            self._sock.settimeout(remaining)
            chunk = self._sock.recv(min(4096, self._budget - self._received))
            if not chunk:
                count = len(self._buffer)
                break
            self._received += len(chunk)
            self._buffer += chunk
        line = bytes(self._buffer[:count])
        del self._buffer[:count]
        content = line.removesuffix(b"\n").removesuffix(b"\r")
        if b"\r" in content or b"\0" in content or (self._lines and line[:1] in (b" ", b"\t")):
            self.malformed = True
        self._lines += 1
        return line


class ServedApp(Protocol):
    """What a server's requests need from the app it serves."""

    limited: RateLimitedLog
    request_timeout: float
    clock: Clock


class LoopbackHTTPServer(ThreadingHTTPServer):
    """A thread per connection up to MAX_CONNECTIONS, IPv4 or IPv6 (dual-stack for `::`), no
    reverse DNS lookup; failures and sheds are `<prefix>_connection_*` lines, rate-limited."""

    daemon_threads = True
    block_on_close = False
    # socketserver's default backlog of 5 drops the SYNs of a burst (clients retry after 1 s).
    # Queued connections cost the kernel, not our descriptors: under a flood a newcomer waits
    # its turn (milliseconds) instead of a SYN retry. Linux caps it at net.core.somaxconn.
    request_queue_size = 1024
    handler: ClassVar[type[BaseHTTPRequestHandler]]
    prefix: ClassVar[str]
    #: Connection failures too routine to log.
    routine: ClassVar[tuple[type[BaseException], ...]] = ()

    def __init__(self, host: str, port: int, app: ServedApp) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.app = app
        self.slots = ConnectionSlots(MAX_CONNECTIONS)
        super().__init__((host, port), self.handler)

    def _failed(self, error: BaseException | None) -> None:
        if not isinstance(error, self.routine):
            name = type(error).__name__ if error else None
            self.app.limited.warning(
                f"failed:{name}", f"{self.prefix}_connection_failed", error=name
            )

    def _shed(self, reason: str) -> None:
        self.app.limited.warning(
            f"shed:{reason}",
            f"{self.prefix}_connection_shed",
            reason=reason,
            limit=self.slots.limit,
        )

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6 and self.server_address[0] == "::":
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        # HTTPServer.server_bind would call socket.getfqdn: a DNS lookup for nothing.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def get_request(self) -> tuple[Any, Any]:
        try:
            return super().get_request()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                self._failed(exc)
                time.sleep(ACCEPT_BACKOFF)
            raise

    def process_request(self, request: Any, client_address: Any) -> None:
        """Admit, evict the oldest slow head for, or close at once, each new connection."""
        decision = self.slots.admit(request)
        if decision != "admit":
            self._shed("slow_head_evicted" if decision == "evict" else "connection_limit")
        if decision == "refuse":
            self._close(request)
            return
        try:
            super().process_request(request, client_address)
        except RuntimeError as exc:  # no thread to be had: the connection cannot be served
            self._failed(exc)
            self.shutdown_request(request)

    def shutdown_request(self, request: Any) -> None:
        self.slots.release(request)
        super().shutdown_request(request)

    def _close(self, request: Any) -> None:
        with contextlib.suppress(OSError):
            request.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """No traceback on stderr: the owner decides what a failed connection is worth."""
        self._failed(sys.exc_info()[1])


class BoundedRequestHandler(BaseHTTPRequestHandler):
    """One request per connection (HTTP/1.0), its head read by a HeadReader; `respond()`
    answers it."""

    server: LoopbackHTTPServer
    protocol_version = "HTTP/1.0"
    server_version = "credfresh"
    sys_version = ""
    disable_nagle_algorithm = True

    def head_timeout(self) -> float:
        return self.server.app.request_timeout

    def respond(self) -> None:
        raise NotImplementedError

    def setup(self) -> None:
        super().setup()
        timeout = self.head_timeout()
        self.connection.settimeout(timeout)
        self.rfile.close()
        self.head = HeadReader(self.connection, MAX_HEAD_BYTES, timeout, self.server.app.clock)
        self.rfile = self.head

    def log_message(self, format: str, *args: Any) -> None:
        """No access log on stderr: request lines are for nobody, and errors are logged."""

    def version_string(self) -> str:
        return self.server_version

    def handle_one_request(self) -> None:
        """Read one bounded request head, answer it, and close (no keep-alive)."""
        self.close_connection = True
        try:
            self.raw_requestline = self.rfile.readline(MAX_REQUEST_LINE + 1)
            if len(self.raw_requestline) > MAX_REQUEST_LINE:
                self.requestline = self.request_version = self.command = ""
                self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
                return
            if not self.raw_requestline or not self.parse_request():
                return
        except OSError:  # TimeoutError included: a silent or trickling client is dropped
            return
        if not self.server.slots.head_received(self.connection):
            return
        self.connection.settimeout(self.head_timeout())
        self.respond()

    def shed(self) -> bool:
        """Evicted for a newcomer: the socket is shut down, there is nobody to answer."""
        return self.server.slots.evicted(self.connection)


class ServerThread:
    """Starts a server on a daemon thread and stops it; knows the port it really bound."""

    def __init__(
        self,
        make: Callable[[int], LoopbackHTTPServer],
        port: int,
        *,
        name: str,
        poll_interval: float,
    ) -> None:
        self._make = make
        self._requested_port = port
        self._name = name
        self._poll_interval = poll_interval
        self._server: LoopbackHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when asked for port 0); the requested one before start."""
        if self._server is None:
            return self._requested_port
        return int(self._server.server_address[1])

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        """Bind (OSError if the address is taken or absent) and serve from a daemon thread."""
        if self._server is not None:
            return
        server = self._make(self._requested_port)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": self._poll_interval},
            name=self._name,
            daemon=True,
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting and close the socket; requests in flight finish on their threads."""
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout)
        self._server = None
        self._thread = None


#: What a handler drains after its answer before it closes: at most this, for at most this long.
LINGER_BYTES: Final = 64 * 1024
LINGER_SECONDS: Final = 1.0


class LingeringHandler(BoundedRequestHandler):
    """A handler whose clients may send more than it reads (a body, an oversized head)."""

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self._linger()

    def _linger(self) -> None:
        """Half-close, then drain a bounded amount: closing with unread input sends a reset,
        which can make the client lose the answer (a 431 for an oversized head, a PUT body)."""
        sock, monotonic = self.connection, self.server.app.clock.monotonic
        try:
            sock.shutdown(socket.SHUT_WR)
            deadline = monotonic() + LINGER_SECONDS
            drained = 0
            while drained < LINGER_BYTES:
                remaining = deadline - monotonic()
                if remaining <= 0:
                    return
                sock.settimeout(remaining)
                chunk = sock.recv(16384)
                if not chunk:
                    return
                drained += len(chunk)
        except OSError:
            return
