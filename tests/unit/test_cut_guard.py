"""The deadline that runs calls in the caller's thread and cuts their sockets on time."""

from __future__ import annotations

import socket
import threading
import time
import types
from collections.abc import Callable, Iterator

import pytest

from credfresh.config.model import StsSettings
from credfresh.context import SystemClock
from credfresh.sources.clients import StsClients, track_connections
from credfresh.sources.deadline import CutGuard, DeadlineExceeded
from support.waiting import wait_until


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    near, far = socket.socketpair()
    far.settimeout(10)
    yield near, far
    near.close()
    far.close()


def _read_all(guard: CutGuard, connection: types.SimpleNamespace) -> bytes:
    guard.track(connection)
    data = b""
    while chunk := connection.sock.recv(1):
        data += chunk
    return data


#: Long enough for a helper thread to begin on a loaded machine, which each test waits for.
CONNECT_DEADLINE = 2.0


class _Caller:
    """`guard.run(call, timeout)` in a thread of its own, so the test can watch the helper."""

    def __init__(self, guard: CutGuard, call: Callable[[], object], timeout: float) -> None:
        self.error: BaseException | None = None
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, args=(guard, call, timeout))
        self._thread.start()

    def _run(self, guard: CutGuard, call: Callable[[], object], timeout: float) -> None:
        try:
            guard.run(call, timeout)
        except BaseException as exc:  # the test inspects it
            self.error = exc
        self._ended = time.monotonic()

    def outcome(self) -> float:
        """Seconds the call took, once it ended."""
        self._thread.join(30)
        assert not self._thread.is_alive(), "the call never ended"
        return self._ended - self._started


class TestCutGuard:
    def test_a_quick_call_runs_in_the_callers_thread(self) -> None:
        guard = CutGuard(2)
        assert guard.run(threading.get_ident, 5) == threading.get_ident()
        with pytest.raises(ZeroDivisionError):
            guard.run(lambda: 1 // 0, 5)
        assert guard.in_flight() == 0

    def test_a_trickling_read_is_cut_at_the_deadline(
        self, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        """Each read is quick (a byte every 50 ms), yet the call ends at its deadline."""
        near, far = pair
        stop = threading.Event()

        def trickle() -> None:  # for 8 s at most: a guard that never cuts fails, not hangs
            for _ in range(160):
                if stop.wait(0.05):
                    return
                try:
                    far.send(b"x")
                except OSError:
                    return
            far.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=trickle)
        sender.start()
        guard = CutGuard(2)
        started = time.monotonic()
        try:
            with pytest.raises(DeadlineExceeded):
                guard.run(lambda: _read_all(guard, types.SimpleNamespace(sock=near)), 0.5)
        finally:
            stop.set()
            sender.join(10)
        assert 0.5 <= time.monotonic() - started < 4
        assert guard.abandoned == 1
        assert guard.in_flight() == 0

    def test_a_hung_connect_keeps_the_deadline(self) -> None:
        """A name lookup that never returns holds a helper, not the caller."""
        guard = CutGuard(2)
        entered, release = threading.Event(), threading.Event()
        connection = types.SimpleNamespace(sock=None)

        def opens() -> None:
            entered.set()
            release.wait(30)

        try:
            caller = _Caller(guard, lambda: guard.connect(connection, opens), CONNECT_DEADLINE)
            assert entered.wait(30), "the helper never began the connect"
            took = caller.outcome()
            assert isinstance(caller.error, DeadlineExceeded)
            assert CONNECT_DEADLINE <= took < CONNECT_DEADLINE + 3
            assert guard.in_flight() == 1, "the hung helper is still counted"
        finally:
            release.set()
        wait_until(lambda: guard.in_flight() == 0, 10, "the helper ended once the lookup did")

    def test_a_socket_opened_after_the_call_gave_up_is_shut(
        self, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        near, far = pair
        guard = CutGuard(2)
        entered, late = threading.Event(), threading.Event()
        connection = types.SimpleNamespace(sock=None)

        def opens() -> None:
            entered.set()
            late.wait(30)
            connection.sock = near

        caller = _Caller(guard, lambda: guard.connect(connection, opens), CONNECT_DEADLINE)
        assert entered.wait(30), "the helper never began the connect"
        caller.outcome()
        assert isinstance(caller.error, DeadlineExceeded)
        late.set()
        wait_until(lambda: guard.in_flight() == 0, 10, "the late connect ended")
        assert far.recv(1) == b"", "the late socket was left open"

    def test_a_connect_within_the_deadline_is_kept(
        self, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        near, far = pair
        guard = CutGuard(2)
        connection = types.SimpleNamespace(sock=None)

        def call() -> bytes:
            guard.connect(connection, lambda: setattr(connection, "sock", near))
            far.sendall(b"ok")
            return bytes(near.recv(2))

        assert guard.run(call, 5) == b"ok"
        near.sendall(b"y")
        assert far.recv(1) == b"y"

    def test_a_cut_spares_the_next_call_on_the_same_thread(
        self, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        near, far = pair
        guard = CutGuard(2)
        blocked, blocked_far = socket.socketpair()
        backstop = threading.Timer(8, blocked_far.shutdown, [socket.SHUT_WR])  # fail, not hang
        backstop.start()
        started = time.monotonic()
        try:
            with pytest.raises(DeadlineExceeded):
                guard.run(lambda: _read_all(guard, types.SimpleNamespace(sock=blocked)), 0.2)
            assert time.monotonic() - started < 4
        finally:
            backstop.cancel()
            blocked.close()
            blocked_far.close()
        kept = types.SimpleNamespace(sock=near)

        def second() -> bytes:
            guard.track(kept)
            far.sendall(b"z")
            return bytes(near.recv(1))

        assert guard.run(second, 5) == b"z"
        far.sendall(b"w")
        assert near.recv(1) == b"w", "the second call's connection was shut down"

    def test_the_timer_ends_when_idle(self) -> None:
        guard = CutGuard(1, idle_exit=0.2)
        assert not guard.watching()
        guard.run(lambda: None, 30)
        assert guard.watching()
        wait_until(lambda: not guard.watching(), 1, "the idle timer ended")
        guard.run(lambda: None, 30)
        assert guard.watching(), "a call after idle starts the timer again"


class TestStsClientsGuard:
    def test_calls_run_in_the_callers_thread(self) -> None:
        clients = StsClients(StsSettings(), clock=SystemClock())
        assert clients.guarded(threading.get_ident, "p") == threading.get_ident()

    def test_a_client_it_cannot_track_sends_calls_to_a_helper(self) -> None:
        """Should botocore's pool layout change, the deadline still holds (in a helper)."""
        assert track_connections(object(), {}) is False
        clients = StsClients(StsSettings(), clock=SystemClock())
        clients._track(object())
        assert clients.guarded(threading.get_ident, "p") != threading.get_ident()
