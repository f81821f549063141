"""Crash-safe, ownership-checked file replacement: the one atomic-write helper credfresh uses."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from credfresh.errors import CredfileError

#: `on_event(name, fields)`: notices for the caller's log; these modules import no logging.
EventCallback = Callable[[str, dict[str, object]], None]

#: A temp file whose creator is dead is left alone this long, in case the pid belongs to
#: another pid namespace (two containers sharing a volume) and the write is still running.
DEAD_PID_GRACE_SECONDS = 5.0
#: Past this age a temp file is stale whoever made it: a write takes milliseconds.
STALE_TEMP_SECONDS = 60.0
#: Same limit as the kernel's (ELOOP), so a symlink loop fails instead of spinning.
MAX_SYMLINKS = 40

_TEMP_TEMPLATE = ".{name}.credfresh-{pid}-{token}.tmp"
_TEMP_RE = re.compile(r"\.(?P<name>.+)\.credfresh-(?P<pid>[0-9]+)-[0-9a-f]{12}\.tmp")
_FALLBACK_ERRNOS = frozenset({errno.EBUSY, errno.EXDEV})

# Paths whose in-place fallback was already reported: the notice is worth one log line per
# process, not one per refresh. This is a report cache only; no behaviour depends on it.
_IN_PLACE_REPORTED: set[str] = set()

# Indirection so tests can inject a rename failure without a bind mount.
_rename = os.rename


@dataclass(frozen=True, slots=True)
class FileSnapshot:
    """What a file was when it was read, to notice another program replacing it before rename.

    Size and mtime alone miss a same-size rewrite inside one timestamp tick, hence the hash.
    """

    exists: bool
    dev: int = 0
    ino: int = 0
    size: int = 0
    mtime_ns: int = 0
    uid: int = -1
    gid: int = -1
    sha256: bytes = b""


_MISSING = FileSnapshot(exists=False)


class TargetChangedError(CredfileError):
    """The target changed between the caller's read and our rename (code `write_failed`).

    Callers that merge (the credentials file) catch it, read again and merge again.
    """


def _unsafe(path: Path | str, why: str) -> CredfileError:
    return CredfileError(f"refusing to use {path}: {why}", code="unsafe_path")


def _failed(what: str, path: Path | str, exc: OSError) -> CredfileError:
    reason = exc.strerror or type(exc).__name__
    return CredfileError(f"could not {what} {path}: {reason}", code="write_failed")


def _emit(on_event: EventCallback | None, name: str, fields: dict[str, object]) -> None:
    if on_event is not None:
        on_event(name, fields)


def _absolute(path: Path) -> Path:
    # Not os.path.abspath: collapsing `x/..` before resolving `x` goes wrong when x is a link.
    return path if path.is_absolute() else Path.cwd() / path


def _resolve_dir(directory: Path, euid: int) -> Path:
    """The real path of `directory`; as root every symlink on the way must be root's own.

    A non-root process cannot be tricked into writing where its user could not anyway, so it
    resolves like realpath (system links such as /var/run stay usable). For root, a link
    planted by another user in the path would redirect a root-owned write anywhere.
    """
    if euid != 0:
        return Path(os.path.realpath(directory))
    resolved = Path("/")
    pending = list(_absolute(directory).parts[1:])
    hops = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            resolved = resolved.parent
            continue
        candidate = resolved / part
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            resolved = candidate
            continue
        if stat.S_ISLNK(st.st_mode):
            if st.st_uid != euid:
                raise _unsafe(candidate, f"it is a symlink owned by uid {st.st_uid}, not root")
            hops += 1
            if hops > MAX_SYMLINKS:
                raise _unsafe(directory, "too many levels of symbolic links")
            target = Path(os.readlink(candidate))
            if target.is_absolute():
                resolved = Path("/")
                pending = list(target.parts[1:]) + pending
            else:
                pending = list(target.parts) + pending
            continue
        resolved = candidate
    return resolved


def _nearest_existing(directory: Path) -> tuple[Path, os.stat_result]:
    current = directory
    while True:
        try:
            return current, os.stat(current)
        except FileNotFoundError:
            if current.parent == current:
                raise
            current = current.parent


def resolve_target(path: Path) -> Path:
    """Apply the ownership rules and return the real path to write (symlinks followed).

    A symlink owned by our own user is written through (the link is kept, its target is
    replaced); a symlink owned by anyone else is refused, since following it would let that
    user choose which file we overwrite. As root, the target file and its directory (or the
    nearest existing ancestor when the directory is still to be created) must belong to root
    too: root writing into another user's tree could be redirected by that user. Non-root
    needs no directory rule: a shared directory (a Kubernetes emptyDir, root 0777) is fine
    because the temp file is O_EXCL and the rename replaces a name without following it.
    Raises CredfileError `unsafe_path` naming the offending path.
    """
    euid = os.geteuid()
    current = _absolute(Path(path))
    st: os.stat_result | None = None
    for _ in range(MAX_SYMLINKS + 1):
        if not current.name:
            raise _unsafe(path, "it names a directory, not a file")
        current = _resolve_dir(current.parent, euid) / current.name
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise _failed("inspect", current, exc) from None
        if st is None or not stat.S_ISLNK(st.st_mode):
            break
        if st.st_uid != euid:
            raise _unsafe(
                current, f"it is a symlink owned by uid {st.st_uid}, not by credfresh's uid {euid}"
            )
        current = current.parent / os.readlink(current)
    else:
        raise _unsafe(path, "too many levels of symbolic links")
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise _unsafe(current, "it is not a regular file")
    if euid == 0:
        if st is not None and st.st_uid != 0:
            raise _unsafe(current, f"the file belongs to uid {st.st_uid}, not root")
        try:
            where, dir_st = _nearest_existing(current.parent)
        except OSError as exc:
            raise _failed("inspect", current.parent, exc) from None
        if dir_st.st_uid != 0:
            raise _unsafe(
                current, f"its directory {where} belongs to uid {dir_st.st_uid}, not root"
            )
    return current


def ensure_private_dir(path: Path) -> None:
    """`mkdir -p` where every directory we create is 0700 whatever the umask.

    Existing directories are left as they are: their modes are their owner's choice.
    """
    missing: list[Path] = []
    current = Path(os.path.abspath(path))
    while not current.is_dir():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            if directory.is_dir():
                continue
            raise CredfileError(
                f"could not create directory {directory}: a file is in the way",
                code="write_failed",
            ) from None
        except OSError as exc:
            raise _failed("create directory", directory, exc) from None
        # mkdir's mode is cut by the umask; the directory is still empty, so this exposes nothing.
        if stat.S_IMODE(os.stat(directory).st_mode) != 0o700:
            os.chmod(directory, 0o700)


@contextmanager
def file_lock(lock_path: Path, timeout: float, *, poll_interval: float = 0.02) -> Iterator[None]:
    """Hold an exclusive flock on `lock_path` (created 0600), waiting at most `timeout` s.

    A separate lock file, not the target: the target is replaced by rename, so a lock on it
    would guard an inode that stops being the file. Polling LOCK_NB keeps the wait bounded
    without signals or threads. Raises CredfileError `write_failed` on timeout.
    """
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise _failed("open lock file", lock_path, exc) from None
    try:
        st = os.fstat(fd)
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != 0o600:
            os.fchmod(fd, 0o600)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise CredfileError(
                        f"{lock_path} is held by another writer; gave up after {timeout:g} s",
                        code="write_failed",
                    ) from None
                time.sleep(min(poll_interval, remaining))
        yield
    finally:
        os.close(fd)


def _hash_fd(fd: int) -> tuple[bytes, bytes]:
    chunks: list[bytes] = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    data = b"".join(chunks)
    return data, hashlib.sha256(data).digest()


def read_snapshot(path: Path) -> tuple[bytes, FileSnapshot]:
    """Read a file and describe it; a missing file reads as b"" with `exists=False`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return b"", _MISSING
    except OSError as exc:
        raise _failed("read", path, exc) from None
    try:
        st = os.fstat(fd)
        data, digest = _hash_fd(fd)
    except OSError as exc:
        raise _failed("read", path, exc) from None
    finally:
        os.close(fd)
    return data, FileSnapshot(
        True, st.st_dev, st.st_ino, len(data), st.st_mtime_ns, st.st_uid, st.st_gid, digest
    )


def _unchanged_since(path: Path, expected: FileSnapshot) -> bool:
    try:
        st = os.lstat(path)
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
    _, current = read_snapshot(path)
    return current.sha256 == expected.sha256


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


def remove_stale_temps(
    path: Path, *, locked: bool = False, on_event: EventCallback | None = None
) -> int:
    """Delete temp files a crashed writer of `path` left behind; returns how many.

    Only our own pattern for this target and only regular files of our own user. With
    `locked` the caller holds the target's lock, which every credfresh writer of it takes
    before creating a temp file, so all such temps are leftovers. Otherwise a temp is stale
    when older than STALE_TEMP_SECONDS, or when its creator (the pid in its name) is dead
    and it is past DEAD_PID_GRACE_SECONDS (the pid may be from another pid namespace).
    """
    directory, name = path.parent, path.name
    removed = 0
    now = time.time()
    euid = os.geteuid()
    try:
        entries = os.listdir(directory)
    except OSError:
        return 0
    for entry in entries:
        match = _TEMP_RE.fullmatch(entry)
        if match is None or match["name"] != name:
            continue
        candidate = directory / entry
        try:
            st = os.lstat(candidate)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_uid != euid:
            continue
        age = now - st.st_mtime
        if (
            locked
            or age > STALE_TEMP_SECONDS
            or (age > DEAD_PID_GRACE_SECONDS and not _pid_alive(int(match["pid"])))
        ):
            try:
                os.unlink(candidate)
            except OSError:
                continue
            removed += 1
            _emit(on_event, "stale_temp_removed", {"path": str(candidate)})
    return removed


def _create_temp(directory: Path, name: str, mode: int) -> tuple[Path, int]:
    for _ in range(16):
        temp = directory / _TEMP_TEMPLATE.format(
            name=name, pid=os.getpid(), token=os.urandom(6).hex()
        )
        try:
            fd = os.open(
                temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode
            )
        except FileExistsError:
            continue
        except OSError as exc:
            raise _failed("create a temp file in", directory, exc) from None
        return temp, fd
    raise CredfileError(f"could not create a unique temp file in {directory}", code="write_failed")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _prepare_temp(
    fd: int, mode: int, old: FileSnapshot, real: Path, on_event: EventCallback | None
) -> None:
    """Set mode and owner on the still-empty temp file, so no secret is ever readable by others."""
    st = os.fstat(fd)
    if stat.S_IMODE(st.st_mode) != mode:
        # open()'s mode was cut by the umask; the file holds no byte yet.
        os.fchmod(fd, mode)
    if not old.exists or (old.uid, old.gid) == (st.st_uid, st.st_gid):
        return
    euid = os.geteuid()
    try:
        os.fchown(fd, old.uid if euid == 0 else -1, old.gid)
    except PermissionError:
        kept = False
    else:
        kept = euid in (0, old.uid)
    if not kept:
        _emit(on_event, "owner_not_kept", {"path": str(real), "uid": old.uid, "gid": old.gid})


def _fsync_dir(directory: Path, on_event: EventCallback | None) -> None:
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError as exc:
        # The rename already happened; failing the write now would misreport it.
        _emit(on_event, "dir_fsync_failed", {"path": str(directory), "error": exc.strerror})
    finally:
        os.close(dfd)


def _rewrite_in_place(
    real: Path, data: bytes, mode: int, expected: FileSnapshot | None, reason: str
) -> None:
    """Overwrite the same inode: a bind-mounted single file cannot be renamed over.

    Not atomic: a reader may see a mix for an instant, and a crash mid-write leaves a torn
    file. It is still better than never refreshing a file the container can only reach this
    way. Whatever lock the caller holds keeps other credfresh writers out.
    """
    try:
        fd = os.open(real, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise _failed(f"rewrite in place ({reason})", real, exc) from None
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
        raise _failed(f"rewrite in place ({reason})", real, exc) from None
    finally:
        os.close(fd)


def atomic_write(
    path: Path,
    data: bytes,
    *,
    mode: int = 0o600,
    expected: FileSnapshot | None = None,
    before_rename: Callable[[], None] | None = None,
    on_event: EventCallback | None = None,
) -> bool:
    """Replace `path` with `data` so readers see the old or the new file, never a mix.

    Returns False, writing nothing, when the file already holds exactly `data`.

    Sequence: resolve and check ownership (see `resolve_target`), create missing parent
    directories 0700, remove stale temp files, create `.<name>.credfresh-<pid>-<random>.tmp`
    in the same directory with O_CREAT|O_EXCL and `mode` (fixed before any byte lands, so
    the umask cannot widen or narrow it), keep the old file's owner/group (root) or group
    (others, when a member), write, fsync, run `before_rename` (a test seam), check that the
    target still matches `expected` (raises TargetChangedError otherwise), rename, fsync the
    directory. When the rename fails with EBUSY or EXDEV (a bind-mounted single file) the
    same inode is rewritten in place instead, reported once per path through `on_event`
    as `rewritten_in_place`. On any failure the temp file is removed and the target is
    untouched; errors are CredfileError `write_failed` or `unsafe_path`.

    Only atomic on POSIX file systems with rename(2); the rename is not followed by an
    ownership re-check, so a hostile user racing renames in an ancestor directory they own
    is out of scope (the checks refuse such trees for root).
    """
    real = resolve_target(path)
    ensure_private_dir(real.parent)
    remove_stale_temps(real, on_event=on_event)
    digest = hashlib.sha256(data).digest()
    if expected is None:
        _, old = read_snapshot(real)
    else:
        old = expected
    if old.exists and old.sha256 == digest:
        return False
    temp, fd = _create_temp(real.parent, real.name, mode)
    try:
        try:
            _prepare_temp(fd, mode, old, real, on_event)
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if before_rename is not None:
            before_rename()
        if expected is not None and not _unchanged_since(real, expected):
            raise TargetChangedError(
                f"{real} was changed by another program while credfresh wrote it",
                code="write_failed",
            )
        try:
            _rename(temp, real)
        except OSError as exc:
            if exc.errno not in _FALLBACK_ERRNOS:
                raise
            reason = errno.errorcode.get(exc.errno or 0, "rename failed")
            _rewrite_in_place(real, data, mode, expected, reason)
            if str(real) not in _IN_PLACE_REPORTED:
                _IN_PLACE_REPORTED.add(str(real))
                _emit(on_event, "rewritten_in_place", {"path": str(real), "reason": reason})
            _discard(temp)
    except OSError as exc:
        _discard(temp)
        raise _failed("write", real, exc) from None
    except BaseException:
        _discard(temp)
        raise
    _fsync_dir(real.parent, on_event)
    return True


def _discard(temp: Path) -> None:
    with suppress(OSError):
        os.unlink(temp)
