"""`on_refresh` hooks: tell a program that read its credentials once that new ones landed.

Fed through `Parts.after_write` (after the rename and directory fsync, after the env files),
on the writer thread, which must never wait for a hook: each hook has its own worker thread
(`hook_worker.py`; the wiring loads it with the first hook a config has) that runs it off
the refresh path, one run at a time. Profiles that land while it runs are gathered into its
next run, so a slow hook costs one extra run, never a queue.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from credfresh.alerts.manager import AlertManager
    from credfresh.config.model import Config, HookSpec
    from credfresh.context import Clock
    from credfresh.credentials import Credentials
    from credfresh.observe.logs import Logger, Redactor
    from credfresh.observe.metrics import Metrics


@dataclasses.dataclass(frozen=True)
class Run:
    """What one landed write asks of one hook: the profiles it carried that share it."""

    spec: HookSpec
    profiles: tuple[str, ...]


def hook_name(config: Config, spec: HookSpec) -> str:
    """A hook's alert subject: every profile of the config that shares it (pure)."""
    return ",".join(sorted(n for n, p in config.profiles.items() if p.on_refresh == spec))


def runs_for(config: Config, updates: Mapping[str, object]) -> list[Run]:
    """One run per distinct hook among the written profiles (pure)."""
    groups: dict[HookSpec, list[str]] = {}
    for name in sorted(updates):
        profile = config.profiles.get(name)
        if profile is not None and profile.on_refresh is not None:
            groups.setdefault(profile.on_refresh, []).append(name)
    return [Run(spec, tuple(names)) for spec, names in groups.items()]


@dataclasses.dataclass(frozen=True)
class HookDeps:
    """What every hook worker reports to and runs with, built once by the wiring."""

    environ: Mapping[str, str]
    euid: int | None
    log: Logger
    redactor: Redactor
    clock: Clock
    alerts: AlertManager | None = None
    metrics: Metrics | None = None


class Worker(Protocol):
    """One hook's runner (`hook_worker.HookWorker`)."""

    def submit(self, config: Config, profiles: tuple[str, ...]) -> None: ...

    def retire(self) -> None: ...

    def stop(self) -> None: ...

    def join(self, timeout: float) -> None: ...


class Hooks:
    """The `after_write` output that starts hooks; one worker per distinct hook, made by
    `start`."""

    def __init__(self, deps: HookDeps, start: Callable[[HookSpec, HookDeps], Worker]) -> None:
        self._deps = deps
        self._start = start
        self._lock = threading.Lock()
        self._workers: dict[HookSpec, Worker] = {}
        self._closed = False

    def written(self, config: Config, updates: Mapping[str, Credentials]) -> None:
        runs = runs_for(config, updates)
        with self._lock:
            if self._closed:
                return
            for run in runs:
                worker = self._workers.get(run.spec)
                if worker is None:
                    worker = self._workers[run.spec] = self._start(run.spec, self._deps)
                worker.submit(config, run.profiles)
            configured = {p.on_refresh for p in config.profiles.values() if p.on_refresh}
            for spec in [spec for spec in self._workers if spec not in configured]:
                self._workers.pop(spec).retire()  # a reload dropped or changed it

    def close(self, timeout: float = 2.0) -> None:
        """Kill hooks still running and drop pending runs: the daemon is stopping."""
        with self._lock:
            self._closed = True
            workers = list(self._workers.values())
        for worker in workers:
            worker.stop()
        for worker in workers:
            worker.join(timeout)
