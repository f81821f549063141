"""The small HTTP servers credfresh runs (health, container credentials): shared plumbing."""

from __future__ import annotations

import socket
import socketserver
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class LoopbackHTTPServer(ThreadingHTTPServer):
    """A thread per connection, IPv4 or IPv6 (dual-stack for `::`), no reverse DNS lookup."""

    daemon_threads = True
    block_on_close = False
    # socketserver's default backlog of 5 drops the SYNs of a burst (clients retry after 1 s).
    request_queue_size = 64

    def __init__(
        self,
        host: str,
        port: int,
        handler: type[BaseHTTPRequestHandler],
        on_error: Callable[[BaseException | None], None],
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._on_error = on_error
        super().__init__((host, port), handler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6 and self.server_address[0] == "::":
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        # HTTPServer.server_bind would call socket.getfqdn: a DNS lookup for nothing.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """No traceback on stderr: the owner decides what a failed connection is worth."""
        self._on_error(sys.exc_info()[1])


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
