"""The credentials file on disk: read this owner's profiles, write them under a lock.

`format` decides what the file says; this module reads and replaces it through one directory
handle and one atomic write, merging again when another program changed the file meanwhile.
"""

from __future__ import annotations

import configparser
import io
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Final, cast

from credfresh.credentials import Credentials
from credfresh.credfile.atomic import (
    EventCallback,
    TargetChangedError,
    atomic_write,
    read_at,
    remove_stale_temps,
)
from credfresh.credfile.format import (
    OWNER_KEY,
    FileView,
    MergeResult,
    decode,
    merge,
    view_of,
    with_path,
)
from credfresh.credfile.handles import file_lock, open_target, read_target
from credfresh.errors import CredfileError

FILE_MODE = 0o600
DEFAULT_LOCK_TIMEOUT = 10.0
#: The first merge plus up to three merges again when another program changed the file.
MAX_MERGE_ATTEMPTS = 4
#: A write takes milliseconds; this much silence from its child means a stuck disk, or a lock
#: the fork copied held by a thread it did not copy: the write is then done in-process.
WRITE_PATIENCE: Final = 30.0


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What `write_profiles` did: `written` is False when the bytes would not have changed."""

    path: Path
    written: bool
    updated: tuple[str, ...]
    removed: tuple[str, ...]
    conflicts: Mapping[str, CredfileError]


def read_managed(
    path: Path, owner: str, profiles: Collection[str] | None = None, *, euid: int | None = None
) -> FileView:
    """Read this owner's profiles (all, or only `profiles`); a missing file is an empty view.

    No lock: writers rename, so a read sees one whole version. The write's ownership rules
    apply, so a planted file cannot feed credentials to credfresh. Stdlib only (on the fast
    path of `credential-process`). CredfileError `unparseable_file`, `unsafe_path`, `read_failed`.
    """
    real, data = _read_bytes(path, euid)
    return _view(real, data, owner, profiles)


def _read_bytes(path: Path, euid: int | None) -> tuple[Path, bytes | None]:
    """The file's real path and bytes (None when missing), read as a write would open it."""
    try:
        target = open_target(path, euid=euid)
    except FileNotFoundError:
        return path, None
    with target:
        try:
            return target.path, read_target(target)
        except OSError as exc:
            raise CredfileError(
                f"could not read {target.path}: {exc.strerror or type(exc).__name__}",
                code="read_failed",
            ) from None


def _view(real: Path, data: bytes | None, owner: str, profiles: Collection[str] | None) -> FileView:
    if data is None:
        return FileView({}, frozenset(), frozenset())
    try:
        return view_of(decode(data), owner, profiles)
    except CredfileError as exc:
        raise with_path(real, exc) from None


def _check_result(path: Path, result: MergeResult, owner: str) -> None:
    """The last gate: a strict parser must read the sections meant, each update as ours.

    A failure here is a credfresh bug, so nothing is written rather than risking other profiles.
    """
    parser = configparser.RawConfigParser(strict=True, interpolation=None)
    try:
        parser.read_file(io.StringIO(result.text, newline=None))
    except configparser.Error as exc:
        line = getattr(exc, "lineno", None)
        raise CredfileError(
            f"{path}: the merged file would not parse (line {line}); nothing was written",
            code="write_failed",
            line=line,
        ) from None
    if set(parser.sections()) != result.sections or any(
        parser.get(name, OWNER_KEY, fallback=None) != owner for name in result.updated
    ):
        raise CredfileError(
            f"{path}: the merge would change sections it must keep; nothing was written",
            code="write_failed",
        )


def write_profiles(  # noqa: PLR0913  the profiles to write, then named options and test seams
    path: Path,
    owner: str,
    updates: Mapping[str, Credentials],
    removals: Collection[str] = (),
    *,
    adopt: Collection[str] = (),
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    on_event: EventCallback | None = None,
    before_commit: Callable[[int], None] | None = None,
    euid: int | None = None,
) -> WriteResult:
    """Write and remove any number of this owner's profiles in one locked, atomic write.

    `open_target` (the checks for `euid`, missing directories 0700), flock `<file>.lock`
    (at most `lock_timeout` s), drop leftover temps (under the lock all are stale), read,
    `merge`, `_check_result`, `atomic_write`; after another program's change, merge again
    (MAX_MERGE_ATTEMPTS in all). Unchanged bytes are not written. `section_conflict`
    profiles land in `.conflicts`; other errors are raised with the old file untouched.
    `before_commit(attempt)` runs before the re-check and rename (a test seam).
    `on_event(name, fields)` gets `rewritten_in_place`, `stale_temp_removed`,
    `credfile_changed_during_write`, `owner_not_kept` and `dir_fsync_failed`.
    """
    merge("", owner, updates, removals, adopt)  # bad arguments fail before any disk access
    with open_target(path, create=True, euid=euid) as target:
        real, directory = target.path, target.directory
        with file_lock(real.with_name(real.name + ".lock"), lock_timeout, directory=directory):
            remove_stale_temps(real, locked=True, on_event=on_event, directory=directory)
            for attempt in range(1, MAX_MERGE_ATTEMPTS + 1):
                data, snapshot = read_at(directory, real.name)
                try:
                    result = merge(decode(data), owner, updates, removals, adopt)
                except CredfileError as exc:
                    raise with_path(real, exc) from None
                if not result.changed:
                    return WriteResult(real, False, (), (), result.conflicts)
                _check_result(real, result, owner)
                hook = None if before_commit is None else partial(before_commit, attempt)
                try:
                    atomic_write(
                        target,
                        result.text.encode("utf-8"),
                        mode=FILE_MODE,
                        expected=snapshot,
                        before_rename=hook,
                        on_event=on_event,
                    )
                except TargetChangedError:
                    if on_event is not None:
                        on_event(
                            "credfile_changed_during_write",
                            {"path": str(real), "attempt": attempt},
                        )
                    continue
                return WriteResult(real, True, result.updated, result.removed, result.conflicts)
    raise CredfileError(
        f"{real} was changed by another program during each of {MAX_MERGE_ATTEMPTS} attempts;"
        " nothing was written",
        code="write_failed",
    )


class FileStore:
    """The engine's Store: one process's credentials file access, as its `euid`.

    With `forked`, each write runs in a forked child (`credfresh.forked`): its strict check of
    the whole file then runs on the other core, not in turns with 16 refresh threads holding
    the GIL, which made a write inside the daemon take 1.4-1.9x the same write alone
    (benchmarks/PROFILE.md, "The write in a child"). A child that gives no answer is followed
    by the same write in-process: it finds the file written, or writes it.
    It passes `rewritten_in_place` on once per path: worth one log line, not one per refresh.
    """

    def __init__(self, euid: int, *, forked: bool = False) -> None:
        self.euid = euid
        self._forked = forked
        self._in_place_reported: set[str] = set()
        self._no_fork_reported: set[str] = set()
        self._last_read: tuple[Path, str, bytes | None, FileView] | None = None

    def read_managed(self, path: Path, owner: str) -> FileView:
        """Parsed again only when the bytes changed: the wake-up's heal reads the whole file
        every 30 s, and parsing 1,000 sections was most of an idle daemon's CPU."""
        real, data = _read_bytes(path, self.euid)
        last = self._last_read
        if last is not None and last[:3] == (real, owner, data):
            return last[3]
        view = _view(real, data, owner, None)
        self._last_read = (real, owner, data, view)
        return view

    def write_profiles(  # noqa: PLR0913  the Store protocol's signature
        self,
        path: Path,
        owner: str,
        updates: Mapping[str, Credentials],
        removals: Collection[str] = (),
        *,
        adopt: Collection[str] = (),
        on_event: EventCallback | None = None,
    ) -> WriteResult:
        def report(name: str, fields: dict[str, object]) -> None:
            if name == "rewritten_in_place":
                if fields["path"] in self._in_place_reported:
                    return
                self._in_place_reported.add(str(fields["path"]))
            if on_event is not None:
                on_event(name, fields)

        write = partial(write_profiles, path, owner, updates, removals, adopt=adopt, euid=self.euid)
        if self._forked:
            from credfresh.forked import Forked  # not on credential-process's fast path

            with Forked(partial(_write_in_child, write)) as child:
                started = child.started
                answer = child.answer(WRITE_PATIENCE)
            if _is_write_answer(answer):
                outcome, events = cast("tuple[WriteResult | CredfileError, _Events]", answer)
                for name, fields in events:
                    report(name, fields)
                if isinstance(outcome, CredfileError):
                    raise outcome
                return outcome
            self._in_process(path, started, on_event)
        return write(on_event=report)

    def _in_process(self, path: Path, started: bool, on_event: EventCallback | None) -> None:
        """Say why this write runs in the daemon: each child that gave no answer (stuck 30 s,
        or killed), and once per path that no child can start (no fork: a pid limit)."""
        if on_event is None or (not started and str(path) in self._no_fork_reported):
            return
        if not started:
            self._no_fork_reported.add(str(path))
        reason = "no answer from its child" if started else "no child could start"
        on_event("write_in_process", {"path": str(path), "reason": reason})


_Events = list[tuple[str, dict[str, object]]]


def _write_in_child(  # pragma: no cover - runs in the forked child
    write: Callable[..., WriteResult],
) -> tuple[WriteResult | CredfileError, _Events]:
    """The write, its notices kept for the parent to log (the child logs nothing)."""
    events: _Events = []
    try:
        return write(on_event=lambda name, fields: events.append((name, fields))), events
    except CredfileError as exc:
        return exc, events


def _is_write_answer(answer: object) -> bool:
    return (
        isinstance(answer, tuple)
        and len(answer) == 2
        and isinstance(answer[0], WriteResult | CredfileError)
        and isinstance(answer[1], list)
    )
