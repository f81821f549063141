"""A thread pool whose threads end when idle: a daemon at rest holds no thread it does not use.

`concurrent.futures.ThreadPoolExecutor` keeps every thread it ever started, so a 64-worker
daemon holds 64 idle threads (and their stacks) between refresh waves; and a thread started
per call costs about as much CPU as a small STS answer (benchmarks/PROFILE.md, "Footprint").
Here a task goes to an idle thread if there is one, else to a new thread up to the limit,
else waits in line; a thread idle for `idle_exit` seconds ends.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, Final, TypeVar

T = TypeVar("T")

IDLE_EXIT: Final = 10.0

_Task = tuple["Future[Any]", Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class ElasticPool(Executor):
    """At most `max_workers` threads named `name`, each ending after `idle_exit` s idle."""

    def __init__(self, max_workers: int, *, name: str, idle_exit: float = IDLE_EXIT) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1 (got {max_workers})")
        self._max = max_workers
        self._name = name
        self._idle_exit = idle_exit
        self._cond = threading.Condition(threading.Lock())
        self._tasks: collections.deque[_Task] = collections.deque()
        self._threads: set[threading.Thread] = set()
        self._idle = 0
        self._closed = False
        self._serial = 0

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._tasks.append((future, fn, args, kwargs))
            if self._idle >= len(self._tasks):
                self._cond.notify()
            elif len(self._threads) < self._max:
                self._serial += 1
                thread = threading.Thread(
                    target=self._work, name=f"{self._name}-{self._serial}", daemon=True
                )
                self._threads.add(thread)
                thread.start()
        return future

    def threads(self) -> int:
        """How many threads the pool holds now, busy or idle."""
        with self._cond:
            return len(self._threads)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._cond:
            self._closed = True
            if cancel_futures:
                while self._tasks:
                    self._tasks.popleft()[0].cancel()
            self._cond.notify_all()
            threads = list(self._threads)
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join()

    def _next(self) -> _Task | None:
        """The next task, or None when this thread should end (idle too long, or shut down)."""
        with self._cond:
            while not self._tasks:
                if self._closed:
                    break
                self._idle += 1
                woken = self._cond.wait(self._idle_exit)
                self._idle -= 1
                if not woken and not self._tasks:
                    break
            else:
                return self._tasks.popleft()
            self._threads.discard(threading.current_thread())
            return None

    def _work(self) -> None:
        while (task := self._next()) is not None:
            future, fn, args, kwargs = task
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # the future carries it to whoever waits
                future.set_exception(exc)
            else:
                future.set_result(result)
            del task, future, fn, args, kwargs
