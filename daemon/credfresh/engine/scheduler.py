"""The engine's timer: named one-shot jobs and one interval job, behind a small protocol.

APScheduler's defaults silently drop a one-shot job late by over 1 s, and that profile would
never be refreshed again: here every job runs however late, coalesced, one at a time.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from credfresh.threads import ElasticPool

MISSED_RETRY: Final = 0.2
WAKEUP_JOB: Final = "__credfresh_wakeup__"


class Scheduler(Protocol):
    """Runs `job(name)` at a time; a name holds one pending run at most."""

    def start(self, on_missed: Callable[[str], None]) -> None:
        """Begin running jobs; `on_missed(name)` when a run was dropped (its job is gone)."""
        ...

    def at(self, name: str, when: datetime, job: Callable[[str], None]) -> None: ...

    def every(self, seconds: float, job: Callable[[], None]) -> None: ...

    def next_run(self, name: str) -> datetime | None:
        """When the name's job runs next; None when it has none (ran, or was dropped)."""
        ...

    def cancel(self, name: str) -> None: ...

    def poke(self) -> None:
        """Look at the due times again now (a suspend stops the scheduler's own wait)."""
        ...

    def shutdown(self) -> None: ...


class _Run:
    """A one-shot job as APScheduler calls it, its signature stated: APScheduler checks every
    job it adds with `inspect.signature`, a quarter of `add_job`, and the engine adds one
    per refresh."""

    __signature__ = inspect.Signature(
        [inspect.Parameter("name", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    )

    def __init__(self, job: Callable[[str], None]) -> None:
        self._job = job

    def __call__(self, name: str) -> None:
        self._job(name)


class ApScheduler:
    """APScheduler's background scheduler: `workers` refresh threads and one control thread."""

    def __init__(self, workers: int) -> None:
        from apscheduler.executors.pool import BasePoolExecutor
        from apscheduler.schedulers.background import BackgroundScheduler

        class Executor(BasePoolExecutor):  # type: ignore[misc]
            """APScheduler's pool executor over a pool whose idle threads end."""

            def __init__(self, workers: int, name: str) -> None:
                super().__init__(ElasticPool(workers, name=name))

        self._scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={
                "default": Executor(workers, "credfresh-refresh"),
                "control": Executor(1, "credfresh-wakeup"),
            },
            job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1},
        )

    def start(self, on_missed: Callable[[str], None]) -> None:
        from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED

        def skipped(event: Any) -> None:
            """A dropped run (max_instances=1: a retry came due while its job was finishing),
            told from another thread a moment later: this runs in the scheduler's loop."""
            name = str(getattr(event, "job_id", ""))
            if name and name != WAKEUP_JOB:
                timer = threading.Timer(MISSED_RETRY, on_missed, args=(name,))
                timer.daemon = True
                timer.start()

        self._scheduler.add_listener(skipped, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
        self._scheduler.start()

    def at(self, name: str, when: datetime, job: Callable[[str], None]) -> None:
        from apscheduler.triggers.date import DateTrigger

        self._scheduler.add_job(
            _Run(job),
            trigger=DateTrigger(when, timezone=UTC),
            id=name,
            name=name,
            args=[name],
            replace_existing=True,
        )

    def every(self, seconds: float, job: Callable[[], None]) -> None:
        self._scheduler.add_job(
            job,
            "interval",
            seconds=seconds,
            id=WAKEUP_JOB,
            executor="control",
            replace_existing=True,
        )

    def next_run(self, name: str) -> datetime | None:
        job = self._scheduler.get_job(name)
        return None if job is None else job.next_run_time

    def cancel(self, name: str) -> None:
        if self._scheduler.get_job(name) is not None:
            self._scheduler.remove_job(name)

    def poke(self) -> None:
        self._scheduler.wakeup()

    def shutdown(self) -> None:
        self._scheduler.shutdown(wait=False)
