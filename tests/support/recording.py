"""A logger for in-process tests: keeps every line (level, event, fields) for assertions, and
satisfies `observe.logs.Logger` (info and warning), from any thread."""

from __future__ import annotations

import threading
from typing import Any


class RecordingLogger:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def _add(self, level: str, event: str, kw: dict[str, Any]) -> None:
        with self._lock:
            self.lines.append((level, event, kw))

    def info(self, event: str, **kw: Any) -> None:
        self._add("info", event, kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._add("warning", event, kw)

    def pairs(self) -> list[tuple[str, dict[str, Any]]]:
        """(event, fields) of every line, whatever its level."""
        with self._lock:
            return [(event, kw) for _, event, kw in self.lines]

    def named(self, event: str) -> list[dict[str, Any]]:
        return [kw for name, kw in self.pairs() if name == event]

    def events(self) -> list[str]:
        return [name for name, _ in self.pairs()]

    def text(self) -> str:
        with self._lock:
            return repr(self.lines)
