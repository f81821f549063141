"""Fault rules: which requests get an injected error, broken body or dropped connection."""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from credfresh.devsts.records import RequestRecord

log = logging.getLogger(__name__)

Predicate = Callable[[RequestRecord], bool]
MatchSpec = Mapping[str, str | Sequence[str]]
When = Predicate | MatchSpec | None
FaultKind = Literal["error", "raw", "drop", "rewrite", "trickle"]
# Kinds that answer in place of the upstream; the others shape the upstream's answer.
ANSWERING_KINDS = frozenset({"error", "raw", "drop"})

# Lower-case match keys name record attributes; API parameters are all CamelCase.
_RECORD_KEYS = frozenset({"access_key_id", "service", "region", "method", "path", "action"})


def match_spec(spec: MatchSpec) -> Predicate:
    """Turn `{"Action": "AssumeRole", "RoleArn": [a, b]}` into a predicate.

    Every key must match; a list means any of its values. CamelCase keys are request
    parameters, lower-case keys are record fields such as `access_key_id`. A JSON-friendly
    form, so the control API can express the same rules as Python callers.
    """
    expected: dict[str, frozenset[str]] = {}
    for key, value in spec.items():
        if isinstance(value, str):
            expected[key] = frozenset({value})
        else:
            expected[key] = frozenset(str(item) for item in value)

    def predicate(record: RequestRecord) -> bool:
        for key, allowed in expected.items():
            actual = getattr(record, key) if key in _RECORD_KEYS else record.params.get(key)
            if actual not in allowed:
                return False
        return True

    return predicate


@dataclasses.dataclass(eq=False, slots=True)
class FaultRule:
    """One injection rule. `times=None` means forever; `hits` counts injections so far.

    A probability roll that says "not this time" does not use up one of the `times`.
    """

    kind: FaultKind
    status: int = 0
    code: str | None = None
    message: str | None = None
    body: bytes = b""
    content_type: str = "text/xml"
    headers: tuple[tuple[str, str], ...] = ()
    truncate: int | None = None
    # "rewrite": re.sub(pattern, replacement) on the upstream's answer body.
    pattern: bytes = b""
    replacement: bytes = b""
    # "trickle": seconds between the bytes of the answer body.
    interval: float = 0.0
    times: int | None = None
    probability: float = 1.0
    when: Predicate | None = None
    description: str = ""
    hits: int = 0

    def __post_init__(self) -> None:
        if self.times is not None and self.times < 0:
            raise ValueError(f"times must be None (forever) or >= 0 (got {self.times})")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability must be within 0..1 (got {self.probability})")
        if self.kind == "trickle" and not 0.0 < self.interval <= 60.0:
            raise ValueError(f"interval must be within (0, 60] seconds (got {self.interval})")
        if self.kind == "rewrite" and not self.pattern:
            raise ValueError("a rewrite needs a pattern")
        if self.truncate is not None and not 0 <= self.truncate <= len(self.body):
            raise ValueError(
                f"truncate must be within 0..len(body)={len(self.body)} (got {self.truncate})"
            )

    @property
    def remaining(self) -> int | None:
        return None if self.times is None else max(self.times - self.hits, 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "status": self.status,
            "code": self.code,
            "times": self.times,
            "remaining": self.remaining,
            "hits": self.hits,
            "probability": self.probability,
            "description": self.description,
        }


class FaultBook:
    """The active rules, checked in the order they were added; the first that fires wins.

    The random source is seeded so probabilistic tests replay the same sequence.
    """

    def __init__(self, seed: int | None = None) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._random = random.Random(seed)

    def add(self, rule: FaultRule) -> FaultRule:
        with self._lock:
            self._rules.append(rule)
        return rule

    def remove(self, rule: FaultRule) -> None:
        with self._lock:
            if rule in self._rules:
                self._rules.remove(rule)

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def seed(self, seed: int | None) -> None:
        with self._lock:
            self._random.seed(seed)

    def rules(self) -> list[FaultRule]:
        with self._lock:
            return list(self._rules)

    def pick(self, record: RequestRecord) -> FaultRule | None:
        """The rule to apply to this request, counting the hit, or None to answer normally."""
        with self._lock:
            for rule in self._rules:
                if rule.times is not None and rule.hits >= rule.times:
                    continue
                if rule.when is not None and not _safe_call(rule.when, record):
                    continue
                if rule.probability < 1.0 and self._random.random() >= rule.probability:
                    continue
                rule.hits += 1
                return rule
            return None


def _safe_call(predicate: Predicate, record: RequestRecord) -> bool:
    """A predicate that raises is a test bug: log it loudly and treat it as no match."""
    try:
        return bool(predicate(record))
    except Exception:
        log.exception("fault predicate raised; treating it as not matching")
        return False


def as_predicate(when: When) -> Predicate | None:
    if when is None or callable(when):
        return when
    return match_spec(when)
