"""The per-profile lines `once` and `refresh` print: one format for both."""

from __future__ import annotations

from typing import TYPE_CHECKING

from credfresh.config.model import format_duration
from credfresh.credentials import NEVER, format_time

if TYPE_CHECKING:
    from datetime import datetime

    from credfresh.sources.classify import Failure


def refreshed_line(name: str, expiration: datetime | None, now: datetime) -> str:
    if expiration is None or expiration == NEVER:
        return f"refreshed {name}: static keys, never expire\n"
    left = format_duration((expiration - now).total_seconds())
    return f"refreshed {name}: expires {format_time(expiration)} (in {left})\n"


def failed_lines(name: str, failure: Failure) -> str:
    """The failure, and its hint on a line of its own when it has one (for stderr)."""
    kind = "permanent" if failure.permanent else "transient"
    text = f"failed {name}: {failure.code} ({kind}): {failure.message}\n"
    return text + (f"  hint: {failure.hint}\n" if failure.hint else "")
