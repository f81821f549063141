"""The proxy's HTTP plumbing: a thread per keep-alive connection, silent, Nagle off."""

from __future__ import annotations

import contextlib
import email.utils
import http.client
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final, Protocol

from credfresh.devsts.control import CONTROL_PREFIX, ControlAPI
from credfresh.devsts.wire import Incoming, Outgoing, Reply, form_params, signer_of

log = logging.getLogger(__name__)

MAX_BODY: Final = 64 * 1024 * 1024
_POLL_INTERVAL: Final = 0.05
# Answer headers the handler writes itself, or that belong to one hop only.
_OWN_HEADERS: Final = frozenset(
    {
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "date",
        "server",
    }
)


class Served(Protocol):
    """What the listener needs of the proxy it serves (a Protocol: proxy.py imports us)."""

    clock: Callable[[], float]
    date_offset: float
    control_api: ControlAPI

    def answer(self, request: Incoming) -> Reply: ...


class ProxyServer(ThreadingHTTPServer):
    """One thread per connection, so a slow answer never holds up another client."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], proxy: Served) -> None:
        self.proxy = proxy
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        """Cut keep-alive connections too, so a stopped or refusing proxy really is gone."""
        with self._connections_lock:
            connections = list(self._connections)
            self._connections.clear()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients hanging up mid-answer is normal here; never print a traceback for it."""
        log.debug("connection from %s failed", client_address, exc_info=True)


class Listener:
    """A bound, serving socket; refusing connections means closing it and binding again."""

    def __init__(self, proxy: Served, address: tuple[str, int]) -> None:
        self.server = ProxyServer(address, proxy)
        host, port = self.server.server_address[:2]
        self.address = (str(host), int(port))
        self.thread = threading.Thread(
            target=self.server.serve_forever,
            kwargs={"poll_interval": _POLL_INTERVAL},
            name=f"devsts-proxy-{port}",
            daemon=True,
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.server.close_connections()
        self.thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive without Nagle: otherwise each call waits ~40 ms for a delayed ACK."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "devsts"
    timeout = 300
    server: ProxyServer

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.untrack(self.connection)

    def handle(self) -> None:
        try:
            super().handle()
        except (OSError, http.client.HTTPException):
            self.close_connection = True

    def version_string(self) -> str:
        return self.server_version

    def date_time_string(self, timestamp: float | None = None) -> str:
        proxy = self.server.proxy
        moment = proxy.clock() if timestamp is None else timestamp
        return email.utils.formatdate(moment + proxy.date_offset, usegmt=True)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: tests and benchmarks must not drown in one line per request."""

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = do_GET

    def _serve(self) -> None:
        body = self._read_body()
        if body is None:
            return
        proxy = self.server.proxy
        if self.path.startswith(CONTROL_PREFIX):
            status, payload, effect = proxy.control_api.dispatch(self.command, self.path, body)
            reply_headers = [("Content-Type", "application/json")]
            if effect is not None:
                # The effect may cut every connection: spare this one so the reply arrives,
                # and only then close it. When the client reads the reply, it has happened.
                self.server.untrack(self.connection)
                effect()
                reply_headers.append(("Connection", "close"))
            self._send(Outgoing(status, json.dumps(payload).encode(), reply_headers))
            return
        headers = tuple(self.headers.items())
        params = form_params(self.path, self.headers.get("Content-Type"), body)
        request = Incoming(
            method=self.command,
            target=self.path,
            headers=headers,
            body=body,
            params=params,
            signer=signer_of(self.headers.get("Authorization"), params),
        )
        reply = proxy.answer(request)
        if reply.outgoing is None:
            self.close_connection = True
            return
        self._send(reply.outgoing, reply.truncate, reply.trickle)

    def _read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.send_error(400, "bad Content-Length")
            return None
        if not 0 <= length <= MAX_BODY:
            self.send_error(413, "request body too large")
            return None
        return self.rfile.read(length) if length else b""

    def _read_chunked(self) -> bytes | None:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                self.send_error(400, "bad chunk size")
                return None
            total += size
            if total > MAX_BODY:
                self.send_error(413, "request body too large")
                return None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline(1024)

    def _send(
        self, outgoing: Outgoing, truncate: int | None = None, trickle: float | None = None
    ) -> None:
        self.send_response(outgoing.status, outgoing.reason)
        for name, value in outgoing.headers:
            lowered = name.lower()
            if lowered in _OWN_HEADERS:
                continue
            if lowered == "connection":
                if value.lower() == "close":
                    self.send_header("Connection", "close")
                continue
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(outgoing.body)))
        self.end_headers()
        if self.command == "HEAD":
            return
        if trickle is not None:
            self._trickle(outgoing.body, trickle)
        elif truncate is None:
            self.wfile.write(outgoing.body)
        else:
            self.wfile.write(outgoing.body[:truncate])
            self.close_connection = True

    def _trickle(self, body: bytes, interval: float) -> None:
        """One byte, flushed, then a pause: ends when the client hangs up or the proxy stops."""
        for index in range(len(body)):
            self.wfile.write(body[index : index + 1])
            self.wfile.flush()
            if index + 1 < len(body):
                time.sleep(interval)
