"""The composition root: every part of `credfresh run`, built once; `Daemon` runs them.
Tests build the same parts with fakes (tests/unit/test_engine.py)."""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from credfresh.alerts.manager import AlertManager
from credfresh.credfile import store as credfile
from credfresh.credfile.memory import MemoryStore
from credfresh.engine.batcher import BatchWriter
from credfresh.engine.core import WAKEUP_INTERVAL
from credfresh.engine.engine import Engine
from credfresh.engine.parts import Parts
from credfresh.engine.scheduler import ApScheduler
from credfresh.observe.metrics import Metrics
from credfresh.outputs.env_file import EnvFiles
from credfresh.outputs.health import HttpServer, liveness, readiness
from credfresh.outputs.hooks import HookDeps, Hooks, Worker
from credfresh.process.control import start_control
from credfresh.process.heap import FrozenHeap
from credfresh.process.systemd import Notifier, should_ping, status_line
from credfresh.process.watch import POLL_INTERVAL, ConfigWatcher
from credfresh.sources.assume_role import StsSource
from credfresh.sources.select import SourceSet

if TYPE_CHECKING:
    from credfresh.config.model import Config, HookSpec
    from credfresh.context import Clock, Context
    from credfresh.observe.logs import BoundLogger, Logging
    from credfresh.sources.base import Source


@dataclasses.dataclass(frozen=True)
class Wired:
    """What the daemon drives; servers and the watcher are started by it, in its order."""

    engine: Engine
    alerts: AlertManager
    metrics: Metrics
    hooks: Hooks
    notifier: Notifier
    probes: Probes
    heap: FrozenHeap
    servers: Callable[[], list[Any]]
    watcher: Callable[[Callable[[str], None]], ConfigWatcher]
    #: The control socket for `credfresh refresh` (None when it cannot be made).
    control: Callable[[], Any] = lambda: None


def build(
    config: Config, ctx: Context, logging: Logging, *, heap: FrozenHeap | None = None
) -> Wired:
    """Every part, from one config and one context (and the heap, when `run` froze its
    imports before the config came)."""
    log = logging.get()
    alerts = AlertManager(config.alerts, redactor=logging.redactor, logger=log, environ=ctx.environ)
    metrics = Metrics()
    heap = heap or FrozenHeap()
    hooks = Hooks(
        HookDeps(
            environ=ctx.environ,
            euid=ctx.euid,
            log=log,
            redactor=logging.redactor,
            clock=ctx.clock,
            alerts=alerts,
            metrics=metrics,
        ),
        start_hook,
    )

    def source(cfg: Config) -> Source:
        return sources_for(cfg, ctx, log)

    parts = Parts(
        source_factory=source,
        scheduler=ApScheduler(config.sts.max_concurrency),
        clock=ctx.clock,
        store=credfile.FileStore(ctx.euid, forked=True),
        writer_factory=functools.partial(BatchWriter, clock=ctx.clock),
        log=log,
        redactor=logging.redactor,
        alerts=alerts,
        metrics=metrics,
        after_write=(EnvFiles(euid=ctx.euid, log=log).written, hooks.written),
        heap=heap,
    )
    wakeup = float(ctx.environ.get("CREDFRESH_WAKEUP_INTERVAL") or WAKEUP_INTERVAL)
    engine = Engine(config, parts, wakeup_interval=wakeup)
    probes = Probes(engine, ctx.clock, wakeup)
    poll = float(ctx.environ.get("CREDFRESH_CONFIG_POLL_INTERVAL") or POLL_INTERVAL)
    return Wired(
        engine=engine,
        alerts=alerts,
        metrics=metrics,
        hooks=hooks,
        notifier=Notifier(ctx.environ),
        probes=probes,
        heap=heap,
        servers=lambda: [
            *start_servers(config, engine, probes, metrics, log),
            *start_imds(config, engine, probes.clock, ctx.euid, log),
        ],
        watcher=lambda on_change: ConfigWatcher(config.path, on_change, poll_interval=poll),
        control=lambda: start_control(
            config.state_file, euid=ctx.euid, engine=engine, log=log, clock=ctx.clock
        ),
    )


def start_hook(spec: HookSpec, deps: HookDeps) -> Worker:
    """A hook's worker, its module loaded with a config's first hook (0.1 MB a daemon
    without hooks never holds)."""
    from credfresh.outputs.hook_worker import HookWorker

    return HookWorker(spec, deps)


def build_exec(config: Config, ctx: Context, logging: Logging) -> Engine:
    """`credfresh exec`'s engine: `build`'s sources, scheduler and writer over an in-memory
    store; no alerts, metrics, listeners or after_write outputs (the command serves)."""
    log = logging.get()
    parts = Parts(
        source_factory=lambda cfg: sources_for(cfg, ctx, log),
        scheduler=ApScheduler(config.sts.max_concurrency),
        clock=ctx.clock,
        store=MemoryStore(),
        writer_factory=functools.partial(BatchWriter, clock=ctx.clock),
        log=log,
        redactor=logging.redactor,
    )
    wakeup = float(ctx.environ.get("CREDFRESH_WAKEUP_INTERVAL") or WAKEUP_INTERVAL)
    return Engine(config, parts, wakeup_interval=wakeup)


def sources_for(config: Config, ctx: Context, log: BoundLogger) -> SourceSet:
    """Every kind of source for one config (a reload builds new ones)."""
    credentials_file = str(config.credentials_file)

    def roles_anywhere() -> Source:
        from credfresh.sources.roles_anywhere import RolesAnywhereSource

        def reload_failed(profile: str, why: str) -> None:
            log.warning("certificate_reload_failed", profile=profile, reason=why)

        return RolesAnywhereSource(
            config.sts, clock=ctx.clock, on_reload_failed=reload_failed, sleep=time.sleep
        )

    def copy() -> Source:
        from credfresh.sources.copy import CopySource

        return CopySource(
            config.sts, credentials_file=credentials_file, clock=ctx.clock, home=ctx.home
        )

    return SourceSet(
        {
            "assume_role": lambda: StsSource(
                config.sts, credentials_file=credentials_file, clock=ctx.clock
            ),
            "roles_anywhere": roles_anywhere,
            "copy": copy,
        }
    )


def start_servers(
    config: Config, engine: Engine, probes: Probes, metrics: Metrics, log: BoundLogger
) -> list[Any]:
    """Health and metrics, the container credentials endpoint (both opt-in), on the addresses
    the daemon started with: a reload does not move them."""
    servers: list[Any] = []
    if config.http.listen:
        http = HttpServer.from_listen(
            config.http.listen,
            health=probes.health,
            ready=probes.ready,
            metrics=metrics.render,
            logger=log,
            clock=probes.clock,
        )
        http.start()
        servers.append(http)
        log.info("http_listening", listen=config.http.listen, port=http.port)
    settings = config.container_credentials
    if settings.listen and settings.token_file is not None:
        from credfresh.outputs.container import CredentialsEndpoint

        endpoint = CredentialsEndpoint(
            settings.listen,
            settings.token_file,
            known=engine.knows,
            current=engine.on_disk,
            log=log,
            clock=probes.clock,
        )
        endpoint.start()
        servers.append(endpoint)
        log.info("endpoint_listening", listen=settings.listen, port=endpoint.port)
    return servers


def start_imds(
    config: Config, engine: Engine, clock: Clock, euid: int, log: BoundLogger
) -> list[Any]:
    """The IMDSv2-compatible endpoint (opt-in): a daemon listener, on the address the daemon
    started with. Who may read defaults to the daemon's own uid."""
    settings = config.imds
    if not settings.listen or settings.profile is None:
        return []
    from credfresh.outputs.imds import ImdsEndpoint

    allowed = settings.allow_uids if settings.allow_uids is not None else (euid,)
    endpoint = ImdsEndpoint(
        settings.listen,
        settings.profile,
        current=engine.on_disk,
        allow_uids=allowed,
        allow_v1=settings.allow_v1,
        hop_limit=settings.hop_limit,
        log=log,
        clock=clock,
    )
    endpoint.start()
    log.info(
        "imds_listening",
        listen=settings.listen,
        port=endpoint.port,
        profile=settings.profile,
        allow_uids=sorted(allowed),
    )
    return [endpoint]


class Probes:
    """Health, readiness, the watchdog's rule and systemd's status line, from the engine."""

    def __init__(self, engine: Engine, clock: Clock, wakeup_interval: float) -> None:
        self._engine = engine
        self.clock = clock
        self._interval = wakeup_interval

    def health(self) -> tuple[bool, Mapping[str, object]]:
        heartbeat, writer_alive = self._engine.pulse()
        return liveness(
            self.clock.monotonic(), heartbeat, self._interval, writer_alive=writer_alive
        )

    def ready(self, profile: str | None) -> tuple[int, Mapping[str, object]]:
        return readiness(self.clock.now(), self._engine.snapshot().on_disk, profile)

    def healthy(self) -> bool:
        """Scheduler beat within two wake-up intervals, writer thread alive (systemd watchdog)."""
        heartbeat, writer_alive = self._engine.pulse()
        age = self.clock.monotonic() - heartbeat
        return should_ping(age, self._interval, writer_alive=writer_alive)

    def status_line(self) -> str:
        return status_line(*self._engine.status_facts(self.clock.now()))
