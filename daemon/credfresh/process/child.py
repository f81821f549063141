"""Run a configured command (an alert sink, an `on_refresh` hook): in its own process group,
so a timeout kills whatever it started too, with a bounded stderr tail kept for the log."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from typing import IO, Final

STDERR_TAIL_BYTES: Final = 400


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How one run ended: `status` is the exit status, -N for signal N, None for a timeout
    (killed) or a command that could not start (`error` says why)."""

    status: int | None
    stderr_tail: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 0

    def describe(self, timeout: float) -> str:
        """`exit status 1`, `killed by SIGSEGV`, `timed out after 30 s; killed`."""
        if self.error is not None:
            return self.error
        if self.status is None:
            return f"timed out after {timeout:g} s; killed"
        if self.status < 0:
            return f"killed by {signal.Signals(-self.status).name}"
        return f"exit status {self.status}"


def without_aws(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment minus every AWS_* variable: a command never inherits credentials."""
    return {k: v for k, v in environ.items() if not k.upper().startswith("AWS_")}


class Child:
    """One command, run any number of times (one at a time), abortable from another thread."""

    def __init__(self, argv: Sequence[str], *, timeout: float, environ: Mapping[str, str]) -> None:
        if not argv:
            raise ValueError("command: expected a non-empty argv list")
        self.argv = list(argv)
        self.timeout = timeout
        self._env = dict(environ)
        self._lock = threading.Lock()
        self._running: subprocess.Popen[bytes] | None = None
        self._aborted = False

    def run(
        self, stdin: bytes | None = None, extra_env: Mapping[str, str] | None = None
    ) -> Outcome:
        """Run once; `stdin` None closes it. Never raises for the command's own failure."""
        env = {**self._env, **(extra_env or {})}
        with tempfile.TemporaryFile() as stderr:
            try:
                process = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    env=env,
                    start_new_session=True,
                )
            except OSError as exc:
                reason = exc.strerror or type(exc).__name__
                return Outcome(None, error=f"could not run {self.argv[0]}: {reason}")
            with self._lock:
                self._running = process
                aborted = self._aborted
            if aborted:
                kill_group(process)
            try:
                process.communicate(stdin, timeout=self.timeout)
            except subprocess.TimeoutExpired:
                kill_group(process)
                process.wait()
                return Outcome(None, tail(stderr))
            finally:
                with self._lock:
                    self._running = None
            return Outcome(process.returncode, tail(stderr) if process.returncode else "")

    def abort(self) -> None:
        """Kill the running command, and any started after this (the owner is closing)."""
        with self._lock:
            self._aborted = True
            process = self._running
        if process is not None:
            kill_group(process)


def kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def tail(stream: IO[bytes]) -> str:
    """The end of what the command wrote to stderr (bounded: a chatty command costs nothing)."""
    size = stream.seek(0, os.SEEK_END)
    if not size:
        return ""
    stream.seek(max(0, size - STDERR_TAIL_BYTES))
    return stream.read().decode("utf-8", "replace")


def one_line(text: str) -> str:
    return " ".join(text.split())


def last_line(text: str) -> str:
    """The last non-empty line: what a failing command said last is usually why."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""
