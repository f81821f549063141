"""Crash-safe, ownership-checked file replacement: the one atomic-write helper credfresh uses.

A write runs the path checks of `handles` once and works inside the directory they opened.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from credfresh.context import Clock, SystemClock
from credfresh.credfile.handles import (
    DirHandle,
    Target,
    absolute,
    failed,
    open_dir,
    open_regular,
    open_target,
    read_all,
)
from credfresh.errors import CredfileError

#: `on_event(name, fields)`: notices for the caller's log; these modules import no logging.
EventCallback = Callable[[str, dict[str, object]], None]

#: A temp file whose creator is dead is left alone this long, in case the pid belongs to
#: another pid namespace (two containers sharing a volume) and the write is still running.
DEAD_PID_GRACE_SECONDS = 5.0
#: Past this age a temp file is stale whoever made it: a write takes milliseconds.
STALE_TEMP_SECONDS = 60.0
_TEMP_TEMPLATE = ".{name}.credfresh-{pid}-{token}.tmp"
_TEMP_RE = re.compile(r"\.(?P<name>.+)\.credfresh-(?P<pid>[0-9]+)-[0-9a-f]{12}\.tmp")
_FALLBACK_ERRNOS = frozenset({errno.EBUSY, errno.EXDEV})

# Indirection so tests can inject a rename failure without a bind mount.
_rename = os.rename


@dataclass(frozen=True, slots=True)
class FileSnapshot:
    """A file as read, to notice another program replacing it before our rename.

    Size and mtime alone miss a same-size rewrite inside one timestamp tick, hence the bytes
    (compared whole: cheaper than hashing them, and no OpenSSL in a forked writer). They hold
    secrets, so they stay out of the repr.
    """

    exists: bool
    dev: int = 0
    ino: int = 0
    size: int = 0
    mtime_ns: int = 0
    uid: int = -1
    gid: int = -1
    data: bytes = field(default=b"", repr=False)


_MISSING = FileSnapshot(exists=False)


class TargetChangedError(CredfileError):
    """The target changed between the caller's read and our rename (`write_failed`): merge again."""


def _emit(on_event: EventCallback | None, name: str, fields: dict[str, object]) -> None:
    if on_event is not None:
        on_event(name, fields)


def read_at(directory: DirHandle, name: str) -> tuple[bytes, FileSnapshot]:
    """Read a file in `directory` and describe it; a missing one is b"" with `exists=False`."""
    where = directory.path / name
    try:
        fd = open_regular(directory, name, os.O_RDONLY)
    except OSError as exc:
        raise failed("read", where, exc) from None
    if fd is None:
        return b"", _MISSING
    try:
        st = os.fstat(fd)
        data = read_all(fd)
    except OSError as exc:
        raise failed("read", where, exc) from None
    finally:
        os.close(fd)
    return data, FileSnapshot(
        True, st.st_dev, st.st_ino, len(data), st.st_mtime_ns, st.st_uid, st.st_gid, data
    )


def _unchanged_since(directory: DirHandle, name: str, expected: FileSnapshot) -> bool:
    try:
        st = os.stat(name, dir_fd=directory.fd, follow_symlinks=False)
    except FileNotFoundError:
        return not expected.exists
    if not expected.exists:
        return False
    if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != (
        expected.dev,
        expected.ino,
        expected.size,
        expected.mtime_ns,
    ):
        return False
    _, current = read_at(directory, name)
    return current.data == expected.data


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True


def _remove_stale_at(
    directory: DirHandle, name: str, *, locked: bool, on_event: EventCallback | None, now: float
) -> int:
    if not directory.readable:
        return 0
    removed = 0
    try:
        entries = os.listdir(directory.fd)
    except OSError:
        return 0
    for entry in entries:
        match = _TEMP_RE.fullmatch(entry)
        if match is None or match["name"] != name:
            continue
        try:
            st = os.stat(entry, dir_fd=directory.fd, follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_uid != directory.euid:
            continue
        age = now - st.st_mtime
        if (
            locked
            or age > STALE_TEMP_SECONDS
            or (age > DEAD_PID_GRACE_SECONDS and not _pid_alive(int(match["pid"])))
        ):
            try:
                os.unlink(entry, dir_fd=directory.fd)
            except OSError:
                continue
            removed += 1
            _emit(on_event, "stale_temp_removed", {"path": str(directory.path / entry)})
    return removed


def remove_stale_temps(
    path: Path,
    *,
    locked: bool = False,
    on_event: EventCallback | None = None,
    directory: DirHandle | None = None,
    clock: Clock | None = None,
) -> int:
    """Delete temp files crashed writers of `path` left (our pattern, our uid); how many.

    `locked`: the caller holds the lock every writer takes first, so all are leftovers; else
    stale past STALE_TEMP_SECONDS, or DEAD_PID_GRACE_SECONDS once the pid in the name is dead.
    """
    now = (clock or SystemClock()).now().timestamp()
    if directory is not None:
        return _remove_stale_at(directory, path.name, locked=locked, on_event=on_event, now=now)
    full = absolute(Path(path))
    try:
        handle = open_dir(full.parent, subject=path)
    except (FileNotFoundError, CredfileError):
        return 0
    with handle:
        return _remove_stale_at(handle, full.name, locked=locked, on_event=on_event, now=now)


def _create_temp(directory: DirHandle, name: str, mode: int) -> tuple[str, int]:
    for _ in range(16):
        temp = _TEMP_TEMPLATE.format(name=name, pid=os.getpid(), token=os.urandom(6).hex())
        try:
            fd = os.open(
                temp,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                mode,
                dir_fd=directory.fd,
            )
        except FileExistsError:
            continue
        except OSError as exc:
            raise failed("create a temp file in", directory.path, exc) from None
        return temp, fd
    raise CredfileError(
        f"could not create a unique temp file in {directory.path}", code="write_failed"
    )


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _prepare_temp(
    fd: int, mode: int, old: FileSnapshot, real: Path, on_event: EventCallback | None
) -> None:
    """Set mode and group on the still-empty temp file, so no secret is ever readable by others.

    Never the owner: handing the temp to the uid of the file read is how a swapped directory
    once gave a user root's keys (as root that file was checked to be root's anyway).
    """
    st = os.fstat(fd)
    if stat.S_IMODE(st.st_mode) != mode:
        # open()'s mode was cut by the umask; the file holds no byte yet.
        os.fchmod(fd, mode)
    if not old.exists or (old.uid, old.gid) == (st.st_uid, st.st_gid):
        return
    try:
        os.fchown(fd, -1, old.gid)
    except PermissionError:
        kept = False
    else:
        kept = old.uid == st.st_uid
    if not kept:
        _emit(on_event, "owner_not_kept", {"path": str(real), "uid": old.uid, "gid": old.gid})


def _fsync_dir(directory: DirHandle, on_event: EventCallback | None) -> None:
    if not directory.readable:
        return
    try:
        os.fsync(directory.fd)
    except OSError as exc:
        # The rename already happened; failing the write now would misreport it.
        _emit(on_event, "dir_fsync_failed", {"path": str(directory.path), "error": exc.strerror})


def _rewrite_in_place(
    target: Target, data: bytes, mode: int, expected: FileSnapshot | None, reason: str
) -> None:
    """Overwrite the same inode: a bind-mounted single file cannot be renamed over.

    Not atomic (a reader may see a mix, a crash leaves a torn file), but better than never
    refreshing a file a container can only reach this way. The caller's lock keeps writers out.
    """
    real = target.path
    try:
        fd = open_regular(target.directory, target.name, os.O_WRONLY)
    except OSError as exc:
        raise failed(f"rewrite in place ({reason})", real, exc) from None
    if fd is None:
        raise TargetChangedError(f"{real} was removed while writing", code="write_failed")
    try:
        st = os.fstat(fd)
        if expected is not None and (st.st_dev, st.st_ino) != (expected.dev, expected.ino):
            raise TargetChangedError(f"{real} was replaced while writing", code="write_failed")
        if stat.S_IMODE(st.st_mode) != mode:
            os.fchmod(fd, mode)
        view = memoryview(data)
        offset = 0
        while offset < len(data):
            offset += os.pwrite(fd, view[offset:], offset)
        os.ftruncate(fd, len(data))
        os.fsync(fd)
    except OSError as exc:
        raise failed(f"rewrite in place ({reason})", real, exc) from None
    finally:
        os.close(fd)


def atomic_write(  # noqa: PLR0913  the one write: the file, its bytes and documented seams
    path: Path | Target,
    data: bytes,
    *,
    mode: int = 0o600,
    expected: FileSnapshot | None = None,
    before_rename: Callable[[], None] | None = None,
    on_event: EventCallback | None = None,
    clock: Clock | None = None,
    euid: int | None = None,
) -> bool:
    """Replace `path` with `data` so readers see the old or the new file, never a mix.

    Returns False, writing nothing, when the file already holds exactly `data`. Sequence:
    `open_target` (checks for `euid`, missing directories 0700), `remove_stale_temps`, an
    O_EXCL temp file with `mode` fixed before any byte lands, the old group kept, write,
    fsync, `before_rename` (a test seam), a check that the target still matches `expected`
    (else TargetChangedError), rename, directory fsync; each step inside the one directory
    handle. A rename failing with EBUSY or EXDEV (a bind-mounted file) rewrites the inode in
    place and emits `rewritten_in_place`. On failure the temp is removed and the target
    untouched (CredfileError `write_failed` or `unsafe_path`). A Target (checked and cleared
    under the caller's lock) skips the first two steps. Only atomic on POSIX rename(2).
    """
    if isinstance(path, Target):
        return _write_at(path, data, mode, expected, before_rename, on_event)
    with open_target(path, create=True, euid=euid) as target:
        remove_stale_temps(target.path, on_event=on_event, directory=target.directory, clock=clock)
        return _write_at(target, data, mode, expected, before_rename, on_event)


def _write_at(  # noqa: PLR0913, PLR0917  atomic_write's arguments, passed on
    target: Target,
    data: bytes,
    mode: int,
    expected: FileSnapshot | None,
    before_rename: Callable[[], None] | None,
    on_event: EventCallback | None,
) -> bool:
    directory, name, real = target.directory, target.name, target.path
    old = read_at(directory, name)[1] if expected is None else expected
    if old.exists and old.data == data:
        return False
    temp, fd = _create_temp(directory, name, mode)
    try:
        try:
            _prepare_temp(fd, mode, old, real, on_event)
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if before_rename is not None:
            before_rename()
        if expected is not None and not _unchanged_since(directory, name, expected):
            raise TargetChangedError(
                f"{real} was changed by another program while credfresh wrote it",
                code="write_failed",
            )
        try:
            _rename(temp, name, src_dir_fd=directory.fd, dst_dir_fd=directory.fd)
        except OSError as exc:
            if exc.errno not in _FALLBACK_ERRNOS:
                raise
            reason = errno.errorcode.get(exc.errno or 0, "rename failed")
            _rewrite_in_place(target, data, mode, expected, reason)
            _emit(on_event, "rewritten_in_place", {"path": str(real), "reason": reason})
            _discard(directory, temp)
    except OSError as exc:
        _discard(directory, temp)
        raise failed("write", real, exc) from None
    except BaseException:
        _discard(directory, temp)
        raise
    _fsync_dir(directory, on_event)
    return True


def _discard(directory: DirHandle, temp: str) -> None:
    with suppress(OSError):
        os.unlink(temp, dir_fd=directory.fd)
