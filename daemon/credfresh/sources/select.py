"""The one `Source` the engine sees: each profile goes to the source of its kind.

Sources are built on first use, so a config without Roles Anywhere or copied profiles never
imports `cryptography` or resolves botocore sessions it does not need.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datetime import datetime

    from credfresh.config.model import Profile
    from credfresh.credentials import Credentials
    from credfresh.sources.base import Issued, Source


class SourceSet:
    """Dispatches `fetch` by `Profile.kind` (a chained role is an `assume_role`); thread-safe."""

    def __init__(self, factories: Mapping[str, Callable[[], Source]]) -> None:
        self._factories = dict(factories)
        self._built: dict[str, Source] = {}
        self._lock = threading.Lock()

    def source_for(self, kind: str) -> Source:
        with self._lock:
            source = self._built.get(kind)
            if source is None:
                source = self._factories[kind]()
                self._built[kind] = source
            return source

    def built(self, kind: str) -> Source | None:
        """The source of that kind if a profile has used it (for `source_expiring`)."""
        with self._lock:
            return self._built.get(kind)

    def source_expiry(self, profile: Profile) -> datetime | None:
        """A Roles Anywhere profile's certificate end, once its source has loaded it."""
        source = self.built(profile.kind)
        expiry = getattr(source, "source_expiry", None)
        return expiry(profile) if expiry is not None else None

    def source_changed(self, profile: Profile) -> bool:
        """A static copy's AWS files changed since it was read, or are unknown to the source
        in use (a reload built new ones): the wake-up refetches it."""
        source = self.built(profile.kind)
        if source is None:
            return profile.kind == "copy"  # a new set after a reload: it knows no file yet
        changed = getattr(source, "source_changed", None)
        return bool(changed(profile)) if changed is not None else False

    def fetch(self, profile: Profile, parent: Credentials | None = None) -> Issued:
        kind = "assume_role" if profile.kind == "web_identity" else profile.kind
        return self.source_for(kind).fetch(profile, parent)
