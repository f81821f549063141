"""Third-party loggers stay at WARNING unless --log-level debug, and their lines say whose."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import boto3
import pytest

from conftest import Project
from credfresh.observe.logs import REDACTED, Logging, Redactor, third_party_level
from support.daemon_runner import DaemonProcess, env_with

FOUND = "Found credentials in shared credentials file"


def _lines(level: str, emit: Any) -> list[dict[str, Any]]:
    stream = io.StringIO()
    logs = Logging(stream, fmt="json", level=level)
    logs.install()
    try:
        emit(logs)
    finally:
        logs.uninstall()
    return [json.loads(line) for line in stream.getvalue().splitlines()]


class TestLevels:
    @pytest.mark.parametrize(
        ("level", "floor", "expected"),
        [
            (logging.INFO, logging.DEBUG, logging.WARNING),
            (logging.INFO, logging.INFO, logging.WARNING),
            (logging.WARNING, logging.DEBUG, logging.WARNING),
            (logging.ERROR, logging.DEBUG, logging.ERROR),
            (logging.DEBUG, logging.DEBUG, logging.DEBUG),
            (logging.DEBUG, logging.INFO, logging.INFO),
        ],
    )
    def test_third_party_level(self, level: int, floor: int, expected: int) -> None:
        """WARNING and above unless debug; at debug each library's floor (botocore: INFO)."""
        assert third_party_level(level, floor) == expected

    def test_library_info_is_dropped_and_warnings_name_their_logger(self) -> None:
        """At info: ours pass, a library's INFO does not, its WARNING carries its name."""

        def emit(logs: Logging) -> None:
            logs.get().info("refreshed", profile="p")
            logging.getLogger("botocore.credentials").info(FOUND + ": ~/.aws/credentials")
            logging.getLogger("apscheduler.scheduler").info("Added job")
            logging.getLogger("somelib").info("chatter")
            logging.getLogger("urllib3.connectionpool").warning(
                "Connection pool is full, discarding connection: %s", "127.0.0.1"
            )
            logging.getLogger("somelib").warning("trouble")

        lines = _lines("info", emit)
        assert [(line["logger"], line["event"]) for line in lines] == [
            ("credfresh", "refreshed"),
            (
                "urllib3.connectionpool",
                "Connection pool is full, discarding connection: 127.0.0.1",
            ),
            ("somelib", "trouble"),
        ]
        assert all(line["level"] == "warning" for line in lines[1:])

    def test_a_librarys_line_is_redacted_once_like_ours(self) -> None:
        """A secret credfresh knows, in a library's message, its arguments or its traceback,
        never reaches the stream; credfresh's own lines are redacted once, in their chain."""
        secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEYab"
        token = "IQoJb3JpZ2luX2VjEXAMPLETOKEN" + "x" * 40

        def emit(logs: Logging) -> None:
            logs.redactor.add(secret, token)
            logging.getLogger("urllib3.connectionpool").warning("sent %s", secret)
            try:
                raise ValueError(f"token {token}")
            except ValueError:
                logging.getLogger("somelib").exception("failed")
            logs.get().warning("refresh_failed", error=f"with {secret}")

        calls: list[str] = []
        text = Redactor.text

        def counted(self: Redactor, value: str) -> str:
            calls.append(value)
            return text(self, value)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(Redactor, "text", counted)
            lines = _lines("info", emit)
        assert [line["event"] for line in lines] == [f"sent {REDACTED}", "failed", "refresh_failed"]
        dumped = json.dumps(lines)
        assert secret not in dumped
        assert token not in dumped
        assert "ValueError" in lines[1]["exception"]
        assert lines[2]["error"] == f"with {REDACTED}"
        assert sum(value == f"with {secret}" for value in calls) == 1
        assert f"with {REDACTED}" not in calls, "redacted a second time"

    def test_debug_lets_libraries_in_but_never_botocore_debug(self) -> None:
        """At debug a library's INFO shows; botocore's DEBUG (signed headers) still does not."""

        def emit(logs: Logging) -> None:
            logging.getLogger("botocore.credentials").info(FOUND)
            logging.getLogger("botocore.endpoint").debug("signed headers would be here")
            logging.getLogger("somelib").debug("detail")

        lines = _lines("debug", emit)
        assert [(line["logger"], line["event"]) for line in lines] == [
            ("botocore.credentials", FOUND),
            ("somelib", "detail"),
        ]

    def test_uninstall_restores_levels(self) -> None:
        """Levels set for a run are put back: tests and embedders keep their own."""
        before = {n: logging.getLogger(n).level for n in ("", "credfresh", "botocore")}
        _lines("info", lambda logs: None)
        assert {n: logging.getLogger(n).level for n in before} == before


class TestRealBotocore:
    def test_found_credentials_only_at_debug(self, project: Project) -> None:
        """botocore reading the source profile logs its INFO line only at --log-level debug."""

        def emit(logs: Logging) -> None:
            assert boto3.Session(profile_name="base").get_credentials() is not None

        assert not [line for line in _lines("info", emit) if FOUND in line["event"]]
        found = [line for line in _lines("debug", emit) if FOUND in line["event"]]
        assert found
        assert found[0]["logger"] == "botocore.credentials"


def test_daemon_log_has_no_botocore_info(project: Project, tmp_path: Path) -> None:
    """`credfresh run` against the dev STS: the source profile is read, no botocore INFO line."""
    project.profile("p")
    project.write_config()
    with DaemonProcess(project.config_path, env_with(project.env), tmp_path / "d.log") as proc:
        proc.wait_event("ready", 30)
        events = proc.events()
    assert any(e.get("event") == "refreshed" and e.get("profile") == "p" for e in events), [
        e.get("event") for e in events
    ]
    assert not [e for e in events if FOUND in str(e.get("event"))]
    assert {e.get("logger") for e in events} <= {"credfresh"} | {
        e.get("logger") for e in events if e.get("level") in ("warning", "error", "critical")
    }
