"""engine.scheduler over a real APScheduler: one-shot jobs by name, late runs still run."""

from __future__ import annotations

import inspect
import queue
from datetime import UTC, datetime, timedelta

from credfresh.engine.scheduler import ApScheduler, _Run
from support.waiting import wait_until


def test_a_named_job_runs_with_its_name_and_can_be_moved_or_cancelled() -> None:
    ran: queue.Queue[str] = queue.Queue()
    scheduler = ApScheduler(2)
    scheduler.start(lambda name: None)
    try:
        later = datetime.now(UTC) + timedelta(hours=1)
        scheduler.at("a", later, ran.put)
        scheduler.at("b", later, ran.put)
        assert scheduler.next_run("a") == later
        scheduler.cancel("b")
        assert scheduler.next_run("b") is None
        scheduler.at("a", datetime.now(UTC) - timedelta(seconds=5), ran.put)
        assert ran.get(timeout=30) == "a", "a late one-shot job still runs, with its name"
        # The scheduler drops a one-shot job after handing it over, so it may run first.
        wait_until(lambda: scheduler.next_run("a") is None, 30, "the run job dropped")
        assert ran.empty(), "it ran once"
    finally:
        scheduler.shutdown()


def test_the_job_states_the_signature_apscheduler_checks() -> None:
    """APScheduler checks each added job's arguments; the stated signature is the job's."""
    seen: list[str] = []
    run = _Run(seen.append)
    assert list(inspect.signature(run).parameters) == ["name"]
    inspect.signature(run).bind("p")
    run("p")
    assert seen == ["p"]
