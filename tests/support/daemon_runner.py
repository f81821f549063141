"""Run `credfresh run` as a real process and read its JSON log lines (tests and benchmarks)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Self

from support import coverage_environ
from support.waiting import patience, poll_until

CLK_TCK = os.sysconf("SC_CLK_TCK")


class DaemonProcess:
    """A `credfresh run` subprocess whose stdout (JSON logs) goes to a file read as it grows.

    `launcher` replaces `python -m credfresh` (a console script, a wrapper); `argv_prefix`
    goes before it (setpriv, a tracer). `command` replaces the whole argv (`podman run`, with
    the image's own entry point and config path). `own_group` makes the daemon a process
    group's leader, so that one signal reaches the children it forks as well.
    """

    def __init__(
        self,
        config_path: Path,
        env: dict[str, str],
        log_path: Path,
        *,
        extra_args: tuple[str, ...] = (),
        preexec: Callable[[], object] | None = None,
        argv_prefix: Sequence[str] = (),
        launcher: Sequence[str] | None = None,
        command: Sequence[str] | None = None,
        own_group: bool = False,
    ) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self._offset = 0
        self._partial = b""
        self._events: list[dict[str, Any]] = []
        start = list(launcher) if launcher else [sys.executable, "-m", "credfresh"]
        self.started_at = time.time()
        self.started_mono = time.perf_counter()
        argv = [
            *argv_prefix,
            *start,
            "run",
            "-c",
            str(config_path),
            "--log-format",
            "json",
            *extra_args,
        ]
        self.proc = subprocess.Popen(
            list(command) if command is not None else argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=preexec,  # noqa: PLW1509 - tests drop privileges this way
            process_group=0 if own_group else None,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def events(self) -> list[dict[str, Any]]:
        """Every JSON log line so far; reads only what was appended since the last call."""
        with self.log_path.open("rb") as stream:
            stream.seek(self._offset)
            data = stream.read()
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if line.startswith(b"{"):
                try:
                    self._events.append(json.loads(line))
                except ValueError:
                    continue
        return list(self._events)

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("event") == event]

    def wait_for(
        self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float, what: str = ""
    ) -> list[dict[str, Any]]:
        """The log once `predicate` holds for it; gives up early when the daemon exits."""
        poll_until(
            lambda: predicate(self.events()) or self.proc.poll() is not None, patience(timeout)
        )
        events = self.events()
        if predicate(events):
            return events
        raise AssertionError(
            f"timed out waiting for {what or 'a log event'}; exit={self.proc.poll()}; "
            f"last events: {[e.get('event') for e in events[-15:]]}; log {self.log_path}"
        )

    def wait_event(self, event: str, timeout: float = 10.0, count: int = 1) -> list[dict[str, Any]]:
        self.wait_for(
            lambda evs: sum(e.get("event") == event for e in evs) >= count, timeout, event
        )
        return self.named(event)

    def on_disk(self, names: Iterable[str], timeout: float) -> float:
        """Wait until every name was in a `file_written` event; the epoch time of the last."""
        missing = set(names)
        seen = 0
        last = 0.0

        def done(events: list[dict[str, Any]]) -> bool:
            nonlocal seen, last
            for item in events[seen:]:
                if item.get("event") == "file_written":
                    before = len(missing)
                    missing.difference_update(item.get("profiles") or ())
                    if len(missing) < before:
                        last = parse_stamp(item["timestamp"])
            seen = len(events)
            return not missing

        self.wait_for(done, timeout, f"{len(missing)} profiles on disk")
        return last

    def memory_kb(self) -> dict[str, int]:
        """VmRSS and VmHWM (peak RSS) from /proc, in kB."""
        found: dict[str, int] = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0])
        return found

    def cpu_seconds(self) -> float:
        """utime + stime of the process (all threads) and of the children it reaped (each
        credentials-file write and config validation runs in one), in seconds."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLK_TCK

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM (SIGKILL after `timeout` s), reaped; the exit code."""
        terminate(self.proc, timeout)
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def terminate(proc: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds; reaped either way."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def parse_stamp(text: str) -> float:
    """Epoch seconds of a log line's ISO 8601 UTC `timestamp`."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def env_with(base: dict[str, str], **extra: str) -> dict[str, str]:
    env = dict(base)
    env.update(extra)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("PATH", os.environ.get("PATH", ""))
    for key, value in coverage_environ().items():
        env.setdefault(key, value)
    return env
