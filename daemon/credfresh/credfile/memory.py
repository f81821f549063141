"""The engine's store kept in memory: `credfresh exec` holds its profiles here and writes no
credentials file. It satisfies `engine.parts.Store`; the path and owner are not used."""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING

from credfresh.credfile.format import FileView
from credfresh.credfile.store import WriteResult

if TYPE_CHECKING:
    from pathlib import Path

    from credfresh.credentials import Credentials
    from credfresh.credfile.atomic import EventCallback


class MemoryStore:
    """Sections by profile name (`sections`, which a test may edit as a hand edit would);
    every write lands at once and nothing is foreign."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sections: dict[str, Credentials] = {}

    def read_managed(self, path: Path, owner: str) -> FileView:
        with self._lock:
            return FileView(dict(self.sections), frozenset(), frozenset())

    def write_profiles(  # noqa: PLR0913 - mirrors credfile.store.write_profiles
        self,
        path: Path,
        owner: str,
        updates: Mapping[str, Credentials],
        removals: Collection[str] = (),
        *,
        adopt: Collection[str] = (),
        on_event: EventCallback | None = None,
    ) -> WriteResult:
        with self._lock:
            removed = tuple(sorted(name for name in removals if name in self.sections))
            for name in removed:
                del self.sections[name]
            self.sections.update(updates)
        return WriteResult(
            path=path,
            written=bool(updates or removed),
            updated=tuple(sorted(updates)),
            removed=removed,
            conflicts={},
        )
