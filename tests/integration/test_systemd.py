"""The systemd units verify cleanly and are hardened; the notify protocol reaches a real socket."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from credfresh.process.systemd import Notifier, should_ping, status_line
from support import REPO
from support.notify_listener import NotifyListener

UNITS_DIR = REPO / "systemd"
UNITS = ("credfresh.service", "credfresh@.service")
#: The ExecStart line as shipped; tests point it at an executable that exists here.
SHIPPED_EXEC_START = "ExecStart=/usr/local/bin/credfresh run"
#: What the units promise; the README's installation text relies on every one of these.
REQUIRED = {
    "Type": "notify",
    "NotifyAccess": "main",
    "ExecReload": "/bin/kill -HUP $MAINPID",
    "Restart": "on-failure",
    "RestartPreventExitStatus": "2 3",
    "WatchdogSec": "90s",
    "UMask": "0077",
    "LimitCORE": "0",
    "LimitNOFILE": "8192",
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "ProtectSystem": "strict",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallFilter": "@system-service",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
}
MAX_EXPOSURE = 2.5
_EXPOSURE = re.compile(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)")


class FixedClock:
    """A clock stopped at one monotonic reading."""

    def __init__(self, monotonic: float) -> None:
        self._monotonic = monotonic

    def now(self) -> datetime:
        return datetime(2026, 1, 1, tzinfo=UTC)

    def monotonic(self) -> float:
        return self._monotonic


def settings(unit: str) -> list[tuple[str, str]]:
    """The unit's `Key=value` lines in order (repeated keys kept), comments skipped."""
    pairs = []
    for line in (UNITS_DIR / unit).read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            pairs.append((key.strip(), value.strip()))
    return pairs


def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    return tool


def credfresh_executable(tmp_path: Path) -> Path:
    """An existing executable for ExecStart: the installed console script, else a stand-in.

    verify checks that ExecStart names an executable file; what it runs does not matter.
    """
    found = shutil.which("credfresh")
    if found:
        return Path(found).resolve()
    beside = Path(sys.executable).absolute().parent / "credfresh"
    if os.access(beside, os.X_OK):
        return beside
    stand_in = tmp_path / "bin" / "credfresh"
    stand_in.parent.mkdir()
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    return stand_in


@pytest.fixture
def unit_copies(tmp_path: Path) -> Path:
    """Both units copied into a temp dir, their ExecStart pointing at an existing executable."""
    target = credfresh_executable(tmp_path)
    units = tmp_path / "units"
    units.mkdir()
    for unit in UNITS:
        text = (UNITS_DIR / unit).read_text()
        assert text.count(SHIPPED_EXEC_START + "\n") == 1, unit
        quoted = '"' + str(target).replace("%", "%%") + '"'  # a unit reads % as a specifier
        (units / unit).write_text(text.replace(SHIPPED_EXEC_START, f"ExecStart={quoted} run"))
    return units


class TestUnitFiles:
    def test_required_settings(self) -> None:
        """Both units set the notify type, restart policy, watchdog and secret hygiene."""
        for unit in UNITS:
            values = dict(settings(unit))
            wrong = {k: values.get(k) for k, v in REQUIRED.items() if values.get(k) != v}
            assert not wrong, unit

    def test_writable_paths_are_directories(self) -> None:
        """ReadWritePaths names directories: renaming into a bind-mounted file fails (EBUSY)."""
        for unit in UNITS:
            for key, value in settings(unit):
                if key == "ReadWritePaths":
                    for path in value.split():
                        assert not path.lstrip("-").endswith("credentials"), (unit, path)

    def test_credentials_file_is_writable(self) -> None:
        """The credentials file's directory is the state directory or a ReadWritePaths entry."""
        for unit in UNITS:
            values = settings(unit)
            env = dict(v.split("=", 1) for k, v in values if k == "Environment")
            directory = env["AWS_SHARED_CREDENTIALS_FILE"].rsplit("/", 1)[0]
            writable = [
                p.lstrip("-") for k, v in values if k == "ReadWritePaths" for p in v.split()
            ]
            writable += ["/var/lib/" + v for k, v in values if k == "StateDirectory"]
            assert any(directory == w or directory.startswith(w + "/") for w in writable), unit

    def test_state_directories_do_not_overlap(self) -> None:
        """The template's state lives apart from /var/lib/credfresh, which systemd chowns."""
        system = dict(settings("credfresh.service"))["StateDirectory"]
        template = dict(settings("credfresh@.service"))["StateDirectory"]
        assert not template.startswith(system + "/")


class TestSystemdAnalyze:
    @pytest.mark.parametrize(
        "unit", ["credfresh.service", "credfresh@.service", "credfresh@alice.service"]
    )
    def test_verify_is_silent(self, unit_copies: Path, unit: str) -> None:
        """`systemd-analyze verify` prints nothing: its warnings exit 0, so stderr is the test."""
        result = subprocess.run(
            [systemd_analyze(), "verify", str(unit_copies / unit)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert (result.returncode, result.stderr, result.stdout) == (0, "", "")

    def test_verify_catches_a_typo(self, unit_copies: Path) -> None:
        """The silence above means something: a misspelt key does reach stderr."""
        unit = unit_copies / "credfresh.service"
        unit.write_text(unit.read_text().replace("ProtectClock=", "ProtectClok="))
        result = subprocess.run(
            [systemd_analyze(), "verify", str(unit)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert "ProtectClok" in result.stderr

    @pytest.mark.parametrize("unit", ["credfresh.service", "credfresh@alice.service"])
    def test_security_exposure(self, unit_copies: Path, unit: str) -> None:
        """`systemd-analyze security --offline=yes` rates the unit below 2.5 ("OK")."""
        result = subprocess.run(
            [systemd_analyze(), "security", "--offline=yes", "--no-pager", str(unit_copies / unit)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        match = _EXPOSURE.search(result.stdout)
        assert match, result.stdout + result.stderr
        assert float(match.group(1)) < MAX_EXPOSURE


class TestNotifier:
    @pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
    def test_messages_arrive_in_order(self, abstract: bool) -> None:
        """READY, STATUS, RELOADING with MONOTONIC_USEC, WATCHDOG and STOPPING arrive in order."""
        with NotifyListener(abstract=abstract) as listener:
            notifier = Notifier(listener.environ, clock=FixedClock(123.456789))
            assert notifier.enabled
            sent = [
                notifier.ready(),
                notifier.status("3 fresh"),
                notifier.reloading(),
                notifier.ready(status="reloaded"),
                notifier.watchdog(),
                notifier.stopping(),
            ]
            messages = listener.wait_for_count(6)
            notifier.close()
        assert all(sent)
        assert [m.fields for m in messages] == [
            {"READY": "1"},
            {"STATUS": "3 fresh"},
            {"RELOADING": "1", "MONOTONIC_USEC": "123456789"},
            {"READY": "1", "STATUS": "reloaded"},
            {"WATCHDOG": "1"},
            {"STOPPING": "1"},
        ]
        assert {m.pid for m in messages} == {os.getpid()}
        assert notifier.errors == 0

    def test_monotonic_usec_is_clock_monotonic(self) -> None:
        """By default MONOTONIC_USEC is CLOCK_MONOTONIC in microseconds, as systemd reads it."""
        with NotifyListener() as listener, Notifier(listener.environ) as notifier:
            before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            notifier.reloading()
            after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            message = listener.wait_for(lambda m: "MONOTONIC_USEC" in m.fields)
        assert before <= int(message.fields["MONOTONIC_USEC"]) <= after + 1  # rounded

    def test_status_is_one_line(self) -> None:
        """A newline in the status text cannot smuggle in another assignment."""
        with NotifyListener() as listener, Notifier(listener.environ) as notifier:
            notifier.status("a\nSTOPPING=1")
            message = listener.wait_for(lambda m: "STATUS" in m.fields)
        assert message.fields == {"STATUS": "a STOPPING=1"}

    def test_socket_created_once(self) -> None:
        """Every message reuses one socket; close() releases it and later calls send nothing."""
        with NotifyListener() as listener:
            notifier = Notifier(listener.environ)
            notifier.watchdog()
            first = notifier._socket
            notifier.watchdog()
            assert notifier._socket is first is not None
            notifier.close()
            assert notifier._socket is None
            assert not notifier.enabled
            assert notifier.watchdog() is False
            listener.wait_for_count(2)
            time.sleep(0.05)
            assert len(listener.messages) == 2

    def test_concurrent_senders(self) -> None:
        """Pings from several threads all arrive: the lazily made socket is shared safely."""
        with NotifyListener() as listener, Notifier(listener.environ) as notifier:
            threads = [
                threading.Thread(target=lambda: [notifier.watchdog() for _ in range(25)])
                for _ in range(4)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert len(listener.wait_for_count(100)) == 100
        assert notifier.errors == 0

    def test_no_op_without_notify_socket(self) -> None:
        """Without NOTIFY_SOCKET nothing is sent, nothing fails, and no watchdog is asked."""
        notifier = Notifier({})
        assert not notifier.enabled
        assert not any(
            [notifier.ready(), notifier.status("x"), notifier.reloading(), notifier.watchdog()]
        )
        assert notifier.stopping() is False
        assert (notifier.errors, notifier.last_error) == (0, None)
        assert notifier.watchdog_interval() is None
        notifier.close()

    def test_send_errors_are_counted_not_raised(self, tmp_path: Path) -> None:
        """A socket nobody listens on makes sends return False and count, never raise."""
        notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
        assert notifier.enabled
        assert notifier.ready() is False
        assert notifier.watchdog() is False
        assert notifier.errors == 2
        assert notifier.last_error is not None
        assert "FileNotFoundError" in notifier.last_error
        notifier.close()

    def test_unusable_address_disables(self) -> None:
        """A relative NOTIFY_SOCKET is neither a path nor abstract: disabled, with a reason."""
        notifier = Notifier({"NOTIFY_SOCKET": "run/notify"})
        assert not notifier.enabled
        assert notifier.ready() is False
        assert notifier.last_error is not None

    @pytest.mark.parametrize(
        ("env", "expected"),
        [
            ({"WATCHDOG_USEC": "90000000"}, 45.0),
            ({"WATCHDOG_USEC": "90000000", "WATCHDOG_PID": str(os.getpid())}, 45.0),
            ({"WATCHDOG_USEC": "90000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
            ({"WATCHDOG_USEC": "0"}, None),
            ({"WATCHDOG_USEC": "soon"}, None),
            ({"WATCHDOG_PID": str(os.getpid())}, None),
            ({}, None),
        ],
    )
    def test_watchdog_interval(self, env: dict[str, str], expected: float | None) -> None:
        """Half of WATCHDOG_USEC in seconds, only for the process WATCHDOG_PID names."""
        assert Notifier(env).watchdog_interval() == expected


class TestStatusLine:
    def test_example(self) -> None:
        """Counts, the failing profile with its error code and the next refresh, in one line."""
        line = status_line(12, [("app-prod", "AccessDenied")], ("db-ro", 41 * 60))
        assert line == "12 fresh, 1 failing (app-prod: AccessDenied), next refresh db-ro in 41m"

    def test_all_fresh(self) -> None:
        """With nothing failing the failing part is left out."""
        assert status_line(3, [], ("a", 3725)) == "3 fresh, next refresh a in 1h02m"

    def test_failing_list_is_truncated(self) -> None:
        """Past two failures the rest are counted, not named."""
        failing = [("a", "X"), ("b", "Y"), ("c", "Z")]
        line = status_line(0, failing, None)
        assert line == "0 fresh, 3 failing (a: X, b: Y, +1 more), no refresh scheduled"

    def test_due_now(self) -> None:
        """A refresh that is due or overdue reads `now`, never a negative duration."""
        assert status_line(1, [], ("a", -5.0)).endswith("next refresh a now")

    def test_length_is_capped(self) -> None:
        """Very long profile names cannot make the line unreadable."""
        line = status_line(1, [("p" * 300, "X")], ("q" * 300, 60))
        assert len(line) == 200
        assert line.endswith("…")

    def test_reaches_systemd_intact(self) -> None:
        """The line survives the trip through the socket, UTF-8 included."""
        line = status_line(1, [("p" * 300, "X")], None)
        with NotifyListener() as listener, Notifier(listener.environ) as notifier:
            notifier.status(line)
            message = listener.wait_for(lambda m: "STATUS" in m.fields)
        assert message.fields["STATUS"] == line


class TestShouldPing:
    def test_bounds(self) -> None:
        """Ping while the heartbeat is younger than two wake-up intervals, not at or after."""
        assert should_ping(0.0, 30.0)
        assert should_ping(59.999, 30.0)
        assert not should_ping(60.0, 30.0)
        assert not should_ping(3600.0, 30.0)

    def test_nan_age_does_not_ping(self) -> None:
        """An unknown heartbeat age is not evidence of health."""
        assert not should_ping(float("nan"), 30.0)

    @pytest.mark.parametrize("interval", [0.0, -1.0, float("nan")])
    def test_interval_must_be_positive(self, interval: float) -> None:
        """A zero, negative or NaN wake-up interval is a programming error."""
        with pytest.raises(ValueError, match="wakeup_interval"):
            should_ping(1.0, interval)


class TestNotifyListener:
    def test_wait_for_times_out_with_what_arrived(self) -> None:
        """A missing message fails fast and lists the messages that did arrive."""
        with NotifyListener() as listener, Notifier(listener.environ) as notifier:
            notifier.status("only this")
            listener.wait_for_count(1)
            with pytest.raises(AssertionError, match="only this"):
                listener.wait_for(lambda m: "READY" in m.fields, timeout=0.1, patient=False)
