"""One `on_refresh` hook's worker: its command and its signal, one run at a time, and what
a failed run reports (`hooks.Hooks` starts one per distinct hook)."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from credfresh import trust
from credfresh.outputs.hooks import hook_name
from credfresh.process.child import Child, Outcome, last_line, without_aws

if TYPE_CHECKING:
    from pathlib import Path

    from credfresh.config.model import Config, HookSpec
    from credfresh.observe.metrics import HookResult
    from credfresh.outputs.hooks import HookDeps

PID_FILE_MAX_BYTES: Final = 64


def hook_environ(
    environ: Mapping[str, str], profiles: tuple[str, ...], credentials_file: Path
) -> dict[str, str]:
    """The command's environment: the daemon's without AWS_*, plus what it needs to know."""
    return {
        **without_aws(environ),
        "CREDFRESH_PROFILES": ",".join(profiles),
        "CREDFRESH_CREDENTIALS_FILE": str(credentials_file),
    }


def parse_pid(text: str) -> int | None:
    """The pid a pid file names, or None: 0, 1 and negatives would signal init or groups."""
    first = text.strip().split("\n", 1)[0].strip()
    if not first.isdigit():
        return None
    pid = int(first)
    return pid if pid > 1 else None


@dataclasses.dataclass(frozen=True)
class Failure:
    """Why a run failed, as logged: `reason` in words, the exit status if there was one."""

    reason: str
    result: HookResult = "failure"
    exit_status: int | None = None
    stderr: str = ""


def outcome_failure(outcome: Outcome, timeout: float) -> Failure | None:
    """A command's outcome as a failure, or None for exit status 0 (pure)."""
    if outcome.ok:
        return None
    timed_out = outcome.status is None and outcome.error is None
    return Failure(
        reason=outcome.describe(timeout),
        result="timeout" if timed_out else "failure",
        exit_status=outcome.status if outcome.status is not None and outcome.status > 0 else None,
        stderr=last_line(outcome.stderr_tail),
    )


def read_pid_file(pid_file: Path, euid: int | None) -> int | Failure:
    """The pid a trusted pid file names: one others may write is not obeyed."""
    problems = trust.path_problems(pid_file, euid) if euid is not None else []
    if problems:
        return Failure(f"pid file not trusted: {problems[0]}")
    try:
        with open(pid_file, "rb") as handle:
            data = handle.read(PID_FILE_MAX_BYTES)
    except FileNotFoundError:
        return Failure(f"pid file missing: {pid_file}")
    except OSError as exc:
        return Failure(f"pid file unreadable: {exc.strerror or type(exc).__name__}")
    pid = parse_pid(data.decode("ascii", "replace"))
    return Failure(f"pid file holds no process id: {pid_file}") if pid is None else pid


def send_signal(pid_file: Path, name: str, euid: int | None) -> Failure | None:
    """Signal the process a pid file names; None when it was sent."""
    pid = read_pid_file(pid_file, euid)
    if isinstance(pid, Failure):
        return pid
    try:
        os.kill(pid, signal.Signals[name])
    except ProcessLookupError:
        return Failure(f"no process {pid} (from {pid_file})")
    except PermissionError:
        return Failure(f"not allowed to signal process {pid} (from {pid_file})")
    return None


class HookWorker:
    """Runs one hook, never two at once; profiles landing meanwhile join the next run."""

    def __init__(self, spec: HookSpec, deps: HookDeps) -> None:
        self.spec = spec
        self._deps = deps
        self._child = (
            Child(spec.command, timeout=spec.timeout, environ=without_aws(deps.environ))
            if spec.command
            else None
        )
        self._cond = threading.Condition()
        self._pending: set[str] = set()
        self._config: Config | None = None
        self._stopped = False
        self._retired = False
        self._failures = 0
        self._thread = threading.Thread(target=self._loop, name="credfresh-hook", daemon=True)
        self._thread.start()

    def submit(self, config: Config, profiles: tuple[str, ...]) -> None:
        with self._cond:
            self._pending.update(profiles)
            self._config = config
            self._cond.notify()

    def retire(self) -> None:
        """End the thread once what is pending has run (the hook left the config)."""
        with self._cond:
            self._retired = True
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._child is not None:
            self._child.abort()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopped and not self._retired:
                    self._cond.wait()
                if self._stopped or not self._pending:
                    return
                profiles = tuple(sorted(self._pending))
                self._pending.clear()
                config = self._config
            if config is not None:
                self._run(config, profiles)

    def _run(self, config: Config, profiles: tuple[str, ...]) -> None:
        deps = self._deps
        started = deps.clock.monotonic()
        failure = None
        if self._child is not None:
            extra = hook_environ({}, profiles, config.credentials_file)
            failure = outcome_failure(self._child.run(None, extra), self.spec.timeout)
        if failure is None and self.spec.pid_file is not None:
            failure = send_signal(self.spec.pid_file, self.spec.signal, deps.euid)
        took_ms = round((deps.clock.monotonic() - started) * 1000, 1)
        with self._cond:
            if self._stopped:
                return  # killed by the shutdown: not the hook's failure
        name = hook_name(config, self.spec)
        if failure is None:
            self._succeeded(name, profiles, took_ms)
        else:
            self._failed(name, profiles, failure, took_ms)

    def _succeeded(self, name: str, profiles: tuple[str, ...], took_ms: float) -> None:
        deps = self._deps
        self._failures = 0
        deps.log.info("hook_ran", hook=self.spec.label(), profiles=list(profiles), took_ms=took_ms)
        if deps.metrics is not None:
            deps.metrics.hook_ran("success")
        if deps.alerts is not None:
            deps.alerts.hook_succeeded(name, deps.clock.now())

    def _failed(
        self, name: str, profiles: tuple[str, ...], failure: Failure, took_ms: float
    ) -> None:
        deps = self._deps
        self._failures += 1
        stderr = deps.redactor.text(failure.stderr) if failure.stderr else None
        deps.log.warning(
            "hook_failed",
            hook=self.spec.label(),
            profiles=list(profiles),
            reason=failure.reason,
            exit_status=failure.exit_status,
            stderr=stderr,
            failures=self._failures,
            took_ms=took_ms,
        )
        if deps.metrics is not None:
            deps.metrics.hook_ran(failure.result)
        if deps.alerts is not None:
            said = f"{failure.reason}: {stderr}" if stderr else failure.reason
            deps.alerts.hook_failed(
                name,
                self._failures,
                f"{self.spec.label()}: {said}",
                failure.result,
                deps.clock.now(),
            )
