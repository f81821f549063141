"""Slow clients by the thousand against both HTTP servers of a real `credfresh run`.

The daemon runs with RLIMIT_NOFILE soft 512, hard 1024: it raises the soft limit to 1024 at
start, and 2 x 1,100 trickling connections are more than that, so only the connection cap
keeps descriptors free for the lock, state and credentials files.
"""

from __future__ import annotations

import errno
import http.client
import resource
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from conftest import Project
from credfresh.credfile import store as credfile
from credfresh.outputs.http import (
    ConnectionSlots,
    RateLimitedLog,
    admission,
    nofile_target,
)
from support.daemon_runner import DaemonProcess, env_with

ATTACKERS = 1100
TRICKLE_EVERY = 2.0
ATTACK_FOR = 12.0
#: A probe fails when unanswered within this; latency itself is a benchmark figure, and on a
#: loaded machine a new client can wait behind the accept queue's flood of attackers.
PROBE_WITHIN = 6.0
LIFETIME = 6
DAEMON_NOFILE = (512, 1024)
#: Two servers of at most 2 x 64 client sockets each (64 served, 64 being closed), plus the
#: daemon's own files and sockets.
MAX_DAEMON_FDS = 2 * 2 * 64 + 64
#: Per-connection lines the daemon may log during the attack: one per reason and interval.
MAX_CONNECTION_LINES = 8
CONNECTION_EVENTS = {
    "http_connection_shed",
    "http_connection_failed",
    "http_handler_failed",
    "container_connection_shed",
    "container_connection_failed",
    "container_request_refused",
    "container_handler_failed",
}
FALSE_ALARMS = {
    "alert",
    "config_rejected",
    "write_failed",
    "state_write_failed",
    "credentials_expired",
    "refresh_failed",
    "file_unreadable",
}


class Trickler:
    """ATTACKERS slots per target, each sending one byte every TRICKLE_EVERY seconds and
    reconnecting at its next turn once the server closed it: a slowloris that never gives up.
    One thread, non-blocking sockets."""

    def __init__(self, targets: list[tuple[int, bytes]]) -> None:
        self.targets = targets
        #: [target index, socket or None, head sent]
        self.slots: list[list[Any]] = [
            [index, None, False] for index, _ in enumerate(targets) for _ in range(ATTACKERS)
        ]
        self.connects = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _connect(self, slot: list[Any]) -> None:
        sock = socket.socket()
        sock.setblocking(False)
        if sock.connect_ex(("127.0.0.1", self.targets[slot[0]][0])) not in (0, errno.EINPROGRESS):
            sock.close()
            return
        self.connects += 1
        slot[1], slot[2] = sock, False
        self._send(slot)

    def _send(self, slot: list[Any]) -> None:
        sock = slot[1]
        try:
            if slot[2]:
                sock.send(b"a")
            else:
                sock.send(self.targets[slot[0]][1])
                slot[2] = True
        except BlockingIOError:
            pass
        except OSError:
            self._drop(slot)

    def _drop(self, slot: list[Any]) -> None:
        slot[1].close()
        slot[1] = None

    def _turn(self, slot: list[Any]) -> None:
        sock = slot[1]
        if sock is None:
            self._connect(slot)
            return
        try:
            closed = sock.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            closed = False
        except OSError:
            closed = True
        if closed:
            self._drop(slot)
            self._connect(slot)
        else:
            self._send(slot)

    def _run(self) -> None:
        step = 0.05
        per_step = max(1, int(len(self.slots) * step / TRICKLE_EVERY))
        i = 0
        while not self.stop.wait(step):
            for _ in range(per_step):
                self._turn(self.slots[i % len(self.slots)])
                i += 1

    def open_all(self) -> None:
        for slot in self.slots:
            self._connect(slot)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        for slot in self.slots:
            if slot[1] is not None:
                self._drop(slot)


@contextmanager
def own_fd_limit(needed: int) -> Iterator[None]:
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft, hard = before
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, max(hard, needed)))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


def daemon_limits() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, DAEMON_NOFILE)


def open_files_limit(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no Max open files in /proc/PID/limits")


def timed_get(port: int, path: str, headers: dict[str, str]) -> tuple[int, float]:
    """Status and seconds to a complete answer; a failure counts as status 0."""
    start = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=PROBE_WITHIN)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        response.read()
        status = response.status
    except (OSError, http.client.HTTPException):
        status = 0
    finally:
        conn.close()
    return status, time.monotonic() - start


def access_key(project: Project) -> str | None:
    try:
        view = credfile.read_managed(project.credentials_file, "test", ["app"])
    except Exception:
        return None
    creds = view.managed.get("app")
    return None if creds is None else creds.access_key_id


class TestSlowClients:
    @pytest.mark.unmeasured  # a timing promise: traced, the daemon is twice as slow
    def test_thousands_of_trickling_connections(self, project: Project, tmp_path: Path) -> None:
        """1,100 trickling connections against each server, more than the daemon's 1,024
        descriptors: /healthz and the endpoint still answer new clients within 2 s, refreshes
        keep landing on disk, no alert fires, and per-connection logs stay a few lines."""
        token = secrets.token_hex(16)
        token_file = tmp_path / "token"
        token_file.write_text(token)
        token_file.chmod(0o600)
        project.sts.proxy.lifetime = LIFETIME
        project.document["http"] = {"listen": "127.0.0.1:0"}
        project.document["container_credentials"] = {
            "listen": "127.0.0.1:0",
            "token_file": str(token_file),
        }
        # Refreshed with about 2.4 s left: `expiring` fires only for a refresh that is late.
        project.document["alerts"] = {"expiry_warning": "1s"}
        project.profile("app")
        project.write_config()
        env = env_with(project.env, CREDFRESH_WAKEUP_INTERVAL="5")
        with (
            own_fd_limit(4 * ATTACKERS + 256),
            DaemonProcess(
                project.config_path, env, tmp_path / "daemon.log", preexec=daemon_limits
            ) as proc,
        ):
            proc.wait_event("ready", 30)
            http_port = proc.wait_event("http_listening", 30)[0]["port"]
            endpoint_port = proc.wait_event("endpoint_listening", 30)[0]["port"]
            assert open_files_limit(proc.proc.pid) == (1024, 1024), "soft raised to hard"
            before = len(proc.events())
            trickler = Trickler(
                [
                    (http_port, b"GET /healthz HTTP/1.1\r\nX-Slow: "),
                    (endpoint_port, b"GET /v1/credentials/app HTTP/1.1\r\nX-Slow: "),
                ]
            )
            trickler.open_all()
            trickler.thread.start()
            probes: list[tuple[str, int, float]] = []
            keys = {access_key(project)}
            fds = 0
            try:
                deadline = time.monotonic() + ATTACK_FOR
                while time.monotonic() < deadline:
                    probes.append(("healthz", *timed_get(http_port, "/healthz", {})))
                    probes.append(
                        (
                            "endpoint",
                            *timed_get(
                                endpoint_port, "/v1/credentials/app", {"Authorization": token}
                            ),
                        )
                    )
                    keys.add(access_key(project))
                    fds = max(fds, len(list(Path(f"/proc/{proc.proc.pid}/fd").iterdir())))
                    time.sleep(0.3)
            finally:
                trickler.close()
            events = proc.events()[before:]
        slow = [p for p in probes if p[1] != 200 or p[2] >= PROBE_WITHIN]
        assert trickler.connects > 2 * ATTACKERS
        assert len(probes) >= 10
        assert not slow, f"probes failed or slower than {PROBE_WITHIN} s: {slow}"
        keys.discard(None)
        assert len(keys) >= 3, "refreshes kept landing on disk during the attack"
        names = [e.get("event") for e in events]
        alarms = sorted({n for n in names if n in FALSE_ALARMS})
        assert not alarms, f"false alarms during the attack: {alarms}"
        lines = [n for n in names if n in CONNECTION_EVENTS]
        assert "http_connection_shed" in lines
        assert "container_connection_shed" in lines
        assert len(lines) <= MAX_CONNECTION_LINES, lines
        assert fds <= MAX_DAEMON_FDS, "the cap bounds the daemon's descriptors"
        print(
            f"connects={trickler.connects} probes={len(probes)} max_probe="
            f"{max(p[2] for p in probes):.3f}s keys={len(keys)} lines={len(lines)} fds={fds}"
        )


class TestPieces:
    def test_admission(self) -> None:
        """Admit below the limit; at it evict a slow head, or refuse when there is none;
        never more than twice the limit in all."""
        assert admission(0, 0, False, 64) == "admit"
        assert admission(63, 64, True, 64) == "admit"
        assert admission(64, 0, True, 64) == "evict"
        assert admission(64, 0, False, 64) == "refuse"
        assert admission(64, 64, True, 64) == "refuse"
        assert admission(60, 68, True, 64) == "refuse"

    def test_slots_evict_the_oldest_slow_head_only(self) -> None:
        """The oldest connection still sending its head is shut down; one whose head is in is
        never touched."""
        pairs = [socket.socketpair() for _ in range(3)]
        try:
            slots = ConnectionSlots(2)
            first, second, third = (a for a, _ in pairs)
            assert slots.admit(first) == "admit"
            assert slots.admit(second) == "admit"
            assert slots.head_received(first)
            assert slots.admit(third) == "evict"
            assert slots.evicted(second)
            assert not slots.evicted(first)
            assert pairs[1][1].recv(1) == b""  # the peer of the evicted one sees the close
            assert not slots.head_received(second)
            other = socket.socketpair()
            try:
                assert slots.head_received(third)
                assert slots.admit(other[0]) == "refuse", "no slow head left to evict"
            finally:
                for sock in other:
                    sock.close()
            slots.release(second)
            assert len(slots) == 2
        finally:
            for a, b in pairs:
                a.close()
                b.close()

    def test_rate_limited_log(self) -> None:
        """One line per key and interval, the next one says how many were held back."""
        lines: list[tuple[str, dict[str, Any]]] = []

        class Log:
            def info(self, event: str, **kw: Any) -> None:
                lines.append((event, kw))

            def warning(self, event: str, **kw: Any) -> None:
                lines.append((event, kw))

        now = [0.0]
        limited = RateLimitedLog(Log(), 60.0, lambda: now[0])
        for _ in range(1000):
            limited.warning("k", "http_connection_failed", error="OSError")
        limited.warning("other", "http_connection_shed", reason="connection_limit")
        now[0] = 61.0
        limited.warning("k", "http_connection_failed", error="OSError")
        assert lines == [
            ("http_connection_failed", {"suppressed": 0, "error": "OSError"}),
            ("http_connection_shed", {"suppressed": 0, "reason": "connection_limit"}),
            ("http_connection_failed", {"suppressed": 999, "error": "OSError"}),
        ]

    @pytest.mark.parametrize(
        ("soft", "hard", "expected"),
        [
            (1024, 524288, 65536),
            (512, 1024, 1024),
            (1024, 1024, None),
            (1024, resource.RLIM_INFINITY, 65536),
            (100000, 200000, None),
            (resource.RLIM_INFINITY, resource.RLIM_INFINITY, None),
        ],
    )
    def test_nofile_target(self, soft: int, hard: int, expected: int | None) -> None:
        assert nofile_target(soft, hard) == expected
