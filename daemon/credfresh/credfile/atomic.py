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
from credfresh.trust import directory_problem

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


_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OTHER_USERS_TREE = (
    "a root credfresh does not write into a directory another user controls, such as their"
    " home: run credfresh as that user (the per-user unit) instead"
)


def _absolute(path: Path) -> Path:
    # Not os.path.abspath: collapsing `x/..` before resolving `x` goes wrong when x is a link.
    return path if path.is_absolute() else Path.cwd() / path


class DirHandle:
    """One directory, opened once per write: every later step names files relative to it.

    Files are opened, checked, renamed and removed with `dir_fd=fd`, so a directory renamed
    or swapped above this one after the walk can only make a step fail, never send it into
    another directory. `path` is how it was reached (for messages), `st` its fstat, and
    `readable` says `fd` can list and fsync the directory (not only name files in it).
    """

    __slots__ = ("fd", "path", "readable", "st")

    def __init__(self, path: Path, fd: int, st: os.stat_result, *, readable: bool) -> None:
        self.path = path
        self.fd = fd
        self.st = st
        self.readable = readable

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> DirHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Target:
    """A file named inside one open directory: what a write locks, reads, checks and replaces."""

    __slots__ = ("directory", "name", "st")

    def __init__(self, directory: DirHandle, name: str, st: os.stat_result | None) -> None:
        self.directory = directory
        self.name = name
        self.st = st

    @property
    def path(self) -> Path:
        return self.directory.path / self.name

    def close(self) -> None:
        self.directory.close()

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _new_dir_stat(euid: int) -> os.stat_result:
    """What a directory credfresh is about to create will be (ours, 0700), for the trust rule."""
    return os.stat_result((stat.S_IFDIR | 0o700, 0, 0, 2, euid, os.getegid(), 0, 0, 0, 0))


def _check_step(
    directory: DirHandle, next_st: os.stat_result | None, euid: int, *, own: bool, subject: Path
) -> None:
    """As root, refuse a directory on the way that another user could swap things in."""
    if euid != 0:
        return
    problem = directory_problem(str(directory.path), directory.st, next_st, euid, own=own)
    if problem is None:
        return
    if directory.st.st_uid not in (0, euid):
        problem = f"{problem}; {_OTHER_USERS_TREE}"
    raise _unsafe(subject, problem)


def _make_dir(parent: DirHandle, name: str) -> DirHandle:
    """mkdir 0700 whatever the umask; a directory that appeared meanwhile is used as found."""
    created = True
    try:
        os.mkdir(name, 0o700, dir_fd=parent.fd)
    except FileExistsError:
        created = False
    fd = os.open(name, _READ_DIR_FLAGS, dir_fd=parent.fd)
    try:
        st = os.fstat(fd)
        if created and stat.S_IMODE(st.st_mode) != 0o700:
            # mkdir's mode is cut by the umask; the directory is still empty.
            os.fchmod(fd, 0o700)
            st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    return DirHandle(parent.path / name, fd, st, readable=True)


def open_dir(directory: Path, *, create: bool = False, subject: Path | None = None) -> DirHandle:
    """Open `directory` by walking from `/` one component at a time with O_NOFOLLOW.

    Each component is opened relative to the one before, so what was checked is what is
    used. As root every directory on the way must pass `trust.directory_problem` (checked
    on the fstat of the open directory) and a symlink is followed only when root owns it
    (the walk restarts on its target, at most MAX_SYMLINKS times); other users follow links
    as the kernel would and have no directory rule (a shared 0777 emptyDir is fine). With
    `create` missing directories are made 0700, after checking the one they go in;
    without it a missing one raises FileNotFoundError naming the path. The file's own
    directory is not checked here (that needs the file: see `open_target`). Errors are
    CredfileError `unsafe_path` naming `subject` (default `directory`) or `write_failed`.
    """
    euid = os.geteuid()
    subject = directory if subject is None else subject
    stack: list[DirHandle] = []
    try:
        fd = os.open("/", _DIR_FLAGS)
        stack.append(DirHandle(Path("/"), fd, os.fstat(fd), readable=False))
        pending = list(_absolute(directory).parts[1:])
        hops = 0
        while pending:
            part = pending.pop(0)
            top = stack[-1]
            if part in ("", "."):
                continue
            if part == "..":
                if len(stack) > 1:
                    stack.pop().close()
                continue
            try:
                st = os.stat(part, dir_fd=top.fd, follow_symlinks=False)
            except FileNotFoundError:
                if not create:
                    missing = Path(top.path / part, *pending)
                    raise FileNotFoundError(
                        errno.ENOENT, "No such directory", str(missing)
                    ) from None
                _check_step(top, _new_dir_stat(euid), euid, own=False, subject=subject)
                stack.append(_make_dir(top, part))
                _check_step(top, stack[-1].st, euid, own=False, subject=subject)
                continue
            if stat.S_ISLNK(st.st_mode):
                if euid == 0 and st.st_uid != euid:
                    raise _unsafe(
                        top.path / part, f"it is a symlink owned by uid {st.st_uid}, not root"
                    )
                _check_step(top, st, euid, own=False, subject=subject)
                hops += 1
                if hops > MAX_SYMLINKS:
                    raise _unsafe(subject, "too many levels of symbolic links")
                target = Path(os.readlink(part, dir_fd=top.fd))
                if target.is_absolute():
                    while len(stack) > 1:
                        stack.pop().close()
                    pending = list(target.parts[1:]) + pending
                else:
                    pending = list(target.parts) + pending
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise CredfileError(
                    f"could not use directory {top.path / part}: something else is in the way",
                    code="write_failed",
                )
            fd = os.open(part, _DIR_FLAGS, dir_fd=top.fd)
            stack.append(DirHandle(top.path / part, fd, os.fstat(fd), readable=False))
            _check_step(top, stack[-1].st, euid, own=False, subject=subject)
        found = stack.pop()
        try:
            fd = os.open(".", _READ_DIR_FLAGS, dir_fd=found.fd)
        except OSError:
            # Search permission only: files can still be named in it, just not listed.
            return found
        found.close()
        return DirHandle(found.path, fd, os.fstat(fd), readable=True)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError) and not create:
            raise
        raise _failed("open directory", directory, exc) from None
    finally:
        for handle in stack:
            handle.close()


def _lstat_at(directory: DirHandle, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=directory.fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _failed("inspect", directory.path / name, exc) from None


def _check_entry(
    directory: DirHandle, name: str, st: os.stat_result | None, euid: int, subject: Path
) -> None:
    """The file itself and, as root, its own directory (writable by root alone)."""
    where = directory.path / name
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise _unsafe(where, "it is not a regular file")
    if euid != 0:
        return
    if st is not None and st.st_uid != euid:
        raise _unsafe(where, f"the file belongs to uid {st.st_uid}, not root")
    _check_step(directory, st, euid, own=True, subject=subject)


def open_target(path: Path, *, create: bool = False) -> Target:
    """Apply the ownership rules and open the directory of the real file to write.

    A symlink owned by our own user is written through (the link is kept, its target is
    replaced); a symlink owned by anyone else is refused, since following it would let that
    user choose which file we overwrite. As root the file must be root's, every directory
    above it must pass the trust rule (see `open_dir`) and its own directory must be
    writable by root alone: a user who can rename a directory on the way could otherwise
    swap where root's secrets land. Non-root needs no directory rule: a shared directory
    (a Kubernetes emptyDir, root 0777) is fine because the temp file is O_EXCL and every
    step works in the one directory opened here. With `create` missing directories are
    made 0700; without it a missing directory raises FileNotFoundError naming the file.
    Raises CredfileError `unsafe_path` naming the offending path, or `write_failed`.
    """
    euid = os.geteuid()
    subject = Path(path)
    current = _absolute(subject)
    for _ in range(MAX_SYMLINKS + 1):
        if not current.name or current.name == "..":
            raise _unsafe(path, "it names a directory, not a file")
        try:
            directory = open_dir(current.parent, create=create, subject=subject)
        except FileNotFoundError as exc:
            missing = Path(str(exc.filename)) / current.name
            raise FileNotFoundError(errno.ENOENT, "No such directory", str(missing)) from None
        keep = False
        try:
            st = _lstat_at(directory, current.name)
            if st is None or not stat.S_ISLNK(st.st_mode):
                _check_entry(directory, current.name, st, euid, subject)
                keep = True
                return Target(directory, current.name, st)
            if st.st_uid != euid:
                raise _unsafe(
                    directory.path / current.name,
                    f"it is a symlink owned by uid {st.st_uid}, not by credfresh's uid {euid}",
                )
            try:
                link = os.readlink(current.name, dir_fd=directory.fd)
            except OSError as exc:
                raise _failed("inspect", directory.path / current.name, exc) from None
        finally:
            if not keep:
                directory.close()
        current = directory.path / link
    raise _unsafe(path, "too many levels of symbolic links")


def resolve_target(path: Path) -> Path:
    """The real path `open_target` would write (symlinks followed), after the same checks."""
    try:
        with open_target(path) as target:
            return target.path
    except FileNotFoundError as exc:
        return Path(str(exc.filename))


def _open_regular(directory: DirHandle, name: str, flags: int) -> int | None:
    """Open a file in `directory` (None when missing), checked on what was opened.

    Raises OSError as is, CredfileError `unsafe_path` for a non-regular file or, as root,
    one that is not root's.
    """
    try:
        fd = os.open(
            name, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=directory.fd
        )
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _unsafe(directory.path / name, "it is not a regular file")
        euid = os.geteuid()
        if euid == 0 and st.st_uid != euid:
            raise _unsafe(directory.path / name, f"the file belongs to uid {st.st_uid}, not root")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_target(target: Target) -> bytes | None:
    """The file's bytes through its directory handle, or None when it does not exist.

    Raises OSError as is (callers choose the error code) and CredfileError `unsafe_path`.
    """
    fd = _open_regular(target.directory, target.name, os.O_RDONLY)
    if fd is None:
        return None
    try:
        return _hash_fd(fd)[0]
    finally:
        os.close(fd)


def read_file(path: Path) -> bytes | None:
    """Read `path` under the same rules as a write (`open_target`); None when missing."""
    try:
        target = open_target(path)
    except FileNotFoundError:
        return None
    with target:
        return read_target(target)


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


def open_lock_at(directory: DirHandle, name: str) -> int:
    """Open (creating it 0600) a lock file in `directory`; one another uid owns is refused.

    Refused at once rather than waited on: another user's lock file is theirs to hold
    forever, and opening it to write our pid would let them choose what we truncate.
    """
    where = directory.path / name
    try:
        fd = os.open(
            name,
            os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
            0o600,
            dir_fd=directory.fd,
        )
    except OSError as exc:
        raise _failed("open lock file", where, exc) from None
    try:
        st = os.fstat(fd)
        euid = os.geteuid()
        if not stat.S_ISREG(st.st_mode):
            raise _unsafe(where, "it is not a regular file")
        if st.st_uid != euid:
            raise _unsafe(
                where,
                f"the lock file belongs to uid {st.st_uid}, not credfresh's uid {euid};"
                " credfresh does not wait on a lock another user holds",
            )
        if stat.S_IMODE(st.st_mode) != 0o600:
            os.fchmod(fd, 0o600)
    except OSError as exc:
        os.close(fd)
        raise _failed("open lock file", where, exc) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _entry_dir(path: Path, *, create: bool) -> DirHandle:
    """The directory handle of `path` itself (no symlink followed), with the entry's checks."""
    absolute = _absolute(Path(path))
    try:
        directory = open_dir(absolute.parent, create=create, subject=Path(path))
    except FileNotFoundError as exc:
        raise _failed("open", path, exc) from None
    try:
        _check_entry(
            directory, absolute.name, _lstat_at(directory, absolute.name), os.geteuid(), path
        )
    except BaseException:
        directory.close()
        raise
    return directory


def open_lock_file(path: Path, *, create_dirs: bool = False) -> int:
    """`open_lock_at` on `path`'s own directory, opened and checked as for a write."""
    with _entry_dir(path, create=create_dirs) as directory:
        return open_lock_at(directory, _absolute(Path(path)).name)


@contextmanager
def file_lock(
    lock_path: Path,
    timeout: float,
    *,
    poll_interval: float = 0.02,
    directory: DirHandle | None = None,
) -> Iterator[None]:
    """Hold an exclusive flock on `lock_path` (created 0600), waiting at most `timeout` s.

    A separate lock file, not the target: the target is replaced by rename, so a lock on it
    would guard an inode that stops being the file. Polling LOCK_NB keeps the wait bounded
    without signals or threads. With `directory` the lock is `lock_path.name` inside that
    handle. Raises CredfileError `write_failed` on timeout, `unsafe_path` for a lock file
    of another uid.
    """
    fd = open_lock_file(lock_path) if directory is None else open_lock_at(directory, lock_path.name)
    try:
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


def _read_at(directory: DirHandle, name: str) -> tuple[bytes, FileSnapshot]:
    where = directory.path / name
    try:
        fd = _open_regular(directory, name, os.O_RDONLY)
    except OSError as exc:
        raise _failed("read", where, exc) from None
    if fd is None:
        return b"", _MISSING
    try:
        st = os.fstat(fd)
        data, digest = _hash_fd(fd)
    except OSError as exc:
        raise _failed("read", where, exc) from None
    finally:
        os.close(fd)
    return data, FileSnapshot(
        True, st.st_dev, st.st_ino, len(data), st.st_mtime_ns, st.st_uid, st.st_gid, digest
    )


def read_snapshot(path: Path, *, directory: DirHandle | None = None) -> tuple[bytes, FileSnapshot]:
    """Read a file and describe it; a missing file reads as b"" with `exists=False`.

    With `directory` the file is `path.name` inside that handle.
    """
    if directory is not None:
        return _read_at(directory, path.name)
    absolute = _absolute(Path(path))
    try:
        handle = open_dir(absolute.parent, subject=path)
    except FileNotFoundError:
        return b"", _MISSING
    with handle:
        return _read_at(handle, absolute.name)


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
    _, current = _read_at(directory, name)
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


def _remove_stale_at(
    directory: DirHandle, name: str, *, locked: bool, on_event: EventCallback | None
) -> int:
    if not directory.readable:
        return 0
    removed = 0
    now = time.time()
    euid = os.geteuid()
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
        if not stat.S_ISREG(st.st_mode) or st.st_uid != euid:
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
) -> int:
    """Delete temp files a crashed writer of `path` left behind; returns how many.

    Only our own pattern for this target and only regular files of our own user, listed
    and removed inside one directory handle (`directory`, else `path`'s directory). With
    `locked` the caller holds the target's lock, which every credfresh writer of it takes
    before creating a temp file, so all such temps are leftovers. Otherwise a temp is stale
    when older than STALE_TEMP_SECONDS, or when its creator (the pid in its name) is dead
    and it is past DEAD_PID_GRACE_SECONDS (the pid may be from another pid namespace).
    """
    if directory is not None:
        return _remove_stale_at(directory, path.name, locked=locked, on_event=on_event)
    absolute = _absolute(Path(path))
    try:
        handle = open_dir(absolute.parent, subject=path)
    except (FileNotFoundError, CredfileError):
        return 0
    with handle:
        return _remove_stale_at(handle, absolute.name, locked=locked, on_event=on_event)


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
            raise _failed("create a temp file in", directory.path, exc) from None
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

    The owner is never changed: the temp is ours, and as root the file it replaces was
    checked (through the same directory handle) to be root's too. Handing the temp to the
    uid of whatever file was read is how a swapped directory once gave a user root's keys.
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

    Not atomic: a reader may see a mix for an instant, and a crash mid-write leaves a torn
    file. It is still better than never refreshing a file the container can only reach this
    way. Whatever lock the caller holds keeps other credfresh writers out.
    """
    real = target.path
    try:
        fd = _open_regular(target.directory, target.name, os.O_WRONLY)
    except OSError as exc:
        raise _failed(f"rewrite in place ({reason})", real, exc) from None
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
        raise _failed(f"rewrite in place ({reason})", real, exc) from None
    finally:
        os.close(fd)


def atomic_write(
    path: Path | Target,
    data: bytes,
    *,
    mode: int = 0o600,
    expected: FileSnapshot | None = None,
    before_rename: Callable[[], None] | None = None,
    on_event: EventCallback | None = None,
) -> bool:
    """Replace `path` with `data` so readers see the old or the new file, never a mix.

    Returns False, writing nothing, when the file already holds exactly `data`.

    Sequence: `open_target` (ownership and trust checks, missing directories made 0700,
    one directory handle; a caller that holds a Target passes it instead of a path), remove
    stale temp files, create `.<name>.credfresh-<pid>-<random>.tmp` in that directory with
    O_CREAT|O_EXCL and `mode` (fixed before any byte lands, so the umask cannot widen or
    narrow it), keep the old file's group, write, fsync, run `before_rename` (a test seam),
    check that the target still matches `expected` (raises TargetChangedError otherwise),
    rename, fsync the directory. Every step names files relative to the one directory
    handle, so a directory swapped meanwhile can make the write fail but never land
    elsewhere. When the rename fails with EBUSY or EXDEV (a bind-mounted single file) the
    same inode is rewritten in place instead, reported once per path through `on_event`
    as `rewritten_in_place`. On any failure the temp file is removed and the target is
    untouched; errors are CredfileError `write_failed` or `unsafe_path`.

    Only atomic on POSIX file systems with rename(2).
    """
    if isinstance(path, Target):
        return _write_at(
            path, data, mode=mode, expected=expected, before_rename=before_rename, on_event=on_event
        )
    with open_target(path, create=True) as target:
        return _write_at(
            target,
            data,
            mode=mode,
            expected=expected,
            before_rename=before_rename,
            on_event=on_event,
        )


def _write_at(
    target: Target,
    data: bytes,
    *,
    mode: int,
    expected: FileSnapshot | None,
    before_rename: Callable[[], None] | None,
    on_event: EventCallback | None,
) -> bool:
    directory, name, real = target.directory, target.name, target.path
    _remove_stale_at(directory, name, locked=False, on_event=on_event)
    digest = hashlib.sha256(data).digest()
    old = _read_at(directory, name)[1] if expected is None else expected
    if old.exists and old.sha256 == digest:
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
            if str(real) not in _IN_PLACE_REPORTED:
                _IN_PLACE_REPORTED.add(str(real))
                _emit(on_event, "rewritten_in_place", {"path": str(real), "reason": reason})
            _discard(directory, temp)
    except OSError as exc:
        _discard(directory, temp)
        raise _failed("write", real, exc) from None
    except BaseException:
        _discard(directory, temp)
        raise
    _fsync_dir(directory, on_event)
    return True


def _discard(directory: DirHandle, temp: str) -> None:
    with suppress(OSError):
        os.unlink(temp, dir_fd=directory.fd)
