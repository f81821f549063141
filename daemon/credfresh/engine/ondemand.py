"""One on-demand refresh request (`credfresh refresh`): which of its profiles have landed.

A profile counts only through a run that STARTED after the request (one already in flight
may have used a source key rotated meanwhile): that run's failure, or its credentials
renamed into place. The engine reports to every open ticket under its lock.
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from credfresh.credentials import Credentials
    from credfresh.sources.classify import Failure


class Ticket:
    """The profiles one request waits for, each resolved once."""

    def __init__(self, names: Collection[str]) -> None:
        self.names = tuple(dict.fromkeys(names))
        self._cond = threading.Condition()
        self._asked = set(self.names)  # no run started since the request
        self._started: set[str] = set()
        self._issued: dict[str, str] = {}  # name: access key id of the run's credentials
        self._results: dict[str, Credentials | Failure] = {}

    def started(self, name: str) -> None:
        with self._cond:
            if name in self._asked:
                self._asked.discard(name)
                self._started.add(name)

    def issued(self, name: str, creds: Credentials) -> None:
        with self._cond:
            if name in self._started and name not in self._results:
                self._issued[name] = creds.access_key_id

    def landed(self, name: str, creds: Credentials) -> None:
        with self._cond:
            if self._issued.get(name) == creds.access_key_id and name not in self._results:
                self._resolve(name, creds)

    def failed(self, name: str, failure: Failure) -> None:
        """The run failed (or its credentials could not be written)."""
        with self._cond:
            if name in self._started and name not in self._results:
                self._resolve(name, failure)

    def removed(self, name: str, failure: Failure) -> None:
        """A reload removed the profile: no run will come."""
        with self._cond:
            if name in self.names and name not in self._results:
                self._resolve(name, failure)

    def write_failed(self, failure: Failure) -> None:
        """A write failed: every issued, unlanded profile fails with it (the writer retries)."""
        with self._cond:
            for name in self._issued:
                if name not in self._results:
                    self._resolve(name, failure)

    def close(self, failure: Failure) -> None:
        """The engine stops: whatever is open fails with `failure`."""
        with self._cond:
            for name in self.names:
                if name not in self._results:
                    self._resolve(name, failure)

    def _resolve(self, name: str, result: Credentials | Failure) -> None:
        self._results[name] = result
        self._cond.notify_all()

    def wait(self, timeout: float) -> dict[str, Credentials | Failure]:
        """Every result in by `timeout` seconds, or those that are; unresolved names are absent."""
        with self._cond:
            self._cond.wait_for(lambda: len(self._results) == len(self.names), timeout)
            return dict(self._results)
