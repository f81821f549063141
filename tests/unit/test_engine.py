"""The engine in process: a fake clock, a manual scheduler, a fake source, an in-memory file."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog

from conftest import Project
from credfresh.config.model import Config, Profile
from credfresh.config.validate import load_config
from credfresh.credentials import NEVER, Credentials
from credfresh.credfile.memory import MemoryStore
from credfresh.credfile.store import WriteResult
from credfresh.engine import policy
from credfresh.engine.batcher import BatchWriter
from credfresh.engine.engine import Engine
from credfresh.engine.parts import Parts
from credfresh.engine.state import ProfileState
from credfresh.observe.logs import Redactor
from credfresh.sources.base import Issued
from credfresh.sources.classify import SourceError, classify
from support.waiting import wait_until

T0 = datetime(2030, 1, 1, tzinfo=UTC)


class FakeClock:
    """Wall time moves only when a test says so; monotonic time is real (thread waits)."""

    def __init__(self) -> None:
        self.at = T0

    def now(self) -> datetime:
        return self.at

    def monotonic(self) -> float:
        return time.monotonic()


class ManualScheduler:
    """Runs due jobs, in time order, only when `run_due` is called."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.jobs: dict[str, tuple[datetime, Callable[[str], None]]] = {}
        self.on_missed: Callable[[str], None] = lambda name: None

    def start(self, on_missed: Callable[[str], None]) -> None:
        self.on_missed = on_missed

    def at(self, name: str, when: datetime, job: Callable[[str], None]) -> None:
        self.jobs[name] = (when, job)

    def every(self, seconds: float, job: Callable[[], None]) -> None:
        return None

    def next_run(self, name: str) -> datetime | None:
        return self.jobs[name][0] if name in self.jobs else None

    def cancel(self, name: str) -> None:
        self.jobs.pop(name, None)

    def poke(self) -> None:
        return None

    def shutdown(self) -> None:
        self.jobs.clear()

    def run_due(self) -> list[str]:
        ran = []
        while due := sorted((w, n) for n, (w, _) in self.jobs.items() if w <= self.clock.at):
            name = due[0][1]
            _, job = self.jobs.pop(name)
            job(name)
            ran.append(name)
        return ran


class FakeSource:
    """Issues 1-hour credentials, or fails with the code queued for a profile."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.calls: list[tuple[str, str | None]] = []
        self.fail: dict[str, str] = {}

    def fetch(self, profile: Profile, parent: Credentials | None = None) -> Issued:
        self.calls.append((profile.name, parent.access_key_id if parent else None))
        if code := self.fail.get(profile.name):
            raise SourceError(classify(code, "injected"))
        now = self.clock.now()
        key = f"ASIA{profile.name.upper():0<12}{len(self.calls):04d}"
        creds = Credentials(key, "s", "t", now + timedelta(hours=1), now)
        return Issued(creds, timedelta(0))


class RecordingStore(MemoryStore):
    """The engine's in-memory store, counting writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[set[str]] = []

    def write_profiles(
        self,
        path: Path,
        owner: str,
        updates: Mapping[str, Credentials],
        removals: Collection[str] = (),
        *,
        adopt: Collection[str] = (),
        on_event: Any = None,
    ) -> WriteResult:
        self.writes.append(set(updates) | set(removals))
        return super().write_profiles(path, owner, updates, removals, adopt=adopt)


class HeapLog:
    """The engine's `Heap`, recording what it was told."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def settled(self, *, collect: bool = False) -> None:
        self.calls.append("settled")

    def dropping(self) -> None:
        self.calls.append("dropping")


class Rig:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.clock = FakeClock()
        self.scheduler = ManualScheduler(self.clock)
        self.source = FakeSource(self.clock)
        self.store = RecordingStore()
        self.heap = HeapLog()
        parts = Parts(
            source_factory=lambda cfg: self.source,
            scheduler=self.scheduler,
            clock=self.clock,
            store=self.store,
            writer_factory=lambda write, **kw: BatchWriter(write, linger=0.0, **kw),
            log=structlog.get_logger("test"),
            redactor=Redactor(),
            heap=self.heap,
        )
        self.engine = Engine(config, parts, wakeup_interval=30.0)

    def step(self) -> list[str]:
        ran = self.scheduler.run_due()
        assert self.engine.flush(10.0)
        return ran


@pytest.fixture
def make(project: Project) -> Iterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def build(**profiles: dict[str, Any]) -> Rig:
        for name, keys in profiles.items():
            project.profile(name, **keys)
        project.write_config()
        rig = Rig(load_config(project.config_path, project.env, Path.home()))
        rigs.append(rig)
        return rig

    yield build
    for rig in rigs:
        rig.engine.stop(grace=1.0)


def test_first_pass_fetches_and_writes_then_waits_for_the_due_time(make: Any) -> None:
    """Missing profiles run at once and land in one file; the next run is the jittered due time."""
    rig = make(a={}, b={})
    signalled: list[str] = []
    rig.engine.start({}, on_first_pass=lambda: signalled.append("x"))
    assert signalled == []
    assert not rig.engine.first_pass_done()
    assert sorted(rig.step()) == ["a", "b"]
    assert signalled == ["x"]
    assert rig.engine.all_on_disk(rig.clock.at)
    assert set(rig.store.sections) == {"a", "b"}
    creds = rig.store.sections["a"]
    due = policy.due_at(creds, rig.config.profiles["a"].refresh_before)
    when = rig.scheduler.next_run("a")
    assert when is not None
    assert due - (creds.expiration - due) * 0.1 <= when <= due
    assert rig.engine.snapshot().first_pass_done
    rig.clock.at = when
    assert "a" in rig.step()


def test_restart_reuses_fresh_credentials_without_a_call(make: Any) -> None:
    """Fresh sections already in the file are kept: a restart costs no source call."""
    rig = make(a={})
    rig.store.sections["a"] = Credentials(
        "ASIAKEPTKEPTKEPT0001", "s", "t", T0 + timedelta(hours=1), T0
    )
    signalled: list[str] = []
    rig.engine.start(
        {"a": ProfileState(consecutive_failures=0)}, on_first_pass=lambda: signalled.append("x")
    )
    assert signalled == ["x"], "nothing due: the first pass is over at start (READY at once)"
    assert rig.engine.first_pass_done()
    assert rig.engine.all_on_disk(T0)
    assert rig.step() == []
    assert rig.source.calls == []
    assert rig.engine.on_disk("a") == rig.store.sections["a"]
    assert signalled == ["x"]


def test_failure_backs_off_and_recovers(make: Any) -> None:
    """A transient failure retries after retry_delay (within its jitter), then succeeds."""
    rig = make(a={})
    rig.source.fail["a"] = "Throttling"
    rig.engine.start({})
    rig.step()
    state = rig.engine.snapshot().states["a"]
    assert state.consecutive_failures == 1
    assert state.last_error_code == "Throttling"
    delay = (rig.scheduler.next_run("a") - T0).total_seconds()
    initial = rig.config.retry.initial
    assert initial * 0.5 <= delay <= initial
    del rig.source.fail["a"]
    rig.clock.at = T0 + timedelta(seconds=delay)
    assert rig.step() == ["a"]
    assert rig.engine.snapshot().states["a"].consecutive_failures == 0


def test_permanent_failure_retries_at_the_maximum(make: Any) -> None:
    """A permanent error waits retry.max before the next try."""
    rig = make(a={})
    rig.source.fail["a"] = "AccessDenied"
    rig.engine.start({})
    rig.step()
    assert rig.scheduler.next_run("a") == T0 + timedelta(seconds=rig.config.retry.max)


def test_chained_role_runs_after_its_source_with_its_credentials(make: Any) -> None:
    """A chained profile waits for its source and is called with the source's fresh keys."""
    rig = make(root={}, child={"source_profile": "root"})
    rig.engine.start({})
    rig.step()
    assert [name for name, _ in rig.source.calls] == ["root", "child"]
    assert rig.source.calls[1][1] == rig.store.sections["root"].access_key_id


def test_refreshes_close_together_become_one_write(make: Any) -> None:
    """The batching writer writes what was submitted before it started in one write."""
    rig = make(a={}, b={}, c={})
    writer = rig.engine._writer
    creds = Credentials("ASIABATCHBATCH000001", "s", "t", T0 + timedelta(hours=1), T0)
    for name in ("a", "b", "c"):
        writer.submit({name: creds})
    writer.start()
    assert writer.flush(10.0)
    assert rig.store.writes == [{"a", "b", "c"}]
    writer.stop(timeout=5.0)


def test_reload_reports_its_diff_and_removes_sections(make: Any, project: Project) -> None:
    """apply() names added, removed, changed and retimed profiles and drops removed sections."""
    rig = make(a={}, b={}, c={})
    rig.engine.start({})
    rig.step()
    del project.document["profiles"]["a"]
    project.profile("b", role_session_name="other")
    project.profile("c", refresh_before="10m")
    project.profile("d")
    project.write_config()
    changes = rig.engine.apply(load_config(project.config_path, project.env, Path.home()))
    assert changes == {"added": ["d"], "removed": ["a"], "changed": ["b"], "retimed": ["c"]}
    assert sorted(rig.step()) == ["b", "d"]
    assert "a" not in rig.store.sections


def test_a_dropped_job_is_scheduled_again(make: Any) -> None:
    """The scheduler losing a run (the soak's lost retry) does not end the profile's refreshes."""
    rig = make(a={})
    rig.source.fail["a"] = "Throttling"
    rig.engine.start({})
    rig.step()
    rig.scheduler.cancel("a")
    rig.scheduler.on_missed("a")
    assert rig.scheduler.next_run("a") is not None


class BlockingSource(FakeSource):
    """Holds each fetch of `held` until `release` is set."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.held: set[str] = set()
        self.inside = threading.Event()
        self.release = threading.Event()

    def fetch(self, profile: Profile, parent: Credentials | None = None) -> Issued:
        if profile.name in self.held:
            self.inside.set()
            assert self.release.wait(10.0)
        return super().fetch(profile, parent)


def _ask(rig: Rig, names: list[str], wait: float) -> tuple[threading.Thread, dict[str, Any]]:
    """`refresh_now` on its own thread, as the control socket calls it; its result fills in."""
    got: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: got.update(rig.engine.refresh_now(names, wait)))
    thread.start()
    return thread, got


class TestRefreshNow:
    def test_answers_once_the_new_credentials_are_on_disk(self, make: Any) -> None:
        """A fresh profile runs at once; the answer is what the file then holds."""
        rig = make(a={}, b={})
        rig.engine.start({})
        rig.step()
        old = dict(rig.store.sections)
        thread, got = _ask(rig, ["a"], 10.0)
        wait_until(lambda: rig.scheduler.next_run("a") == T0, 5, "a scheduled now")
        assert rig.step() == ["a"]
        thread.join(10.0)
        assert got["a"] == rig.store.sections["a"] != old["a"]
        assert rig.store.sections["b"] == old["b"]

    def test_a_run_already_in_flight_does_not_count(self, make: Any) -> None:
        """A run that started before the request may have used a source key rotated since:
        the profile runs again and the answer is that second run's credentials."""
        rig = make(a={})
        source = BlockingSource(rig.clock)
        rig.engine._source = source
        source.held.add("a")
        rig.engine.start({})
        first = threading.Thread(target=rig.step)
        first.start()
        assert source.inside.wait(5.0)
        thread, got = _ask(rig, ["a"], 10.0)
        wait_until(lambda: rig.engine._rerun == {"a"}, 5, "the rerun noted")
        source.held.clear()
        source.release.set()
        first.join(10.0)  # the manual scheduler runs the rerun in the same step
        thread.join(10.0)
        assert len(source.calls) == 2
        assert got["a"].access_key_id == rig.store.sections["a"].access_key_id
        assert got["a"].access_key_id.endswith("0002")

    def test_a_failure_is_the_answer(self, make: Any) -> None:
        """The run's classified failure comes back, permanent or not, with its hint."""
        rig = make(a={})
        rig.engine.start({})
        rig.step()
        rig.source.fail["a"] = "AccessDenied"
        thread, got = _ask(rig, ["a"], 10.0)
        wait_until(lambda: rig.scheduler.next_run("a") == T0, 5, "a scheduled now")
        rig.step()
        thread.join(10.0)
        assert got["a"].code == "AccessDenied"
        assert got["a"].permanent
        assert "trust policy" in got["a"].hint

    def test_nothing_landed_in_time_is_absent_and_stopping_answers(self, make: Any) -> None:
        """A profile that did not land within the wait is left out; once the engine stops,
        an open request and any new one get `daemon_stopping`."""
        rig = make(a={})
        rig.engine.start({})
        rig.step()
        assert rig.engine.refresh_now(["a"], 0.05) == {}
        thread, got = _ask(rig, ["a"], 10.0)
        wait_until(lambda: rig.engine._tickets, 5, "the request open")
        rig.engine.stop(grace=1.0)
        thread.join(10.0)
        assert got["a"].code == "daemon_stopping"
        assert rig.engine.refresh_now(["a"], 1.0)["a"].code == "daemon_stopping"

    def test_a_profile_removed_meanwhile_fails_as_unknown(
        self, make: Any, project: Project
    ) -> None:
        """A reload removing a profile a request waits for answers it at once."""
        rig = make(a={}, b={})
        rig.engine.start({})
        rig.step()
        thread, got = _ask(rig, ["a"], 10.0)
        wait_until(lambda: rig.engine._tickets, 5, "the request open")
        del project.document["profiles"]["a"]
        project.write_config()
        rig.engine.apply(load_config(project.config_path, project.env, Path.home()))
        thread.join(10.0)
        assert got["a"].code == "unknown_profile"


class StaticSource(FakeSource):
    """Issues static sets (no token, no expiry) and says when their files changed."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.changed: set[str] = set()

    def fetch(self, profile: Profile, parent: Credentials | None = None) -> Issued:
        self.calls.append((profile.name, None))
        if code := self.fail.get(profile.name):
            raise SourceError(classify(code, "injected"))
        self.changed.discard(profile.name)
        key = f"AKIA{profile.name.upper():0<12}{len(self.calls):04d}"
        return Issued(Credentials(key, "s", "", None, self.clock.now()), timedelta(0))

    def source_changed(self, profile: Profile) -> bool:
        return profile.name in self.changed


def test_static_set_is_not_rescheduled_and_follows_its_files(make: Any) -> None:
    """A static set is fetched once, never due by time, never expired; a change of its
    files (the wake-up asks the source) fetches it again; a restart reads it again."""
    rig = make(a={})
    rig.source = StaticSource(rig.clock)
    rig.engine._source = rig.source
    rig.engine.start({})
    assert rig.step() == ["a"]
    assert rig.store.sections["a"].static
    assert rig.scheduler.next_run("a") is None
    rig.clock.at = T0 + timedelta(days=400)
    rig.engine.wakeup()
    assert rig.step() == []
    snap = rig.engine.snapshot()
    assert snap.on_disk["a"] == NEVER
    assert snap.states["a"].state == "fresh"
    rig.source.changed.add("a")
    rig.engine.wakeup()
    assert rig.step() == ["a"]
    assert rig.store.sections["a"].access_key_id.endswith("0002")
    rig.source.fail["a"] = "source_misconfigured"
    rig.source.changed.add("a")
    rig.engine.wakeup()
    rig.step()
    retry = rig.scheduler.next_run("a")
    assert retry is not None
    assert retry > rig.clock.at
    rig.engine.wakeup()
    assert rig.scheduler.next_run("a") == retry, "a failing copy keeps its backoff"
    assert rig.store.sections["a"].access_key_id.endswith("0002"), "the last good set stays"
    rig.engine.stop(grace=1.0)
    again = make(a={})
    again.source = StaticSource(again.clock)
    again.engine._source = again.source
    again.store.sections["a"] = rig.store.sections["a"]
    again.engine.start({})
    assert again.step() == ["a"]


def test_static_set_on_disk_of_an_sts_profile_is_not_trusted(make: Any) -> None:
    """Only a copy holds long-term keys: an STS profile whose section reads as static (it was
    a copy before a config change) is not fresh at start, so nothing reports it ready."""
    rig = make(a={})
    rig.store.sections["a"] = Credentials("AKIAOLDSTATIC0000001", "s", "", None, T0)
    rig.engine.start({})
    snap = rig.engine.snapshot()
    assert not snap.first_pass_done
    assert snap.states["a"].state != "fresh"
    assert rig.step() == ["a"]
    assert rig.store.sections["a"].expiration is not None
    assert rig.engine.snapshot().first_pass_done
    rig.engine.stop(grace=1.0)


def _status_from_snapshot(rig: Any) -> tuple[int, list[tuple[str, str]], tuple[str, float] | None]:
    """The status line's facts as the snapshot gives them: what `status_facts` must match."""
    now = rig.clock.now()
    snap = rig.engine.snapshot()
    fresh = sum(1 for expires in snap.in_memory.values() if expires and expires > now)
    failing = [(n, e.last_error_code) for n, e in snap.states.items() if e.last_error_code]
    upcoming = [
        (name, (entry.next_attempt - now).total_seconds())
        for name, entry in snap.states.items()
        if entry.next_attempt is not None
    ]
    return fresh, failing, min(upcoming, key=lambda item: item[1]) if upcoming else None


def test_status_facts_read_in_place_match_the_snapshot(make: Any) -> None:
    """systemd's status line reads the tables in place; it says what a full copy would."""
    rig = make(a={}, b={}, c={})
    assert rig.engine.status_facts(rig.clock.now()) == (0, [], None)
    rig.source.fail["b"] = "AccessDenied"
    rig.engine.start({})
    rig.step()
    facts = rig.engine.status_facts(rig.clock.now())
    assert facts == _status_from_snapshot(rig)
    assert facts[0] == 2
    assert facts[1] == [("b", "AccessDenied")]
    assert facts[2] is not None
    rig.clock.at = T0 + timedelta(days=1)
    assert rig.engine.status_facts(rig.clock.now()) == _status_from_snapshot(rig)
    assert rig.engine.status_facts(rig.clock.now())[0] == 0, "expired sets are not fresh"


def test_same_on_disk_compares_the_keys_and_the_expiry_as_written() -> None:
    """The file holds times to the second: a sub-second difference is the same section, any
    other difference (a key, the token, a second) is not."""
    from credfresh.engine.parts import same_on_disk

    wrote = Credentials(
        "ASIAEXAMPLE000000001", "s", "t", T0 + timedelta(hours=1, microseconds=9), T0
    )
    read = Credentials("ASIAEXAMPLE000000001", "s", "t", T0 + timedelta(hours=1), T0)
    assert same_on_disk(read, wrote)
    assert not same_on_disk(None, wrote)
    assert not same_on_disk(
        Credentials("ASIAEXAMPLE000000001", "s", "u", read.expiration, T0), wrote
    )
    assert not same_on_disk(
        Credentials("ASIAEXAMPLE000000002", "s", "t", read.expiration, T0), wrote
    )
    later = T0 + timedelta(hours=1, seconds=1)
    assert not same_on_disk(Credentials("ASIAEXAMPLE000000001", "s", "t", later, T0), wrote)


def test_the_heap_settles_after_the_first_issue_and_thaws_before_sources_are_dropped(
    make: Any, project: Project
) -> None:
    """Sources built and used: freeze once, not per refresh; new `sts` settings replace the
    sources, so the heap thaws first (a frozen cycle is never freed), then settles again."""
    rig = make(a={}, b={})
    rig.engine.start({})
    assert rig.heap.calls == []
    assert sorted(rig.step()) == ["a", "b"]
    assert rig.heap.calls == ["settled"]
    project.profile("c")
    project.write_config()
    rig.engine.apply(load_config(project.config_path, project.env, Path.home()))
    rig.step()
    assert rig.heap.calls == ["settled"], "the same sources: nothing to thaw"
    project.document.setdefault("sts", {})["timeout"] = 7
    project.write_config()
    rig.engine.apply(load_config(project.config_path, project.env, Path.home()))
    assert rig.heap.calls == ["settled", "dropping"]
    rig.clock.at = T0 + timedelta(hours=1)
    rig.step()
    assert rig.heap.calls == ["settled", "dropping", "settled"]


def test_sets_read_back_from_the_file_do_not_settle_the_heap(make: Any) -> None:
    """A restart with everything fresh on disk has built no botocore yet: the heap settles
    only once a source issued."""
    rig = make(a={})
    rig.store.sections["a"] = Credentials(
        "ASIAEXAMPLE000000001", "s", "t", T0 + timedelta(hours=1), T0
    )
    rig.engine.start({})
    assert rig.engine.first_pass_done()
    assert rig.step() == []
    assert rig.heap.calls == []
    rig.clock.at = T0 + timedelta(hours=1)
    rig.engine.wakeup()
    assert rig.step() == ["a"]
    assert rig.heap.calls == ["settled"]


def _blocking_writer() -> tuple[BatchWriter, threading.Event, threading.Event]:
    entered, release = threading.Event(), threading.Event()

    def write(updates: Mapping[str, Credentials], removals: Collection[str]) -> dict[str, Any]:
        entered.set()
        release.wait(30)
        return {}

    writer = BatchWriter(
        write,
        on_written=lambda *_: None,
        on_conflict=lambda *_: None,
        on_failed=lambda *_: None,
        linger=0.0,
    )
    writer.start()
    return writer, entered, release


def test_refresh_threads_step_aside_while_a_write_runs() -> None:
    """A write in progress holds back a refresh thread until it ends; with nothing being
    written the call returns at once."""
    writer, entered, release = _blocking_writer()
    began = time.monotonic()
    writer.step_aside(longest=30)
    assert time.monotonic() - began < 5, "nothing is being written"
    writer.submit({"a": Credentials("ASIAEXAMPLE000000001", "s", "t", T0, T0)})
    assert entered.wait(30)
    through = threading.Event()

    def refresh() -> None:
        writer.step_aside(longest=30)
        through.set()

    aside = threading.Thread(target=refresh)
    aside.start()
    assert not through.wait(0.3), "a write in progress holds refresh threads back"
    release.set()
    assert through.wait(30)
    aside.join(5)
    assert writer.flush(30)
    writer.stop(5)


def test_a_stuck_write_holds_refresh_threads_back_only_so_long() -> None:
    """A write stuck on a slow disk delays each refresh by `longest` at most."""
    writer, entered, release = _blocking_writer()
    writer.submit({"a": Credentials("ASIAEXAMPLE000000001", "s", "t", T0, T0)})
    assert entered.wait(30)
    began = time.monotonic()
    writer.step_aside(longest=0.2)
    waited = time.monotonic() - began
    release.set()
    assert 0.15 <= waited < 10
    assert writer.flush(30)
    writer.stop(5)
