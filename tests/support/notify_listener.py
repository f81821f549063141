"""A stand-in for systemd's notification socket, for tests of the daemon's sd_notify messages."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from support.waiting import patience

_UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid
_RECV_BYTES = 64 * 1024


@dataclass(frozen=True)
class NotifyMessage:
    """One datagram: its text, its `KEY=value` fields and the sender's pid (SO_PASSCRED)."""

    raw: str
    fields: dict[str, str] = field(default_factory=dict)
    pid: int | None = None

    @classmethod
    def parse(cls, data: bytes, pid: int | None = None) -> NotifyMessage:
        raw = data.decode("utf-8", "replace")
        fields = dict(line.split("=", 1) for line in raw.split("\n") if "=" in line)
        return cls(raw=raw, fields=fields, pid=pid)


class NotifyListener:
    """Binds a datagram socket like systemd's and collects what is sent to it, in a thread.

    Usage: `with NotifyListener() as listener: run(env={**env, **listener.environ})`, then
    `listener.wait_for(lambda m: m.fields.get("READY") == "1")`. The socket lives in a
    short temp directory of its own (AF_UNIX paths are limited to 107 bytes, which pytest's
    tmp_path can exceed), or in the abstract namespace with `abstract=True`. Like systemd,
    it asks the kernel for the sender's credentials, so tests can check which pid sent.
    """

    def __init__(self, *, abstract: bool = False) -> None:
        self.abstract = abstract
        self.messages: list[NotifyMessage] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._dir: Path | None = None
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.address = ""

    def __enter__(self) -> NotifyListener:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            sock.settimeout(0.05)
            if self.abstract:
                name = f"credfresh-test-notify-{os.getpid()}-{os.urandom(6).hex()}"
                sock.bind("\0" + name)
                self.address = "@" + name
            else:
                self._dir = Path(tempfile.mkdtemp(prefix="cfn-", dir="/tmp"))
                path = self._dir / "notify"
                sock.bind(str(path))
                self.address = str(path)
        except BaseException:
            sock.close()
            self._remove_dir()
            raise
        self._sock = sock
        self._thread = threading.Thread(target=self._receive, name="notify-listener", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()
        self._remove_dir()

    @property
    def environ(self) -> dict[str, str]:
        """What to add to a child's environment so it notifies this listener."""
        return {"NOTIFY_SOCKET": self.address}

    def _remove_dir(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def _receive(self) -> None:
        assert self._sock is not None
        ancillary = socket.CMSG_SPACE(_UCRED.size)
        while not self._stop.is_set():
            try:
                data, cmsgs, _flags, _addr = self._sock.recvmsg(_RECV_BYTES, ancillary)
            except TimeoutError:
                continue
            except OSError:
                return
            pid = None
            for level, kind, payload in cmsgs:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = _UCRED.unpack(payload[: _UCRED.size])[0]
            message = NotifyMessage.parse(data, pid)
            with self._cond:
                self.messages.append(message)
                self._cond.notify_all()

    def wait_for(
        self,
        predicate: Callable[[NotifyMessage], bool],
        timeout: float = 5.0,
        *,
        patient: bool = True,
    ) -> NotifyMessage:
        """The first message (already received or arriving in time) that matches.

        Waits at most `patience(timeout)`, or exactly `timeout` with `patient=False` (for a
        test that expects nothing); raises AssertionError listing what did arrive, so a
        failing test shows the sequence.
        """
        deadline = time.monotonic() + (patience(timeout) if patient else timeout)
        with self._cond:
            while True:
                for message in self.messages:
                    if predicate(message):
                        return message
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [m.raw for m in self.messages]
                    raise AssertionError(f"no matching notify message in time: {seen}")
                self._cond.wait(remaining)

    def wait_for_count(self, count: int, timeout: float = 5.0) -> list[NotifyMessage]:
        """The first `count` messages, waiting at most `patience(timeout)` for them."""
        deadline = time.monotonic() + patience(timeout)
        with self._cond:
            while len(self.messages) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [m.raw for m in self.messages]
                    raise AssertionError(f"{len(seen)} of {count} messages in time: {seen}")
                self._cond.wait(remaining)
            return list(self.messages[:count])


__all__ = ["NotifyListener", "NotifyMessage"]
