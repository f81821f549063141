"""The daemon's control socket: `credfresh refresh` asks the running daemon (the one writer)
to refresh profiles now and answers when their new credentials are on disk.

A unix stream socket next to the state file, made while the single-instance lock is held
(so a socket found there is stale and replaced). It is 0600 before it has its name (bound
under a random name, chmod, renamed into place), and every peer's uid is checked with
SO_PEERCRED: only the daemon's own euid may ask. One bounded JSON line in, with a deadline;
one line out; a thread per connection, MAX_CLIENTS at once.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import struct
import threading
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Final

from credfresh.config.model import format_duration
from credfresh.credentials import NEVER, Credentials
from credfresh.errors import CODES, CredfileError
from credfresh.outputs.http import LOG_INTERVAL, RateLimitedLog
from credfresh.process import control_wire as wire
from credfresh.sources.classify import Failure

if TYPE_CHECKING:
    from pathlib import Path

    from credfresh.context import Clock
    from credfresh.credfile.handles import DirHandle
    from credfresh.engine.engine import Engine
    from credfresh.observe.logs import Logger

#: Connections served at once; one more is told `busy` and closed.
MAX_CLIENTS: Final = 8
#: The request line must arrive within this many seconds.
READ_TIMEOUT: Final = 5.0
#: After a failed accept (no descriptors, no memory), wait this long before the next one.
ACCEPT_BACKOFF: Final = 0.1
_UCRED: Final = struct.Struct("3i")  # pid, uid, gid

RefreshFn = Callable[[Collection[str], float], Mapping[str, Credentials | Failure]]


def refusal(code: str, message: str, unknown: Collection[str] = ()) -> wire.Answer:
    return wire.Answer(error=code, message=message, unknown=tuple(unknown))


def unknown_names(asked: Collection[str], known: Collection[str]) -> wire.Answer | None:
    """The refusal naming every asked profile the config does not have, or None."""
    unknown = [name for name in asked if name not in known]
    if not unknown:
        return None
    return refusal("unknown_profile", "not in the daemon's config: " + ", ".join(unknown), unknown)


def outcomes(
    names: Collection[str], results: Mapping[str, Credentials | Failure], wait: float
) -> wire.Answer:
    """Each profile's verdict; one with no result did not land within `wait`."""
    timeout = Failure(
        "refresh_timeout",
        f"no new credentials on disk within {format_duration(wait)}",
        permanent=False,
        hint=CODES["refresh_timeout"],
    )
    found = []
    for name in names:
        result = results.get(name)
        if isinstance(result, Credentials):
            found.append(wire.Outcome(name, expires_at=result.expiration or NEVER))
        else:
            found.append(wire.Outcome(name, failure=result or timeout))
    return wire.Answer(outcomes=tuple(found))


def peer_uid(conn: socket.socket) -> int:
    _, uid, _ = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return int(uid)


class ControlServer:
    """Serves `credfresh refresh` on `path` for `euid` alone, from a daemon thread."""

    def __init__(  # noqa: PLR0913 - a server taking its injected parts
        self,
        path: Path,
        *,
        euid: int,
        refresh: RefreshFn,
        known: Callable[[], Collection[str]],
        log: Logger,
        clock: Clock,
    ) -> None:
        self.path = path
        self.euid = euid
        self._refresh = refresh
        self._known = known
        self.log = log
        self.clock = clock
        self.limited = RateLimitedLog(log, LOG_INTERVAL, clock.monotonic)
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)
        self._sock: socket.socket | None = None
        self._dir: DirHandle | None = None
        self._inode: int | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self) -> None:
        """Bind and listen; CredfileError (an unsafe or blocked path), ValueError (a name too
        long for a unix socket) or OSError when it cannot."""
        from credfresh.credfile.handles import lstat_at, open_dir

        self._dir = directory = open_dir(self.path.parent, create=True, euid=self.euid)
        try:
            found = lstat_at(directory, self.path.name)
            if found is not None and not stat.S_ISSOCK(found.st_mode):
                raise CredfileError(
                    f"could not create the control socket {self.path}: something else is there",
                    code="unsafe_path",
                )
            if found is not None and self._served(directory):
                raise CredfileError(
                    f"another credfresh serves the control socket {self.path} (two configs "
                    "with one state_file?)",
                    code="unsafe_path",
                )
            self._sock = self._bind(directory)
            found = os.stat(self.path.name, dir_fd=directory.fd, follow_symlinks=False)
            self._inode = found.st_ino
        except BaseException:
            self.stop()
            raise
        self._thread = threading.Thread(
            target=self._serve, args=(self._sock,), name="credfresh-control", daemon=True
        )
        self._thread.start()

    def _served(self, directory: DirHandle) -> bool:
        """Whether a daemon still answers on the socket found there: the instance lock is per
        credentials file, and two configs could name one state file."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as probe:
            probe.settimeout(1.0)
            try:
                probe.connect(wire.unix_address(directory.path / self.path.name, directory.fd))
            except OSError:
                return False  # refused: stale, left by a daemon that died
            return True

    def _bind(self, directory: DirHandle) -> socket.socket:
        """0600 under a random name first, then renamed over whatever stale socket was left."""
        temp = f".{self.path.name}.{os.urandom(6).hex()}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(wire.unix_address(directory.path / temp, directory.fd))
            try:
                os.chmod(temp, 0o600, dir_fd=directory.fd)
                sock.listen(MAX_CLIENTS)
                os.rename(temp, self.path.name, src_dir_fd=directory.fd, dst_dir_fd=directory.fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp, dir_fd=directory.fd)
                raise
        except BaseException:
            sock.close()
            raise
        return sock

    def stop(self) -> None:
        """Stop accepting and remove the socket (if it is still the one made here)."""
        sock, directory, thread = self._sock, self._dir, self._thread
        self._sock = self._dir = self._thread = None
        self._stopping.set()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        if thread is not None:
            thread.join(2.0)
        if directory is not None:
            with contextlib.suppress(OSError):
                found = os.stat(self.path.name, dir_fd=directory.fd, follow_symlinks=False)
                if found.st_ino == self._inode and stat.S_ISSOCK(found.st_mode):
                    os.unlink(self.path.name, dir_fd=directory.fd)
            directory.close()

    def _serve(self, sock: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                # Shut down by `stop`, or out of descriptors or memory: wait, never spin.
                self._stopping.wait(ACCEPT_BACKOFF)
                continue
            if not self._slots.acquire(blocking=False):
                with conn:
                    self._send(conn, refusal("busy", "too many requests at once"))
                continue
            worker = threading.Thread(
                target=self._connection, args=(conn,), name="credfresh-control-conn", daemon=True
            )
            try:
                worker.start()
            except RuntimeError:  # no thread to be had: this request cannot be served
                self._slots.release()
                conn.close()

    def _connection(self, conn: socket.socket) -> None:
        try:
            with conn:
                self._send(conn, self.answer(conn))
        except Exception as exc:  # a connection's failure is never the server's
            error = type(exc).__name__
            self.limited.warning(error, "control_request_failed", error=error)
        finally:
            self._slots.release()

    def answer(self, conn: socket.socket) -> wire.Answer:
        """The peer checked, its request read and carried out."""
        uid = peer_uid(conn)
        if uid != self.euid:
            self.limited.warning(f"uid:{uid}", "control_refused", uid=uid)
            return refusal("control_refused", f"only uid {self.euid} may use this socket")
        deadline = self.clock.monotonic() + READ_TIMEOUT
        try:
            line = wire.read_line(conn, wire.MAX_REQUEST_BYTES, deadline, self.clock)
            request = wire.parse_request(line)
        except wire.PeerGone:
            return refusal("bad_request", "no request")  # a probe (`_served`): nothing to log
        except (ValueError, OSError) as exc:
            reason = "timeout" if isinstance(exc, TimeoutError) else str(exc)
            self.limited.warning(reason, "control_request_invalid", reason=reason)
            return refusal("bad_request", f"request refused: {reason}")
        known = self._known()
        names = list(request.profiles) or list(known)
        refused = unknown_names(names, known)
        if refused is not None:
            return refused
        results = self._refresh(names, request.wait)
        return outcomes(names, results, request.wait)

    def _send(self, conn: socket.socket, answer: wire.Answer) -> None:
        with contextlib.suppress(OSError):
            conn.settimeout(READ_TIMEOUT)
            conn.sendall(wire.format_answer(answer))


def start_control(
    state_file: Path, *, euid: int, engine: Engine, log: Logger, clock: Clock
) -> ControlServer | None:
    """The control socket next to `state_file`; None (and a warning) when it cannot be made:
    refreshing goes on without it."""
    server = ControlServer(
        wire.socket_path(state_file),
        euid=euid,
        refresh=engine.refresh_now,
        known=lambda: engine.config.profiles,
        log=log,
        clock=clock,
    )
    try:
        server.start()
    except (CredfileError, ValueError, OSError) as exc:
        log.warning("control_unavailable", path=str(server.path), reason=str(exc))
        return None
    log.info("control_listening", path=str(server.path))
    return server
