"""`credfresh run`: the composition root that builds every part and drives the process life.

Signals only set flags; the main thread does the work between short `Event.wait`s, so a
signal ends any wait at once. A second SIGINT exits immediately: every write is atomic, so
nothing is left half-done on disk.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Final

from credfresh import __version__
from credfresh.config.model import Config
from credfresh.context import Context
from credfresh.errors import (
    EXIT_CONFIG,
    EXIT_LOCKED,
    EXIT_OK,
    ConfigError,
    CredfileError,
    CredfreshError,
)
from credfresh.process.allocator import tune_malloc

if TYPE_CHECKING:
    from structlog.stdlib import BoundLogger

    from credfresh.alerts.manager import AlertManager
    from credfresh.context import Context as Streams
    from credfresh.engine.engine import Engine
    from credfresh.observe.logs import Logging
    from credfresh.observe.metrics import Metrics

STOP_GRACE: Final = 5.0
WAKEUP_INTERVAL: Final = 30.0
TICK: Final = 0.5
STATUS_EVERY: Final = 10.0


class AlreadyRunning(CredfreshError):
    code = "already_running"


class InstanceLock:
    """One daemon per credentials file: an flock on `<file>.credfresh.pid` held for life."""

    def __init__(self, credentials_file: Path) -> None:
        self.path = credentials_file.with_name(credentials_file.name + ".credfresh.pid")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock; CredfileError `unsafe_path` when the pid file's tree is not safe.

        The pid file is opened inside one checked directory handle (`open_lock_file`): as
        root a user's symlinked or writable directory on the way is refused, and so is a
        pid file another uid owns, before anything is truncated.
        """
        from credfresh.credfile.handles import open_lock_file

        fd = open_lock_file(self.path, create_dirs=True)
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


def check_config_permissions(
    config: Config, euid: int, environ: Mapping[str, str] | None = None
) -> list[str]:
    """Whoever can edit or swap a file the config steers root with decides what root does.

    The config, its policy files, web-identity token files, the container endpoint's token
    file and the alert command's program: each, and every directory above it, must belong
    to root (or `euid`) and be writable by no one else (`credfresh.trust`); the token file
    must not be readable by others nor a symlink out of its directory. As root the caller
    refuses such a config (exit 2 at start, `config_unsafe` on reload); for other users the
    same findings are warnings.
    """
    from credfresh import trust

    env = os.environ if environ is None else environ
    problems = config_path_problems(config.path, euid)

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
    if config.alerts.command:
        add(trust.command_problems(config.alerts.command[0], env.get("PATH", os.defpath), euid))
    return problems


def config_path_problems(path: Path, euid: int) -> list[str]:
    """The config file itself and its directories: checked before it is even parsed."""
    from credfresh import trust

    return trust.path_problems(path, euid)


class Daemon:
    """Owns the process: lock, signals, logging, notifications, reloads and shutdown."""

    def __init__(
        self,
        config: Config,
        *,
        logging: Logging,
        streams: Streams,
        environ: Mapping[str, str],
    ) -> None:
        from credfresh.process.systemd import Notifier

        self.config = config
        self.logging = logging
        self.log: BoundLogger = logging.get()
        self.streams = streams
        self.environ = environ
        self.notifier = Notifier(environ)
        self.wake = threading.Event()
        self.stopping = False
        self.reload_event = threading.Event()
        self._interrupts = 0
        self.alerts = self._build_alerts(config)
        self.metrics = self._build_metrics()
        self.engine = self._build_engine(config)
        self.engine.on_first_pass = self.wake.set
        self._http: Any = None
        self._endpoint: Any = None
        self._watcher: Any = None
        self._ready = False
        self._flushed = False
        self._reload_reason = "SIGHUP"
        self._reload_lock = threading.Lock()
        self._rejected: str | None = None

    def _build_engine(self, config: Config) -> Engine:
        from credfresh.engine.engine import Engine
        from credfresh.sources.sts import StsClients

        def clients(cfg: Config) -> StsClients:
            return StsClients(cfg.sts, credentials_file=str(cfg.credentials_file))

        wakeup = float(self.environ.get("CREDFRESH_WAKEUP_INTERVAL") or WAKEUP_INTERVAL)
        return Engine(
            config,
            log=self.log,
            redactor=self.logging.redactor,
            clients_factory=clients,
            alerts=self.alerts,
            metrics=self.metrics,
            wakeup_interval=wakeup,
        )

    def _build_alerts(self, config: Config) -> AlertManager:
        from credfresh.alerts.manager import AlertManager

        return AlertManager(
            config.alerts, redactor=self.logging.redactor, logger=self.log, environ=self.environ
        )

    def _build_metrics(self) -> Metrics:
        from credfresh.observe.metrics import Metrics

        return Metrics()

    def _start_servers(self) -> None:
        """Health, readiness and metrics; the container credentials endpoint; both opt-in."""
        from credfresh.outputs.health import HttpServer

        if self.config.http.listen:
            self._http = HttpServer.from_listen(
                self.config.http.listen,
                health=self.health,
                ready=self.ready,
                metrics=self.metrics.render,
                logger=self.log,
            )
            self._http.start()
            self.log.info("http_listening", listen=self.config.http.listen, port=self._http.port)
        settings = self.config.container_credentials
        if settings.listen and settings.token_file is not None:
            from credfresh.outputs.container import CredentialsEndpoint

            self._endpoint = CredentialsEndpoint(
                settings.listen,
                settings.token_file,
                known=lambda name: name in self.engine.config.profiles,
                current=self.engine.on_disk,
                log=self.log,
            )
            self._endpoint.start()
            self.log.info("endpoint_listening", listen=settings.listen, port=self._endpoint.port)

    # ----- signals --------------------------------------------------------------------

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

    # ----- life -----------------------------------------------------------------------

    def run(self) -> int:
        from credfresh.engine import state as state_file

        saved, saved_alerts = state_file.load(self.config.state_file)
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
            self.engine.start(saved)
            self._start_servers()
            self._start_watcher()
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
                self.log.info("ready", profiles=len(self.engine.config.profiles))
                self.notifier.ready()
                last_status = 0.0
            if self._ready and self.engine.state_dirty.is_set():
                self._save_state()
                self._write_textfile()
            now = time.monotonic()
            if ping_every and now - last_ping >= ping_every and self.healthy():
                self.notifier.watchdog()
                last_ping = now
            if now - last_status >= STATUS_EVERY:
                self.notifier.status(self.status_line())
                last_status = now

    def _first_pass_on_disk(self) -> bool:
        """`ready` (READY=1) must not run ahead of the file: the first pass is written.

        One hurried flush; after that, ready once every profile holding valid credentials in
        memory has valid credentials on disk too (a restart's expired sections do not count).
        Not "nothing pending": with short lifetimes refreshes keep joining the batch, and a
        failing disk keeps its own backoff instead of being hurried.
        """
        if not self.engine.first_pass_done.is_set():
            return False
        if not self._flushed:
            self._flushed = True
            self.engine.writer.flush(timeout=5.0)
        now = datetime.now(UTC)
        on_disk = self.engine.disk_expiries()
        for name, (_, creds) in self.engine.snapshot().items():
            if creds is None or creds.expiration <= now:
                continue
            expires = on_disk.get(name)
            if expires is None or expires <= now:
                return False
        return True

    def _shutdown(self) -> bool:
        self.log.info("stopping")
        self.notifier.stopping()
        if self._watcher is not None:
            self._watcher.stop()
        idle = self.engine.stop(grace=STOP_GRACE)
        for server in (self._http, self._endpoint):
            if server is not None:
                server.stop()
        self.alerts.close(timeout=2.0)
        self._save_state()
        self._write_textfile()
        self.log.info("stopped", clean=idle)
        return idle

    def _save_state(self) -> None:
        from credfresh.engine import state as state_file

        self.engine.state_dirty.clear()
        profiles = {name: entry for name, (entry, _) in self.engine.snapshot().items()}
        alerts = self.engine.alerts.to_dict() if self.engine.alerts is not None else {}
        try:
            state_file.save(self.engine.config.state_file, profiles, alerts)
        except CredfreshError as exc:
            self.log.error("state_write_failed", error_code=exc.code, message=str(exc))

    def _write_textfile(self) -> None:
        path = self.engine.config.metrics.textfile
        if path is None:
            return
        try:
            self.metrics.write_textfile(path)
        except CredfreshError as exc:
            self.log.error("textfile_write_failed", error_code=exc.code, message=str(exc))

    def _flush_streams(self) -> None:
        for stream in (self.streams.out, self.streams.err, sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()

    # ----- reload ---------------------------------------------------------------------

    def _start_watcher(self) -> None:
        from credfresh.process.watch import ConfigWatcher

        self._watcher = ConfigWatcher(self.config.path, self._watch_fired)
        self._watcher.start()

    def _watch_fired(self, reason: str) -> None:
        if reason == "poll":
            self.reload(reason)
            return
        self._reload_reason = reason
        self.reload_event.set()
        self.wake.set()

    def reload(self, reason: str) -> None:
        """Read, compare the hash, validate, and only then apply; keep the last good config.

        An explicit reload (SIGHUP) is always bracketed by RELOADING=1 and READY=1 for
        systemd, even when nothing changed; a watched change only when it applies.
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
        from credfresh.config.validate import load_config

        euid = os.geteuid()
        unsafe = config_path_problems(self.config.path, euid)
        if unsafe and euid == 0:
            self._reject(reason, "config_unsafe", unsafe)
            return
        try:
            new = load_config(
                self.config.path,
                self.environ,
                Context(self.streams.out, self.streams.err, self.environ).home,
            )
        except ConfigError as exc:
            self._reject(reason, exc.code, exc.problems)
            return
        unsafe = check_config_permissions(new, euid, self.environ)
        if unsafe and euid == 0:
            self._reject(reason, "config_unsafe", unsafe)
            return
        self._rejected = None
        self.alerts.config_applied(datetime.now(UTC))
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
        changes = self.engine.apply(new)
        if new.alerts != self.config.alerts:
            self.alerts.reconfigure(new.alerts)
        self.config = new
        self.metrics.config_reloaded("applied")
        self.log.info("config_reloaded", reason=reason, **changes)
        if not explicit:
            self.notifier.ready()

    def _reject(self, reason: str, code: str, problems: list[str]) -> None:
        """Keep the last good config; say why once per distinct cause for the slow poll.

        Alerts go through the config in force, never through the one refused.
        """
        key = f"{code}:" + "\n".join(problems)
        if reason == "poll" and self._rejected == key:
            return
        self._rejected = key
        self.log.error("config_rejected", reason=reason, error_code=code, errors=problems)
        self.metrics.config_reloaded("rejected")
        self.alerts.config_rejected(problems, datetime.now(UTC))

    # ----- views ----------------------------------------------------------------------

    def health(self) -> tuple[bool, Mapping[str, object]]:
        from credfresh.outputs.health import liveness

        return liveness(
            time.monotonic(),
            self.engine.heartbeat,
            self.engine.wakeup_interval,
            writer_alive=self.engine.writer.alive(),
        )

    def ready(self, profile: str | None) -> tuple[int, Mapping[str, object]]:
        from credfresh.outputs.health import readiness

        return readiness(datetime.now(UTC), self.engine.disk_expiries(), profile)

    def healthy(self) -> bool:
        """Scheduler beat within two wake-up intervals, writer thread alive (systemd watchdog)."""
        from credfresh.process.systemd import should_ping

        age = time.monotonic() - self.engine.heartbeat
        return should_ping(
            age, self.engine.wakeup_interval, writer_alive=self.engine.writer.alive()
        )

    def status_line(self) -> str:
        from credfresh.process.systemd import status_line

        now = datetime.now(UTC)
        snapshot = self.engine.snapshot()
        fresh = sum(1 for _, creds in snapshot.values() if creds and creds.expiration > now)
        failing = [
            (name, entry.last_error_code)
            for name, (entry, _) in snapshot.items()
            if entry.last_error_code
        ]
        upcoming = [
            (name, (entry.next_attempt - now).total_seconds())
            for name, (entry, _) in snapshot.items()
            if entry.next_attempt is not None
        ]
        nxt = min(upcoming, key=lambda item: item[1]) if upcoming else None
        return status_line(fresh, failing, nxt)


def main(
    config_path: Path,
    *,
    log_format: str | None,
    log_level: str | None,
    streams: Streams,
) -> int:
    """Start the daemon; exit 2 on a bad config, 3 when another instance holds the lock."""
    from credfresh.config.validate import load_config
    from credfresh.observe.logs import Logging
    from credfresh.outputs.http import raise_fd_limit

    tune_malloc(streams.environ)
    raise_fd_limit()  # the servers cap their connections; the rest is the daemon's own files
    logging = Logging(streams.out, fmt=log_format, level=log_level)
    logging.install()
    log = logging.get()
    try:
        if os.geteuid() == 0 and (unsafe := config_path_problems(config_path, 0)):
            log.error("config_unsafe", errors=unsafe, path=str(config_path))
            streams.err.write("credfresh: refusing to start:\n  " + "\n  ".join(unsafe) + "\n")
            return EXIT_CONFIG
        try:
            config = load_config(
                config_path,
                streams.environ,
                Context(streams.out, streams.err, streams.environ).home,
            )
        except ConfigError as exc:
            log.error(
                "config_rejected", error_code=exc.code, errors=exc.problems, path=str(config_path)
            )
            streams.err.write(f"credfresh: {exc}\n")
            return EXIT_CONFIG
        for warning in config.warnings:
            log.warning("config_warning", message=warning)
        problems = check_config_permissions(config, os.geteuid(), streams.environ)
        if problems and os.geteuid() == 0:
            log.error("config_unsafe", errors=problems, path=str(config_path))
            streams.err.write("credfresh: refusing to start:\n  " + "\n  ".join(problems) + "\n")
            return EXIT_CONFIG
        for problem in problems:
            log.warning("config_permissions", message=problem)
        lock = InstanceLock(config.credentials_file)
        try:
            lock.acquire()
        except AlreadyRunning as exc:
            log.error("already_running", message=str(exc))
            streams.err.write(f"credfresh: {exc}\n")
            return EXIT_LOCKED
        except CredfileError as exc:
            if exc.code != "unsafe_path":
                raise
            log.error("config_unsafe", errors=[str(exc)])
            streams.err.write(f"credfresh: refusing to start:\n  {exc}\n")
            return EXIT_CONFIG
        try:
            return Daemon(config, logging=logging, streams=streams, environ=streams.environ).run()
        finally:
            lock.release()
    finally:
        logging.uninstall()
