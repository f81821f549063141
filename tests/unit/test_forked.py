"""Work in a forked child: its answer, its failures, and what it inherits from the parent."""

from __future__ import annotations

import fcntl
import os
import signal
import tempfile
import threading
from pathlib import Path

import pytest

from credfresh import forked
from support import children


def _fds() -> list[int]:
    return sorted(int(fd) for fd in os.listdir("/proc/self/fd"))


class TestForked:
    def test_the_answer_comes_back_and_the_child_is_reaped(self) -> None:
        before = children()
        with forked.Forked(lambda: ("ok", os.getpid())) as child:
            assert child.started
            answer = child.answer(30)
        assert isinstance(answer, tuple)
        assert answer[0] == "ok"
        assert answer[1] not in (os.getpid(), None)
        assert children() == before

    def test_a_thread_other_than_main_may_fork(self) -> None:
        """The daemon's writer thread forks: its child sets its signals all the same."""
        stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        answers: list[object] = []

        def writer() -> None:
            with forked.Forked(lambda: [signal.getsignal(s) for s in stops]) as child:
                answers.append(child.answer(30))

        thread = threading.Thread(target=writer)
        thread.start()
        thread.join(60)
        assert answers == [[signal.SIG_IGN] * 3]

    def test_a_child_that_raises_gives_no_answer(self) -> None:
        def fail() -> object:
            raise RuntimeError("boom")

        with forked.Forked(fail) as child:
            assert child.answer(30) is None

    def test_a_silent_child_is_killed_and_reaped(self) -> None:
        before = children()
        release = threading.Event()
        with forked.Forked(lambda: release.wait(3600)) as child:
            assert child.answer(0.2) is None
        assert children() == before

    def test_leaving_without_asking_kills_the_child(self) -> None:
        before = children()
        release = threading.Event()
        with forked.Forked(lambda: release.wait(3600)):
            pass
        assert children() == before

    def test_no_fork_means_no_answer(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def refuse() -> int:
            raise OSError(11, "Resource temporarily unavailable")

        monkeypatch.setattr(os, "fork", refuse)
        with forked.Forked(lambda: 1) as child:
            assert not child.started
            assert child.answer(30) is None

    def test_the_child_holds_no_descriptor_of_the_parent(self, tmp_path: Path) -> None:
        """An orphaned child must not keep the daemon's instance lock (or a socket) while a
        new daemon starts: only stdin, the null stdout and stderr and its pipe stay open."""
        lock = os.open(tmp_path / "instance.lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with (
                tempfile.TemporaryFile(),
                forked.Forked(lambda: (_fds(), os.readlink("/proc/self/fd/1"))) as child,
            ):
                answer = child.answer(30)
        finally:
            os.close(lock)
        assert isinstance(answer, tuple)
        fds, stdout = answer
        assert lock not in fds
        assert len(fds) == 5, fds  # 0, 1, 2, the pipe, and listdir's own
        assert stdout == os.devnull

    def test_the_child_finishes_through_the_daemons_stop_signals(self) -> None:
        """systemd's SIGTERM reaches the whole unit: a write under way ends on its own."""
        stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        with forked.Forked(lambda: [signal.getsignal(s) == signal.SIG_IGN for s in stops]) as child:
            assert child.answer(30) == [True, True, True]
