"""What the engine is built from and what it shows: the injected parts, the snapshot."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from credfresh.credentials import NEVER, Credentials, format_expiry

if TYPE_CHECKING:
    from credfresh.alerts.manager import AlertManager
    from credfresh.config.model import Config
    from credfresh.context import Clock
    from credfresh.credfile.atomic import EventCallback
    from credfresh.credfile.format import FileView
    from credfresh.credfile.store import WriteResult
    from credfresh.engine.batcher import BatchWriter
    from credfresh.engine.scheduler import Scheduler
    from credfresh.engine.state import ProfileState
    from credfresh.errors import CredfileError
    from credfresh.observe.logs import BoundLogger, Redactor
    from credfresh.observe.metrics import Metrics
    from credfresh.sources.base import SourceFactory


class Store(Protocol):
    """The credentials file's reader and writer (`credfresh.credfile.store`, or in memory)."""

    def read_managed(self, path: Path, owner: str) -> FileView: ...

    def write_profiles(  # noqa: PLR0913 - mirrors credfile.store.write_profiles
        self,
        path: Path,
        owner: str,
        updates: Mapping[str, Credentials],
        removals: Collection[str] = (),
        *,
        adopt: Collection[str] = (),
        on_event: EventCallback | None = None,
    ) -> WriteResult: ...


class Heap(Protocol):
    """The collector's view of the long-lived heap (`process.heap.FrozenHeap`)."""

    def settled(self, *, collect: bool = False) -> None: ...

    def dropping(self) -> None: ...


class WriterFactory(Protocol):
    """Builds the batching writer of one credentials file (`BatchWriter`, tuned or not)."""

    def __call__(
        self,
        write: Callable[[Mapping[str, Credentials], Collection[str]], Mapping[str, CredfileError]],
        *,
        on_written: Callable[[Mapping[str, Credentials], Collection[str], float], None],
        on_conflict: Callable[[str, CredfileError], None],
        on_failed: Callable[[CredfileError, float], None],
    ) -> BatchWriter: ...


@dataclasses.dataclass(frozen=True)
class Parts:
    """Everything the engine uses from outside, built by `process.wiring` (or a test)."""

    source_factory: SourceFactory
    scheduler: Scheduler
    clock: Clock
    store: Store
    writer_factory: WriterFactory
    log: BoundLogger
    redactor: Redactor
    alerts: AlertManager | None = None
    metrics: Metrics | None = None
    rng: random.Random = dataclasses.field(default_factory=random.Random)
    #: Outputs fed after each landed write, on the writer thread (env files, then hooks).
    after_write: Sequence[Callable[[Config, Mapping[str, Credentials]], None]] = ()
    #: Told when sources issued their first credentials (botocore and its models are built)
    #: and before sources are dropped.
    heap: Heap | None = None


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A copy of what the daemon, its health views and its state file may see."""

    states: Mapping[str, ProfileState]
    in_memory: Mapping[str, datetime | None]  # expiry of the newest credentials held
    on_disk: Mapping[str, datetime | None]  # expiry of what the file holds (None: nothing)
    first_pass_done: bool
    heartbeat: float  # monotonic time of the scheduler's last sign of life
    writer_alive: bool


def same_on_disk(found: Credentials | None, wrote: Credentials) -> bool:
    """Does a section read back from the file hold what credfresh wrote? Times compare as
    written (to the second), not as held."""

    if found is None or (found.access_key_id, found.secret_access_key, found.session_token) != (
        wrote.access_key_id,
        wrote.secret_access_key,
        wrote.session_token,
    ):
        return False
    return found.expiration == wrote.expiration or format_expiry(found.expiration) == format_expiry(
        wrote.expiration
    )


def expiry(creds: Credentials | None) -> datetime | None:
    """The expiry the views judge: None for nothing, `NEVER` for a static set."""
    if creds is None:
        return None
    return NEVER if creds.expiration is None else creds.expiration
