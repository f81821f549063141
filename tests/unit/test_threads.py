"""The elastic pool: tasks run at once while threads are free, and idle threads end."""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError

import pytest

from credfresh.threads import ElasticPool


class TestElasticPool:
    def test_results_and_exceptions_reach_the_future(self) -> None:
        pool = ElasticPool(2, name="t")
        assert pool.submit(lambda x: x * 2, 21).result(timeout=10) == 42
        boom = pool.submit(lambda: 1 // 0)
        with pytest.raises(ZeroDivisionError):
            boom.result(timeout=10)
        pool.shutdown()

    def test_runs_up_to_the_limit_at_once_then_queues(self) -> None:
        pool = ElasticPool(3, name="t")
        gate = threading.Event()
        started = threading.Semaphore(0)

        def hold() -> str:
            started.release()
            gate.wait(30)
            return threading.current_thread().name

        futures = [pool.submit(hold) for _ in range(5)]
        for _ in range(3):
            assert started.acquire(timeout=10)
        assert not started.acquire(timeout=0.05)  # the 4th waits for a free thread
        assert pool.threads() == 3
        gate.set()
        names = {future.result(timeout=10) for future in futures}
        assert len(names) == 3
        pool.shutdown()
        assert pool.threads() == 0

    def test_an_idle_thread_is_reused_then_ends(self) -> None:
        pool = ElasticPool(4, name="t", idle_exit=0.2)
        first = pool.submit(threading.get_ident).result(timeout=10)
        assert pool.submit(threading.get_ident).result(timeout=10) == first
        ended = threading.Event()

        def watch() -> None:
            while pool.threads():
                ended.wait(0.02)
            ended.set()

        watcher = threading.Thread(target=watch)
        watcher.start()
        assert ended.wait(10)
        watcher.join()
        assert pool.submit(lambda: 7).result(timeout=10) == 7  # a new thread after the end

    def test_shutdown_drains_or_cancels(self) -> None:
        pool = ElasticPool(1, name="t")
        gate = threading.Event()
        running = pool.submit(gate.wait, 30)
        queued = pool.submit(lambda: "late")
        gate.set()
        pool.shutdown(wait=True)
        assert running.result(timeout=1) is True
        assert queued.result(timeout=1) == "late"
        with pytest.raises(RuntimeError):
            pool.submit(lambda: None)

        pool = ElasticPool(1, name="t")
        gate.clear()
        pool.submit(gate.wait, 30)
        queued = pool.submit(lambda: "never")
        pool.shutdown(wait=False, cancel_futures=True)
        gate.set()
        with pytest.raises(CancelledError):
            queued.result(timeout=1)

    def test_limit_must_be_positive(self) -> None:
        with pytest.raises(ValueError, match="at least 1"):
            ElasticPool(0, name="t")
