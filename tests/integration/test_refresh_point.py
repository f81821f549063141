"""The refresh point end to end: 12 h credentials from the development STS, status, validate."""

from __future__ import annotations

import io
import json
import re
from datetime import timedelta
from pathlib import Path

from conftest import Project
from credfresh.cli import main
from credfresh.credentials import parse_time
from support.daemon_runner import DaemonProcess, env_with

TWELVE_HOURS = 43200
WINDOW = timedelta(minutes=65)


def run(project: Project, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(
        [*args, "-c", str(project.config_path)], stdout=out, stderr=err, environ=project.env
    )
    return code, out.getvalue(), err.getvalue()


def table_cells(text: str) -> list[list[str]]:
    return [re.split(r"\s{2,}", line) for line in text.splitlines()]


def status_row(project: Project) -> dict[str, object]:
    code, out, err = run(project, "status", "--json")
    assert code == 0, err
    (row,) = json.loads(out)["profiles"]
    assert isinstance(row, dict)
    return row


class TestTwelveHourCredentials:
    def test_refresh_at_is_65_minutes_before_expiry(self, project: Project, tmp_path: Path) -> None:
        """12 h credentials from STS: status and the daemon both put the refresh 65m before expiry.

        status reports the due time; the daemon schedules it up to 10% of the window earlier.
        """
        project.profile("long", duration_seconds=TWELVE_HOURS)
        project.write_config()
        code, _, err = run(project, "once")
        assert code == 0, err
        row = status_row(project)
        expires = parse_time(str(row["expires_at"]))
        refresh_at = parse_time(str(row["refresh_at"]))
        assert abs(expires - refresh_at - WINDOW) <= timedelta(seconds=1)
        assert int(str(row["remaining_seconds"])) > TWELVE_HOURS - 120
        code, table, _ = run(project, "status")
        header, line = table_cells(table)
        assert header[4] == "REFRESH"
        assert line[4].startswith("10h5")

        calls = project.sts.proxy.calls
        with DaemonProcess(
            project.config_path,
            env_with(project.env, CREDFRESH_WAKEUP_INTERVAL="30"),
            tmp_path / "daemon.log",
        ) as proc:
            proc.wait_event("ready", 30)
            assert proc.stop() == 0
        assert project.sts.proxy.calls == calls, "fresh 12 h credentials cost no STS call"
        scheduled = parse_time(str(status_row(project)["next_attempt"]))
        jitter = timedelta(seconds=0.1 * WINDOW.total_seconds() + 1)
        assert refresh_at - jitter <= scheduled <= refresh_at + timedelta(seconds=1)

    def test_missing_profile_has_no_refresh_at(self, project: Project) -> None:
        """A profile with nothing on disk reports refresh_at null and REFRESH `-`."""
        project.profile("none", duration_seconds=TWELVE_HOURS)
        project.write_config()
        code, out, _ = run(project, "status", "--json")
        assert code == 1
        (row,) = json.loads(out)["profiles"]
        assert row["state"] == "missing"
        assert row["refresh_at"] is None
        _, table, _ = run(project, "status")
        assert table_cells(table)[1][4] == "-"


class TestValidateWarnings:
    def test_warns_and_still_succeeds(self, project: Project) -> None:
        """validate exits 0 and names the SDK and the setting for points inside a window."""
        project.profile("tight", duration_seconds=TWELVE_HOURS, refresh_before="10m")
        project.profile("band", duration_seconds=5400)
        project.profile("fine", duration_seconds=TWELVE_HOURS)
        project.write_config()
        code, _, err = run(project, "validate")
        assert code == 0
        warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
        assert len(warnings) == 2, err
        tight = next(w for w in warnings if "profiles.tight.refresh_before" in w)
        assert "botocore's new refresh path (60m)" in tight
        assert "set refresh_before to at least 65m" in tight
        band = next(w for w in warnings if "profiles.band.duration_seconds" in w)
        assert "set duration_seconds to at least 7200" in band
