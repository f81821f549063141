"""The engine's wiring to the alert rules, in process, against the development STS.

The engine is built but its scheduler is never started: the tests call its refresh and
wake-up steps themselves, with the clock passed in, and start its writer only when they want
the credentials to land. That shows what the alerts judge (the disk, not memory) and when
they resolve (after the rename, not after STS answered).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog

from conftest import Project
from credfresh.alerts.manager import AlertManager
from credfresh.config.model import Config
from credfresh.config.validate import load_config
from credfresh.credfile import store as credfile
from credfresh.engine import policy as refresh
from credfresh.engine.batcher import BatchWriter
from credfresh.engine.engine import Engine
from credfresh.engine.parts import Parts
from credfresh.engine.scheduler import ApScheduler
from credfresh.observe.logs import Redactor
from credfresh.sources.assume_role import StsSource

WAKEUP = 30.0


@dataclass
class DiskReadingSink:
    """Records every alert and, for each `resolved`, what the file held at that moment."""

    config: Config
    name: str = "recorder"
    bodies: list[dict[str, Any]] = field(default_factory=list)
    on_disk: list[str | None] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def send(self, payload: Mapping[str, object]) -> str:
        found = None
        if payload["status"] == "resolved" and isinstance(payload["profile"], str):
            view = credfile.read_managed(self.config.credentials_file, self.config.owner)
            creds = view.managed.get(payload["profile"])
            found = creds.access_key_id if creds else None
        with self.arrived:
            self.bodies.append(dict(payload))
            self.on_disk.append(found)
            self.arrived.notify_all()
        return "ok"

    def wait(self, count: int, timeout: float = 20.0) -> None:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.bodies) >= count, timeout), self.bodies

    def abort(self) -> None:
        return None

    def close(self) -> None:
        return None


class Clock:
    """A wall clock the test moves by setting `at`; monotonic time is the real one."""

    def __init__(self) -> None:
        self.at = datetime.now(UTC)

    def now(self) -> datetime:
        return self.at

    def monotonic(self) -> float:
        return time.monotonic()


@dataclass
class Rig:
    engine: Engine
    alerts: AlertManager
    sink: DiskReadingSink
    clock: Clock
    config: Config
    writing: bool = False

    def land(self) -> None:
        """Let the writer run and wait until everything submitted is renamed into place."""
        if not self.writing:
            self.engine._writer.start()
            self.writing = True
        assert self.engine._writer.flush(timeout=20.0)

    def hold_writes(self) -> None:
        """A new writer that has not started: what is submitted now stays off the disk."""
        self.engine._writer.stop(timeout=5.0)
        self.engine._writer = self.engine._make_writer(self.config)
        self.writing = False

    def tick(self) -> None:
        self.alerts.tick(self.clock.now(), self.engine.alert_facts())

    def kinds(self) -> list[tuple[object, object]]:
        return [(b["alert"], b["transition"]) for b in self.sink.bodies]


@pytest.fixture
def rig(project: Project) -> Iterator[Rig]:
    project.profile("app")
    project.write_config()
    config = load_config(project.config_path, project.env, Path.home())
    redactor = Redactor()
    sink = DiskReadingSink(config)
    clock = Clock()
    log = structlog.get_logger("test")
    alerts = AlertManager(config.alerts, redactor=redactor, logger=log, host="h", sinks=[sink])
    parts = Parts(
        source_factory=lambda cfg: StsSource(cfg.sts, credentials_file=str(cfg.credentials_file)),
        scheduler=ApScheduler(1),
        clock=clock,
        store=credfile,
        writer_factory=BatchWriter,
        log=log,
        redactor=redactor,
        alerts=alerts,
    )
    engine = Engine(config, parts, wakeup_interval=WAKEUP)
    rig = Rig(engine, alerts, sink, clock, config)
    yield rig
    if rig.writing:
        engine._writer.stop(timeout=5.0)
    alerts.close()


def test_alert_facts_are_the_disk_with_its_refresh_point_and_grace(rig: Rig) -> None:
    """Credentials issued but not yet written are not facts; once written they are, with the
    refresh rule's due time and the grace (wake-up + the STS call's timeouts)."""
    profile = rig.config.profiles["app"]
    rig.engine._refresh(profile)
    assert "app" in rig.engine._current
    assert rig.engine.alert_facts()["app"].expires_at is None
    rig.land()
    disk = rig.engine._written["app"]
    facts = rig.engine.alert_facts()["app"]
    assert facts.expires_at == disk.expiration
    assert facts.refresh_at == refresh.due_at(disk, profile.refresh_before)
    assert facts.grace == timedelta(seconds=WAKEUP + 2 * rig.config.sts.timeout)


def test_no_alert_past_the_refresh_point_within_the_grace(rig: Rig) -> None:
    """900 s credentials are due at 7.5 minutes left, inside the 10-minute warning: ticks
    after the refresh point but inside the grace send nothing; past it `expiring` fires,
    and it resolves only when the refreshed credentials are in the file."""
    profile = rig.config.profiles["app"]
    rig.engine._refresh(profile)
    rig.land()
    facts = rig.engine.alert_facts()["app"]
    assert facts.refresh_at is not None
    assert facts.expires_at is not None
    warning = timedelta(seconds=rig.config.alerts.expiry_warning)
    assert facts.expires_at - facts.refresh_at < warning
    rig.clock.at = facts.refresh_at + facts.grace / 2
    rig.tick()
    assert rig.sink.bodies == []
    rig.clock.at = facts.refresh_at + facts.grace + timedelta(seconds=1)
    rig.tick()
    rig.sink.wait(1)
    assert rig.kinds() == [("expiring", "fired")]
    rig.hold_writes()
    rig.engine._refresh(profile)
    rig.tick()
    assert rig.kinds() == [("expiring", "fired")], "resolved before the file holds the fix"
    fresh = rig.engine._current["app"]
    rig.land()
    rig.sink.wait(2)
    assert rig.kinds() == [("expiring", "fired"), ("expiring", "resolved")]
    assert rig.sink.on_disk[1] == fresh.access_key_id


def test_sts_error_resolves_only_after_the_rename(rig: Rig, project: Project) -> None:
    """A recovery's `resolved` waits for the writer: sent with the new section in the file."""
    profile = rig.config.profiles["app"]
    project.sts.proxy.fail("AccessDenied")
    rig.engine._refresh(profile)
    rig.sink.wait(1)
    assert rig.kinds() == [("sts_error", "fired")]
    project.sts.proxy.clear_faults()
    rig.engine._refresh(profile)
    fresh = rig.engine._current["app"]
    assert rig.alerts.snapshot().get("sts_error", "app") is not None
    assert rig.kinds() == [("sts_error", "fired")], "resolved while the writer had not run"
    rig.land()
    rig.sink.wait(2)
    assert rig.kinds() == [("sts_error", "fired"), ("sts_error", "resolved")]
    assert rig.sink.on_disk[1] == fresh.access_key_id


def test_readyz_does_not_run_ahead_of_the_disk(rig: Rig) -> None:
    """/readyz and the endpoint's view: issued credentials count only once in the file."""
    from credfresh.outputs.health import readiness

    rig.engine._refresh(rig.config.profiles["app"])
    status, body = readiness(rig.clock.now(), rig.engine.snapshot().on_disk)
    assert (status, body["failing"]) == (503, {"app": "missing"})
    assert rig.engine.on_disk("app") is None
    rig.land()
    status, _ = readiness(rig.clock.now(), rig.engine.snapshot().on_disk)
    assert status == 200
    on_disk = rig.engine.on_disk("app")
    assert on_disk is not None
    view = credfile.read_managed(rig.config.credentials_file, rig.config.owner)
    assert view.managed["app"].access_key_id == on_disk.access_key_id
