"""credfresh run against the development STS with credentials that live seconds."""

from __future__ import annotations

import configparser
import contextlib
import fcntl
import itertools
import os
import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from botocore.configloader import raw_config_parse

from conftest import Project
from credfresh.credentials import Credentials, parse_time
from credfresh.credfile import store
from credfresh.engine.batcher import LINGER
from support import children
from support.daemon_runner import DaemonProcess, env_with
from support.waiting import wait_until

SCALE = float(os.environ.get("CREDFRESH_TEST_SCALE", "1"))


def daemon(project: Project, tmp_path: Path, **env: str) -> DaemonProcess:
    return DaemonProcess(
        project.config_path,
        env_with(project.env, CREDFRESH_WAKEUP_INTERVAL=env.pop("wakeup", "30"), **env),
        tmp_path / "daemon.log",
    )


def sections(project: Project) -> dict[str, Credentials]:
    return dict(store.read_managed(project.credentials_file, "test").managed)


def attempts(project: Project, session_name: str) -> list[float]:
    return [
        r.time
        for r in project.sts.proxy.requests(action="AssumeRole")
        if r.params.get("RoleSessionName") == session_name
    ]


class TestKeepsFresh:
    def test_fresh_for_a_minute(self, project: Project, tmp_path: Path) -> None:
        """Five profiles with 10 s credentials stay fresh for 20 s (four refreshes each; the
        soak runs this promise at scale); every sample parses; no storm."""
        project.sts.proxy.lifetime = 10
        names = [f"p{i}" for i in range(5)]
        for name in names:
            project.profile(name)
        project.write_config()
        duration = 20 * SCALE
        samples = expired = 0
        with daemon(project, tmp_path, wakeup="5") as proc:
            proc.wait_event("ready", 10)
            started = time.monotonic()
            while time.monotonic() - started < duration:
                now = datetime.now(UTC)  # judged when the read began: parsing can be slow
                parsed = raw_config_parse(str(project.credentials_file))
                for name in names:
                    expiry = parse_time(parsed[name]["x_security_token_expires"])
                    expired += expiry <= now
                samples += 1
                time.sleep(0.05)
            elapsed = time.monotonic() - started + 1
            assert proc.stop() == 0
        assert samples > 40
        assert expired == 0
        calls = project.sts.proxy.calls_by_role
        per_profile = calls[project.walkthrough.role_arn] / len(names)
        assert per_profile <= elapsed / (0.4 * 10) + 2

    def test_restart_costs_no_call(self, project: Project, tmp_path: Path) -> None:
        """A restart with fresh credentials on disk makes no STS call."""
        project.profile("a", duration_seconds=3600)
        project.profile("b", duration_seconds=3600)
        project.write_config()
        with daemon(project, tmp_path) as proc:
            proc.wait_event("ready", 10)
        calls = project.sts.proxy.calls
        with daemon(project, tmp_path) as proc:
            proc.wait_event("ready", 10, count=2)
            time.sleep(2)
        assert project.sts.proxy.calls == calls


class TestFailures:
    def test_outage(self, project: Project, tmp_path: Path) -> None:
        """An outage longer than a lifetime: alive, last good kept, backoff, fresh after."""
        project.sts.proxy.lifetime = 6
        project.document["retry"] = {"initial": "0.5s", "max": "3s"}
        project.profile("a")
        project.profile("b")
        project.write_config()
        with daemon(project, tmp_path, wakeup="2") as proc:
            proc.wait_event("ready", 10)
            before = sections(project)
            project.sts.proxy.drop = True
            outage_start = time.time()
            time.sleep(10)
            project.sts.proxy.drop = False
            recovered_at = time.time()
            assert proc.proc.poll() is None
            kept = sections(project)
            assert set(kept) == {"a", "b"}
            assert not any(kept[n].valid_at(datetime.now(UTC)) for n in kept)
            assert {n: c.access_key_id for n, c in kept.items()} == {
                n: c.access_key_id for n, c in before.items()
            }, "the last good credentials stay in place through the outage"
            proc.wait_for(
                lambda _: (
                    all(c.valid_at(datetime.now(UTC)) for c in sections(project).values())
                    and len(sections(project)) == 2
                ),
                5,
                "fresh credentials after recovery",
            )
            assert time.time() - recovered_at <= 5
        times = [t for t in attempts(project, "credfresh-a") if outage_start <= t <= recovered_at]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert len(gaps) >= 3
        for n, gap in enumerate(gaps):
            ceiling = min(3.0, 0.5 * 2**n)
            assert 0.5 * ceiling - 0.2 <= gap <= ceiling + 0.5, (n, gap)

    def test_permanent_error_isolated(self, project: Project, tmp_path: Path) -> None:
        """A permanent error on one profile leaves the others fresh; it retries every max."""
        project.sts.proxy.lifetime = 8
        project.document["retry"] = {"initial": "1s", "max": "2s"}
        project.profile("bad")
        project.profile("good")
        project.write_config()
        project.sts.proxy.fail(
            "AccessDenied", when=lambda r: r.params.get("RoleSessionName") == "credfresh-bad"
        )
        with daemon(project, tmp_path) as proc:
            proc.wait_event("refresh_failed", 10, count=4)
            failed = proc.named("refresh_failed")[0]
            assert failed["error_code"] == "AccessDenied"
            assert failed["permanent"] is True
            assert "trust policy" in failed["hint"]
            proc.wait_event("refreshed", 10, count=2)
        times = attempts(project, "credfresh-bad")
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(1.9 <= gap <= 2.6 for gap in gaps), gaps
        assert "good" in sections(project)


class TestWriting:
    @pytest.mark.unmeasured  # a timing promise: traced, the daemon is twice as slow
    def test_many_due_together_batch(self, project: Project, tmp_path: Path) -> None:
        """200 profiles due at once share a few writes; each lands in the next write or two.

        Load-independent bounds: the batches follow the refreshes' own span (one write per
        linger, plus the first), and a refresh waits for at most the write in progress.
        """
        for i in range(200):
            project.profile(f"p{i:03d}", duration_seconds=3600)
        project.write_config()
        with daemon(project, tmp_path) as proc:
            proc.wait_event("ready", 30)
            events = proc.events()
        writes = [
            (parse_time(e["timestamp"]), set(e["profiles"]))
            for e in events
            if e["event"] == "file_written"
        ]
        refreshed = [
            (parse_time(e["timestamp"]), e["profile"]) for e in events if e["event"] == "refreshed"
        ]
        span = (refreshed[-1][0] - refreshed[0][0]).total_seconds()
        assert 1 <= len(writes) <= min(20, span / LINGER + 2)
        for at, name in refreshed:
            # The write just before may hold it too: the log line can trail the hand-over.
            first = next((i for i, (when, _) in enumerate(writes) if when >= at), len(writes))
            nearby = writes[max(0, first - 1) : first + 2]
            assert any(name in names for _, names in nearby), name
        assert len(sections(project)) == 200

    def test_hand_edit_restored(self, project: Project, tmp_path: Path) -> None:
        """A managed section edited by hand is restored at the next wake-up."""
        project.profile("a", duration_seconds=3600)
        project.write_config()
        with daemon(project, tmp_path, wakeup="1") as proc:
            proc.wait_event("ready", 10)
            original = sections(project)["a"]
            parser = configparser.RawConfigParser()
            parser.read(project.credentials_file)
            parser.set("a", "aws_access_key_id", "ASIAHANDEDITEDXXXXXX")
            with project.credentials_file.open("w") as handle:
                parser.write(handle)
            proc.wait_event("section_restored", 5)
            proc.wait_for(
                lambda _: sections(project).get("a") == original, 3, "the section restored"
            )


class TestProcessLife:
    def test_sigterm_during_refreshes(self, project: Project, tmp_path: Path) -> None:
        """SIGTERM while STS calls are in flight: exit 0 within 6 s, file intact."""
        for i in range(20):
            project.profile(f"p{i}")
        project.write_config()
        project.sts.proxy.latency = 2.5
        before = project.credentials_file.read_bytes()
        with daemon(project, tmp_path) as proc:
            proc.wait_event("started", 10)
            time.sleep(0.5)
            sent = time.monotonic()
            proc.signal(signal.SIGTERM)
            code = proc.proc.wait(10)
            assert time.monotonic() - sent <= 6
            assert code == 0
        raw_config_parse(str(project.credentials_file))
        assert project.credentials_file.read_bytes().startswith(before)

    def test_second_instance_exits_3(self, project: Project, tmp_path: Path) -> None:
        """A second `run` for the same credentials file exits 3 naming the holder's pid."""
        project.profile("a")
        project.write_config()
        with daemon(project, tmp_path) as first:
            first.wait_event("ready", 10)
            second = DaemonProcess(
                project.config_path, env_with(project.env), tmp_path / "second.log"
            )
            assert second.proc.wait(10) == 3
            second.stop()
            assert f"pid {first.proc.pid}" in (tmp_path / "second.log").read_text()

    def test_stop_is_immediate_when_idle(self, project: Project, tmp_path: Path) -> None:
        """An idle daemon stops at once: waits are events, not sleeps."""
        project.profile("a", duration_seconds=3600)
        project.write_config()
        with daemon(project, tmp_path) as proc:
            proc.wait_event("ready", 10)
            sent = time.monotonic()
            proc.signal(signal.SIGINT)
            assert proc.proc.wait(5) == 0
            assert time.monotonic() - sent < 2

    def test_each_write_runs_in_a_child_it_reaps(self, project: Project, tmp_path: Path) -> None:
        """The write runs in a forked child: it holds the file's write lock and not the
        daemon's instance lock (so a daemon started after a SIGKILL is never refused by a
        write finishing), and the daemon reaps it."""
        project.profile("a")
        project.write_config()
        lock_path = Path(f"{project.credentials_file}.lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        held = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(held, fcntl.LOCK_EX)
        try:
            with daemon(project, tmp_path) as proc:
                found: list[list[str]] = []

                def writer_child() -> bool:
                    for pid in children(proc.pid):
                        with contextlib.suppress(OSError):
                            fds = [os.readlink(p) for p in Path(f"/proc/{pid}/fd").iterdir()]
                            if str(lock_path) in fds:
                                found.append(fds)
                                return True
                    return False

                wait_until(writer_child, 10, "a child of the daemon waiting for the write lock")
                assert not any(fd.endswith(".credfresh.pid") for fd in found[0]), found[0]
                fcntl.flock(held, fcntl.LOCK_UN)
                proc.wait_event("file_written", 10)
                assert "a" in sections(project)
                wait_until(lambda: not children(proc.pid), 10, "the write's child reaped")
                assert proc.stop() == 0
        finally:
            os.close(held)


_ = (threading, pytest)


class TestSkippedRuns:
    def test_retry_due_while_its_job_finishes_is_not_lost(
        self, project: Project, tmp_path: Path
    ) -> None:
        """Under a burst of very fast retries every profile still gets refreshed (a smoke test)."""
        project.document["retry"] = {"initial": "0.01s", "max": "0.02s"}
        for i in range(4):
            project.profile(f"p{i}", duration_seconds=3600)
        project.write_config()
        project.sts.proxy.fail("Throttling", times=120)
        with daemon(project, tmp_path, wakeup="30") as proc:
            proc.wait_for(
                lambda events: (
                    {e.get("profile") for e in events if e["event"] == "refreshed"}
                    >= {f"p{i}" for i in range(4)}
                ),
                20,
                "every profile refreshed after the throttling burst",
            )
