"""Watching the config file: inotify on its directory through watchdog, a debounce, and a
slow poll. A Kubernetes ConfigMap update swaps the `..data` symlink, so that name counts too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

DEBOUNCE: Final = 0.5
POLL_INTERVAL: Final = 60.0


def is_relevant(config_name: str, src: str, dest: str | None) -> bool:
    """Pure: does a directory event touch the config (or a ConfigMap's `..data` link)?"""
    names = {Path(src).name}
    if dest:
        names.add(Path(dest).name)
    return config_name in names or "..data" in names


class ConfigWatcher:
    """Calls `on_change` (from a timer thread) after the config may have changed, debounced,
    and every `poll_interval` seconds; the callback compares the hash and validates."""

    def __init__(
        self,
        path: Path,
        on_change: Callable[[str], None],
        *,
        debounce: float = DEBOUNCE,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self._path = path
        self._on_change = on_change
        self._debounce = debounce
        self._poll_interval = poll_interval
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._observer: Any = None
        self._stop = threading.Event()
        self._poller = threading.Thread(
            target=self._poll, name="credfresh-config-poll", daemon=True
        )

    def start(self) -> None:
        self._start_observer()
        self._poller.start()

    def _start_observer(self) -> bool:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        directory = self._path.parent
        if not directory.is_dir():
            return False
        name = self._path.name
        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return
                dest = getattr(event, "dest_path", None) or None
                if is_relevant(name, str(event.src_path), str(dest) if dest else None):
                    watcher.poke("inotify")

        observer = Observer()
        observer.daemon = True
        try:
            observer.schedule(Handler(), str(directory), recursive=False)
            observer.start()
        except OSError:
            return False
        self._observer = observer
        return True

    def poke(self, reason: str) -> None:
        """Restart the trailing debounce timer."""
        with self._lock:
            if self._stop.is_set():
                return
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(self._debounce, self._fire, args=[reason])
            self._timer.daemon = True
            self._timer.start()

    def _fire(self, reason: str) -> None:
        with self._lock:
            self._timer = None
        if not self._stop.is_set():
            self._on_change(reason)

    def _poll(self) -> None:
        while not self._stop.wait(self._poll_interval):
            if self._observer is None:
                self._start_observer()
            self._on_change("poll")

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=2)
