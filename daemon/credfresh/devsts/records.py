"""What the dev STS saw and issued, kept so tests can check a daemon's work against it."""

from __future__ import annotations

import collections
import dataclasses
import threading
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from credfresh.devsts.wire import parse_expiration


def mask(value: str) -> str:
    """Show a key id the way credfresh logs do: first and last four characters."""
    if len(value) <= 8:
        return "****"
    return f"{value[:4]}...{value[-4:]}"


@dataclasses.dataclass(slots=True)
class RequestRecord:
    """One request as it arrived: parameters without tokens, and the signing key id.

    `status` and `outcome` are filled in when the answer goes out (`pending` until then):
    `forwarded`, `stub`, `error:<Code>`, `raw`, `dropped`, `expired`, `upstream-failed`.
    """

    time: float
    method: str
    path: str
    action: str | None
    params: dict[str, str]
    access_key_id: str | None
    service: str | None = None
    region: str | None = None
    status: int | None = None
    outcome: str = "pending"

    @property
    def role_arn(self) -> str | None:
        return self.params.get("RoleArn")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RequestRecord:
        return cls(**{field.name: data[field.name] for field in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True, slots=True)
class IssuedCredentials:
    """A credential set the dev STS handed out, with the expiry exactly as the client saw it.

    Secrets are kept on purpose: tests compare a credentials file's sections with them and
    scan outputs for leaks. They never appear in repr().
    """

    access_key_id: str
    secret_access_key: str = dataclasses.field(repr=False)
    session_token: str = dataclasses.field(repr=False)
    expiration_text: str
    action: str
    issued_at: float
    role_arn: str | None = None
    principal_arn: str | None = None
    source_access_key_id: str | None = None

    def __repr__(self) -> str:
        return (
            f"IssuedCredentials(access_key_id={mask(self.access_key_id)!r}, "
            f"expiration={self.expiration_text!r}, role_arn={self.role_arn!r}, "
            f"action={self.action!r})"
        )

    @property
    def expiration(self) -> datetime:
        return parse_expiration(self.expiration_text)

    @property
    def expires_at(self) -> float:
        return self.expiration.timestamp()

    def to_dict(self) -> dict[str, Any]:
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IssuedCredentials:
        return cls(**{field.name: data[field.name] for field in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True, slots=True)
class Counts:
    """Calls seen since the last reset, control-API calls excluded."""

    total: int
    by_action: dict[str, int]
    by_role: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Recorder:
    """Thread-safe log of requests and issued credentials.

    Logs keep the newest `limit` entries so a long benchmark does not grow without bound;
    counters stay exact. Expiry lookups go by access key id over the same window.
    """

    def __init__(self, limit: int = 50_000) -> None:
        if limit < 1:
            raise ValueError(f"record limit must be at least 1 (got {limit})")
        self._lock = threading.Lock()
        self._limit = limit
        self._requests: collections.deque[RequestRecord] = collections.deque(maxlen=limit)
        self._issued: collections.OrderedDict[str, IssuedCredentials] = collections.OrderedDict()
        self._total = 0
        self._by_action: collections.Counter[str] = collections.Counter()
        self._by_role: collections.Counter[str] = collections.Counter()
        self._secrets: dict[str, str] = {}

    def arrived(self, record: RequestRecord) -> None:
        with self._lock:
            self._requests.append(record)
            self._total += 1
            if record.action:
                self._by_action[record.action] += 1
            role = record.role_arn
            if role:
                self._by_role[role] += 1

    def finished(self, record: RequestRecord, status: int | None, outcome: str) -> None:
        with self._lock:
            record.status = status
            record.outcome = outcome

    def issue(self, credentials: IssuedCredentials) -> None:
        with self._lock:
            self._issued[credentials.access_key_id] = credentials
            while len(self._issued) > self._limit:
                self._issued.popitem(last=False)

    def issued_for(self, access_key_id: str) -> IssuedCredentials | None:
        with self._lock:
            return self._issued.get(access_key_id)

    def requests(
        self, *, action: str | None = None, role_arn: str | None = None
    ) -> list[RequestRecord]:
        """Snapshots (copies), oldest first, optionally filtered."""
        with self._lock:
            return [
                dataclasses.replace(record, params=dict(record.params))
                for record in self._requests
                if (action is None or record.action == action)
                and (role_arn is None or record.role_arn == role_arn)
            ]

    def issued(self) -> list[IssuedCredentials]:
        with self._lock:
            return list(self._issued.values())

    def counts(self) -> Counts:
        with self._lock:
            return Counts(self._total, dict(self._by_action), dict(self._by_role))

    def add_secret(self, label: str, value: str) -> None:
        """Register a secret issued elsewhere (e.g. an IAM user's key) for leak scans."""
        with self._lock:
            self._secrets[value] = label

    def find_leaks(self, text: str) -> list[str]:
        """Name every known secret or session token that occurs in `text`, without its value."""
        with self._lock:
            issued = list(self._issued.values())
            extra = dict(self._secrets)
        leaks = []
        for creds in issued:
            if creds.secret_access_key in text:
                leaks.append(f"secret access key of {mask(creds.access_key_id)}")
            if creds.session_token in text:
                leaks.append(f"session token of {mask(creds.access_key_id)}")
        leaks.extend(label for value, label in extra.items() if value and value in text)
        return leaks

    def clear(self) -> None:
        """Forget requests, issued sets (and so their expiry) and counters; secrets stay."""
        with self._lock:
            self._requests.clear()
            self._issued.clear()
            self._total = 0
            self._by_action.clear()
            self._by_role.clear()
