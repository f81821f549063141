"""`credfresh run`: the process life (lock, signals, loop, reload, shutdown) of the parts
`process.wiring` built. Signals only set flags for the main thread; a second SIGINT exits
at once (every write is atomic)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import importlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Final

from credfresh import __version__, trust
from credfresh.config.model import Config
from credfresh.context import Context
from credfresh.errors import (
    EXIT_CONFIG,
    EXIT_LOCKED,
    EXIT_OK,
    AlreadyRunning,
    ConfigError,
    CredfileError,
    CredfreshError,
)
from credfresh.process.allocator import tune_malloc
from credfresh.process.heap import FrozenHeap

if TYPE_CHECKING:
    from credfresh.config.isolated import Pending
    from credfresh.observe.logs import BoundLogger, Logging
    from credfresh.process.watch import ConfigWatcher
    from credfresh.process.wiring import Wired

STOP_GRACE: Final = 5.0
TICK: Final = 0.5
STATUS_EVERY: Final = 10.0
#: The state file and metrics textfile are rewritten at most this often while profiles
#: change: at 1,000 profiles each rewrite renders them all (benchmarks/PROFILE.md, "Footprint").
SAVE_EVERY: Final = 2.0


class InstanceLock:
    """One daemon per credentials file: an flock on `<file>.credfresh.pid` held for life."""

    def __init__(self, credentials_file: Path, euid: int | None = None) -> None:
        self.path = credentials_file.with_name(credentials_file.name + ".credfresh.pid")
        self.euid = euid
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock; CredfileError `unsafe_path` when the pid file's tree is not safe
        (checked by `open_lock_file` before anything is truncated)."""
        from credfresh.credfile.handles import open_lock_file

        fd = open_lock_file(self.path, create_dirs=True, euid=self.euid)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise AlreadyRunning(
                    f"another credfresh (pid {holder}) is running for this credentials file "
                    f"(lock {self.path})"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None


@contextlib.contextmanager
def signal_handlers(handlers: Mapping[signal.Signals, Any]) -> Iterator[None]:
    """Install handlers for the block and restore the previous ones afterwards."""
    previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def check_config_permissions(config: Config, euid: int, environ: Mapping[str, str]) -> list[str]:
    """Whoever can edit or swap a file the config steers root with decides what root does.

    The config, policy and token files and the alert command, and every directory above
    them, must be root's (or `euid`'s) and writable by no one else (`credfresh.trust`); the
    endpoint's token file also unreadable by others and no symlink out of its directory.
    Root refuses such a config (exit 2, or `config_unsafe` on reload); others get warnings.
    """
    problems = trust.path_problems(config.path, euid)

    def add(found: list[str]) -> None:
        problems.extend(p for p in found if p not in problems)

    for path in config.policy_files:
        add(trust.path_problems(path, euid))
    for profile in config.profiles.values():
        if profile.web_identity_token_file is not None:
            add(trust.path_problems(profile.web_identity_token_file, euid))
    token_file = config.container_credentials.token_file
    if token_file is not None:
        add(trust.token_file_problems(token_file, euid))
    search_path = environ.get("PATH", os.defpath)
    if config.alerts.command:
        add(trust.command_problems(config.alerts.command[0], search_path, euid))
    for hook in {p.on_refresh for p in config.profiles.values() if p.on_refresh is not None}:
        if hook.command:
            add(trust.command_problems(hook.command[0], search_path, euid))
        if hook.pid_file is not None:
            add(trust.path_problems(hook.pid_file, euid))
    return problems


class Daemon:
    """Owns the process: signals, the main loop, notifications, reloads and shutdown.

    The config in force is the engine's alone; a reload hands it the new one (`apply`).
    """

    def __init__(self, *, ctx: Context, log: BoundLogger, parts: Wired) -> None:
        self.ctx = ctx
        self.log = log
        self.engine = parts.engine
        self.alerts = parts.alerts
        self.metrics = parts.metrics
        self.hooks = parts.hooks
        self.notifier = parts.notifier
        self.probes = parts.probes
        self._parts = parts
        self.wake = threading.Event()
        self.stopping = False
        self.reload_event = threading.Event()
        self._interrupts = 0
        self._servers: list[Any] = []
        self._watcher: ConfigWatcher | None = None
        self._ready = False
        self._flushed = False
        self._reload_reason = "SIGHUP"
        self._reload_lock = threading.Lock()
        self._rejected: str | None = None

    @property
    def config(self) -> Config:
        return self.engine.config

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT:
            self._interrupts += 1
            if self._interrupts > 1:
                os._exit(130)
        self.stopping = True
        self.wake.set()

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self.reload_event.set()
        self.wake.set()

    def run(self) -> int:
        from credfresh.engine import state as state_file

        saved, saved_alerts = state_file.load(self.config.state_file, euid=self.ctx.euid)
        self.alerts.load(saved_alerts)
        handlers = {
            signal.SIGTERM: self._on_stop,
            signal.SIGINT: self._on_stop,
            signal.SIGHUP: self._on_hup,
        }
        with signal_handlers(handlers):
            self.log.info(
                "started",
                version=__version__,
                pid=os.getpid(),
                config=str(self.config.path),
                credentials_file=str(self.config.credentials_file),
                profiles=len(self.config.profiles),
            )
            self.engine.start(saved, on_first_pass=self.wake.set)
            self._servers = self._parts.servers()
            if (control := self._parts.control()) is not None:
                self._servers.append(control)
            self._watcher = self._parts.watcher(self._watch_fired)
            self._watcher.start()
            try:
                self._loop()
            finally:
                idle = self._shutdown()
        if not idle:
            self._flush_streams()
            os._exit(EXIT_OK)
        return EXIT_OK

    def _loop(self) -> None:
        last_status = 0.0
        last_ping = 0.0
        last_save = -SAVE_EVERY
        ping_every = self.notifier.watchdog_interval()
        while True:
            self.wake.wait(TICK)
            self.wake.clear()
            if self.stopping:
                return
            if self.reload_event.is_set():
                self.reload_event.clear()
                self.reload(self._reload_reason)
                self._reload_reason = "SIGHUP"
            if not self._ready and self._first_pass_on_disk():
                self._ready = True
                self.log.info("ready", profiles=len(self.config.profiles))
                self.notifier.ready()
                self._parts.heap.settled(collect=True)
                last_status = 0.0
            now = self.ctx.clock.monotonic()
            if self._ready and now - last_save >= SAVE_EVERY and self.engine.take_dirty():
                self._save_state()
                self._write_textfile()
                last_save = now
            if ping_every and now - last_ping >= ping_every and self.probes.healthy():
                self.notifier.watchdog()
                last_ping = now
            if now - last_status >= STATUS_EVERY:
                self.notifier.status(self.probes.status_line())
                last_status = now

    def _first_pass_on_disk(self) -> bool:
        """READY=1 must not run ahead of the file: after one hurried flush, ready once every
        profile with valid credentials in memory has valid ones on disk. Not "nothing pending":
        short lifetimes keep joining the batch, and a failing disk keeps its own backoff.
        """
        if not self.engine.first_pass_done():
            return False
        if not self._flushed:
            self._flushed = True
            self.engine.flush(timeout=5.0)
        return self.engine.all_on_disk(self.ctx.clock.now())

    def _shutdown(self) -> bool:
        self.log.info("stopping")
        self.notifier.stopping()
        if self._watcher is not None:
            self._watcher.stop()
        idle = self.engine.stop(grace=STOP_GRACE)
        self.hooks.close(timeout=2.0)
        for server in self._servers:
            server.stop()
        self.alerts.close(timeout=2.0)
        self._save_state()
        self._write_textfile()
        self.log.info("stopped", clean=idle)
        return idle

    def _save_state(self) -> None:
        from credfresh.engine import state as state_file

        self.engine.take_dirty()
        profiles = self.engine.snapshot().states
        try:
            state_file.save(
                self.config.state_file, profiles, self.alerts.to_dict(), euid=self.ctx.euid
            )
        except CredfreshError as exc:
            self.log.error("state_write_failed", error_code=exc.code, message=str(exc))

    def _write_textfile(self) -> None:
        path = self.config.metrics.textfile
        if path is None:
            return
        try:
            self.metrics.write_textfile(path, euid=self.ctx.euid)
        except CredfreshError as exc:
            self.log.error("textfile_write_failed", error_code=exc.code, message=str(exc))

    def _flush_streams(self) -> None:
        for stream in (self.ctx.out, self.ctx.err, sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()

    def _watch_fired(self, reason: str) -> None:
        if reason == "poll":
            self.reload(reason)
            return
        self._reload_reason = reason
        self.reload_event.set()
        self.wake.set()

    def reload(self, reason: str) -> None:
        """Read, compare the hash, validate, and only then apply; keep the last good config.
        SIGHUP is always bracketed by RELOADING=1 and READY=1, a watched change only if applied.
        """
        explicit = reason == "SIGHUP"
        with self._reload_lock:
            if explicit:
                self.notifier.reloading()
            try:
                self._reload(reason)
            finally:
                if explicit:
                    self.notifier.ready()

    def _reload(self, reason: str) -> None:
        from credfresh.config.isolated import load_isolated, unchanged_on_disk

        euid = self.ctx.euid
        unsafe = trust.path_problems(self.config.path, euid)
        if unsafe and euid == 0:
            self._reject(reason, "config_unsafe", unsafe)
            return
        try:
            # The poll's usual answer: the same bytes as the config in force, so that config.
            new = (
                self.config
                if reason == "poll" and unchanged_on_disk(self.config)
                else load_isolated(
                    self.config.path, self.ctx.environ, self.ctx.home, self.ctx.clock.now()
                )
            )
        except ConfigError as exc:
            self._reject(reason, exc.code, exc.problems)
            return
        unsafe = check_config_permissions(new, euid, self.ctx.environ)
        if unsafe and euid == 0:
            self._reject(reason, "config_unsafe", unsafe)
            return
        self._rejected = None
        self.alerts.config_applied(self.ctx.clock.now())
        if new.digest == self.config.digest:
            if reason != "poll":
                self.log.info("config_unchanged", reason=reason)
                self.metrics.config_reloaded("unchanged")
            return
        for problem in unsafe:
            self.log.warning("config_permissions", message=problem)
        explicit = reason == "SIGHUP"
        if not explicit:
            self.notifier.reloading()
        old_alerts = self.config.alerts
        changes = self.engine.apply(new)
        if new.alerts != old_alerts:
            self.alerts.reconfigure(new.alerts)
        self.metrics.config_reloaded("applied")
        self.log.info("config_reloaded", reason=reason, **changes)
        if not explicit:
            self.notifier.ready()

    def _reject(self, reason: str, code: str, problems: list[str]) -> None:
        """Keep the last good config; for the slow poll, say why once per distinct cause.
        Alerts go through the config in force, never through the one refused."""
        key = f"{code}:" + "\n".join(problems)
        if reason == "poll" and self._rejected == key:
            return
        self._rejected = key
        self.log.error("config_rejected", reason=reason, error_code=code, errors=problems)
        self.metrics.config_reloaded("rejected")
        self.alerts.config_rejected(problems, self.ctx.clock.now())


# What `run` always needs and the modules import lazily (other commands never use them):
# loaded while the child may still be validating, not beside the first refresh's botocore.
RUN_LIBRARIES: Final = (
    "apscheduler.schedulers.background",
    "apscheduler.executors.pool",
    "apscheduler.triggers.date",
    "watchdog.observers",
)


def main(
    config_path: Path,
    *,
    log_format: str | None,
    log_level: str | None,
    ctx: Context,
) -> int:
    """Start the daemon; exit 2 on a bad config, 3 when another instance holds the lock."""
    from credfresh.config.isolated import Pending

    unsafe = trust.path_problems(config_path, 0) if ctx.euid == 0 else []
    # A forked child validates while this process imports the daemon, on the other core.
    with Pending(config_path, ctx.environ, ctx.home, ctx.clock.now(), start=not unsafe) as pending:
        from credfresh.observe.logs import Logging
        from credfresh.outputs.http import raise_fd_limit
        from credfresh.process import wiring

        for name in RUN_LIBRARIES:
            importlib.import_module(name)
        # What was imported lives as long as the process: without this, the collections that
        # botocore's import and first client set off walked it all (35-45 ms of start-up).
        heap = FrozenHeap()
        heap.settled()
        tune_malloc(ctx.environ)
        raise_fd_limit()  # the servers cap their connections; the rest is the daemon's own files
        logging = Logging(ctx.out, fmt=log_format, level=log_level)
        logging.install()
        try:
            config = _checked_config(config_path, ctx, logging.get(), pending, unsafe)
        except BaseException:
            logging.uninstall()
            raise
    return _serve(config, ctx, logging, functools.partial(wiring.build, heap=heap))


def _serve(
    config: Config | None, ctx: Context, logging: Logging, build: Callable[..., Wired]
) -> int:
    log = logging.get()
    try:
        if config is None:
            return EXIT_CONFIG
        lock = InstanceLock(config.credentials_file, ctx.euid)
        try:
            lock.acquire()
        except AlreadyRunning as exc:
            log.error("already_running", message=str(exc))
            ctx.err.write(f"credfresh: {exc}\n")
            return EXIT_LOCKED
        except CredfileError as exc:
            if exc.code != "unsafe_path":
                raise
            log.error("config_unsafe", errors=[str(exc)])
            ctx.err.write(f"credfresh: refusing to start:\n  {exc}\n")
            return EXIT_CONFIG
        try:
            parts = build(config, ctx, logging)
            return Daemon(ctx=ctx, log=log, parts=parts).run()
        finally:
            lock.release()
    finally:
        logging.uninstall()


def _checked_config(
    config_path: Path, ctx: Context, log: BoundLogger, pending: Pending, unsafe: list[str]
) -> Config | None:
    """The config, or None (said on stderr) when it is invalid or, as root, unsafe."""
    if unsafe:
        log.error("config_unsafe", errors=unsafe, path=str(config_path))
        ctx.err.write("credfresh: refusing to start:\n  " + "\n  ".join(unsafe) + "\n")
        return None
    try:
        config = pending.result()
    except ConfigError as exc:
        log.error(
            "config_rejected", error_code=exc.code, errors=exc.problems, path=str(config_path)
        )
        ctx.err.write(f"credfresh: {exc}\n")
        return None
    for warning in config.warnings:
        log.warning("config_warning", message=warning)
    problems = check_config_permissions(config, ctx.euid, ctx.environ)
    if problems and ctx.euid == 0:
        log.error("config_unsafe", errors=problems, path=str(config_path))
        ctx.err.write("credfresh: refusing to start:\n  " + "\n  ".join(problems) + "\n")
        return None
    for problem in problems:
        log.warning("config_permissions", message=problem)
    return config
