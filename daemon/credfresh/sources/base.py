"""The Source seam: what the engine asks of anything that issues credentials.

A source fetches one profile's credentials, given its parent's credentials when the profile
is a chained role, and raises `SourceError` with a classified `Failure` (`classify.py`)
otherwise. The engine never sees botocore; a new kind of source only implements `fetch`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from credfresh.config.model import Config, Profile
    from credfresh.credentials import Credentials


@dataclasses.dataclass(frozen=True)
class Issued:
    """Fresh credentials and how far this machine's clock is off the issuer's."""

    credentials: Credentials
    skew: timedelta


class Source(Protocol):
    """Issues credentials for profiles; thread-safe, as refreshes run in a pool."""

    def fetch(self, profile: Profile, parent: Credentials | None = None) -> Issued:
        """Credentials for `profile`, or SourceError. `parent` feeds a chained role."""
        ...


SourceFactory = Callable[["Config"], Source]
