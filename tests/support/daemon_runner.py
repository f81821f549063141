"""Run `credfresh run` as a real process and read its JSON log lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support.waiting import patience


class DaemonProcess:
    """A `credfresh run` subprocess whose stdout (JSON logs) goes to a file the test reads."""

    def __init__(
        self,
        config_path: Path,
        env: dict[str, str],
        log_path: Path,
        *,
        extra_args: tuple[str, ...] = (),
        preexec: Callable[[], object] | None = None,
        argv_prefix: tuple[str, ...] = (),
    ) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                *argv_prefix,
                sys.executable,
                "-m",
                "credfresh",
                "run",
                "-c",
                str(config_path),
                "--log-format",
                "json",
                *extra_args,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=preexec,  # noqa: PLW1509 - tests drop privileges this way
        )

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("event") == event]

    def wait_for(
        self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float, what: str = ""
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + patience(timeout)
        while time.monotonic() < deadline:
            events = self.events()
            if predicate(events):
                return events
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(
            f"timed out waiting for {what or 'a log event'}; exit={self.proc.poll()}; "
            f"last events: {[e.get('event') for e in self.events()[-15:]]}"
        )

    def wait_event(self, event: str, timeout: float = 10.0, count: int = 1) -> list[dict[str, Any]]:
        self.wait_for(
            lambda evs: sum(e.get("event") == event for e in evs) >= count, timeout, event
        )
        return self.named(event)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def env_with(base: dict[str, str], **extra: str) -> dict[str, str]:
    env = dict(base)
    env.update(extra)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("PATH", os.environ.get("PATH", ""))
    return env
