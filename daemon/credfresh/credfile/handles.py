"""Directory handles and the path checks: every file credfresh touches is reached through one.

A path is walked from `/` once per write with O_NOFOLLOW and checked on what was opened;
every later step (lock, read, temp file, rename) names files relative to that one handle.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from credfresh.context import Clock, SystemClock, process_euid
from credfresh.errors import CredfileError
from credfresh.trust import directory_problem

#: Same limit as the kernel's (ELOOP), so a symlink loop fails instead of spinning.
MAX_SYMLINKS = 40
_LOCK_POLL = 0.02


def unsafe(path: Path | str, why: str) -> CredfileError:
    return CredfileError(f"refusing to use {path}: {why}", code="unsafe_path")


def failed(what: str, path: Path | str, exc: OSError) -> CredfileError:
    reason = exc.strerror or type(exc).__name__
    return CredfileError(f"could not {what} {path}: {reason}", code="write_failed")


_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OTHER_USERS_TREE = (
    "a root credfresh does not write into a directory another user controls, such as their"
    " home: run credfresh as that user (the per-user unit) instead"
)


def absolute(path: Path) -> Path:
    # Not os.path.abspath: collapsing `x/..` before resolving `x` goes wrong when x is a link.
    return path if path.is_absolute() else Path.cwd() / path


class DirHandle:
    """One directory, opened once per write: a directory swapped above it after the walk can
    make a later step fail, never redirect it. `readable`: `fd` can list and fsync it;
    `euid`: whose rules the walk applied. `path` is for messages."""

    __slots__ = ("euid", "fd", "path", "readable", "st")

    def __init__(
        self, path: Path, fd: int, st: os.stat_result, *, readable: bool, euid: int
    ) -> None:
        self.path = path
        self.fd = fd
        self.st = st
        self.readable = readable
        self.euid = euid

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
    directory: DirHandle, next_st: os.stat_result | None, *, own: bool, subject: Path
) -> None:
    """As root, refuse a directory on the way that another user could swap things in."""
    euid = directory.euid
    if euid != 0:
        return
    problem = directory_problem(str(directory.path), directory.st, next_st, euid, own=own)
    if problem is None:
        return
    if directory.st.st_uid not in (0, euid):
        problem = f"{problem}; {_OTHER_USERS_TREE}"
    raise unsafe(subject, problem)


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
    return DirHandle(parent.path / name, fd, st, readable=True, euid=parent.euid)


def open_dir(
    directory: Path, *, create: bool = False, subject: Path | None = None, euid: int | None = None
) -> DirHandle:
    """Open `directory` by walking from `/` one component at a time with O_NOFOLLOW.

    As root (`euid`) every directory on the way must pass `trust.directory_problem` and only
    root's symlinks are followed; other users follow links as the kernel would and have no
    directory rule (a shared 0777 emptyDir is fine). With `create` missing directories are
    made 0700, else FileNotFoundError names the missing path. The file's own directory is
    `open_target`'s to check. Errors: CredfileError `unsafe_path` naming `subject`, `write_failed`.
    """
    subject = directory if subject is None else subject
    stack: list[DirHandle] = []
    try:
        fd = os.open("/", _DIR_FLAGS)
        euid = process_euid() if euid is None else euid
        stack.append(DirHandle(Path("/"), fd, os.fstat(fd), readable=False, euid=euid))
        pending = list(absolute(directory).parts[1:])
        hops = 0
        while pending:
            part = pending.pop(0)
            if part == "..":
                if len(stack) > 1:
                    stack.pop().close()
            elif part not in ("", ".") and (link := _enter(stack, part, pending, create, subject)):
                hops += 1
                if hops > MAX_SYMLINKS:
                    raise unsafe(subject, "too many levels of symbolic links")
                while link.is_absolute() and len(stack) > 1:
                    stack.pop().close()
                pending[:0] = link.parts[1:] if link.is_absolute() else link.parts
        return _listable(stack.pop())
    except OSError as exc:
        if isinstance(exc, FileNotFoundError) and not create:
            raise
        raise failed("open directory", directory, exc) from None
    finally:
        for handle in stack:
            handle.close()


def _enter(
    stack: list[DirHandle], part: str, pending: list[str], create: bool, subject: Path
) -> Path | None:
    """Push `part` of the directory on top (made if missing); a symlink's target is returned."""
    top = stack[-1]
    try:
        st = os.stat(part, dir_fd=top.fd, follow_symlinks=False)
    except FileNotFoundError:
        if not create:
            missing = Path(top.path / part, *pending)
            raise FileNotFoundError(errno.ENOENT, "No such directory", str(missing)) from None
        _check_step(top, _new_dir_stat(top.euid), own=False, subject=subject)
        stack.append(_make_dir(top, part))
        _check_step(top, stack[-1].st, own=False, subject=subject)
        return None
    if stat.S_ISLNK(st.st_mode):
        if top.euid == 0 and st.st_uid != 0:
            raise unsafe(top.path / part, f"it is a symlink owned by uid {st.st_uid}, not root")
        _check_step(top, st, own=False, subject=subject)
        return Path(os.readlink(part, dir_fd=top.fd))
    if not stat.S_ISDIR(st.st_mode):
        raise CredfileError(
            f"could not use directory {top.path / part}: something else is in the way",
            code="write_failed",
        )
    fd = os.open(part, _DIR_FLAGS, dir_fd=top.fd)
    stack.append(DirHandle(top.path / part, fd, os.fstat(fd), readable=False, euid=top.euid))
    _check_step(top, stack[-1].st, own=False, subject=subject)
    return None


def _listable(found: DirHandle) -> DirHandle:
    try:
        fd = os.open(".", _READ_DIR_FLAGS, dir_fd=found.fd)
    except OSError:  # search permission only: files can still be named in it, not listed
        return found
    found.close()
    return DirHandle(found.path, fd, os.fstat(fd), readable=True, euid=found.euid)


def lstat_at(directory: DirHandle, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=directory.fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise failed("inspect", directory.path / name, exc) from None


def _check_entry(directory: DirHandle, name: str, st: os.stat_result | None, subject: Path) -> None:
    """The file itself and, as root, its own directory (writable by root alone)."""
    if st is not None:
        _check_file(directory, name, st)
    if directory.euid == 0:
        _check_step(directory, st, own=True, subject=subject)


def _check_file(directory: DirHandle, name: str, st: os.stat_result) -> None:
    """A regular file, and root's when we are root."""
    if not stat.S_ISREG(st.st_mode):
        raise unsafe(directory.path / name, "it is not a regular file")
    if directory.euid == 0 and st.st_uid != 0:
        raise unsafe(directory.path / name, f"the file belongs to uid {st.st_uid}, not root")


def open_target(path: Path, *, create: bool = False, euid: int | None = None) -> Target:
    """Apply the ownership rules and open the directory of the real file to write.

    Our own user's symlink is written through (the link is kept); anyone else's is refused,
    or that user would choose which file we overwrite. As root the file must be root's, the
    directories above pass `open_dir`'s rule and its own directory is writable by root
    alone, so no user can swap where root's secrets land. Non-root needs no directory rule:
    the temp file is O_EXCL inside the one directory opened here. `create` and
    FileNotFoundError as in `open_dir`; errors are CredfileError `unsafe_path` or `write_failed`.
    """
    subject = Path(path)
    current = absolute(subject)
    for _ in range(MAX_SYMLINKS + 1):
        if not current.name or current.name == "..":
            raise unsafe(path, "it names a directory, not a file")
        try:
            directory = open_dir(current.parent, create=create, subject=subject, euid=euid)
        except FileNotFoundError as exc:
            missing = Path(str(exc.filename)) / current.name
            raise FileNotFoundError(errno.ENOENT, "No such directory", str(missing)) from None
        keep = False
        try:
            st = lstat_at(directory, current.name)
            if st is None or not stat.S_ISLNK(st.st_mode):
                _check_entry(directory, current.name, st, subject)
                keep = True
                return Target(directory, current.name, st)
            if st.st_uid != directory.euid:
                raise unsafe(
                    directory.path / current.name,
                    f"it is a symlink owned by uid {st.st_uid},"
                    f" not by credfresh's uid {directory.euid}",
                )
            try:
                link = os.readlink(current.name, dir_fd=directory.fd)
            except OSError as exc:
                raise failed("inspect", directory.path / current.name, exc) from None
        finally:
            if not keep:
                directory.close()
        current = directory.path / link
    raise unsafe(path, "too many levels of symbolic links")


def resolve_target(path: Path, *, euid: int | None = None) -> Path:
    """The real path `open_target` would write (symlinks followed), after the same checks."""
    try:
        with open_target(path, euid=euid) as target:
            return target.path
    except FileNotFoundError as exc:
        return Path(str(exc.filename))


def open_regular(directory: DirHandle, name: str, flags: int) -> int | None:
    """Open a file in `directory` (None when missing); OSError as is, `unsafe_path` for what
    `_check_file` refuses."""
    try:
        fd = os.open(
            name, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=directory.fd
        )
    except FileNotFoundError:
        return None
    try:
        _check_file(directory, name, os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_target(target: Target) -> bytes | None:
    """The file's bytes through its directory handle, or None; OSError is the caller's."""
    fd = open_regular(target.directory, target.name, os.O_RDONLY)
    if fd is None:
        return None
    try:
        return read_all(fd)
    finally:
        os.close(fd)


def read_file(path: Path, *, euid: int | None = None) -> bytes | None:
    """Read `path` under the same rules as a write (`open_target`); None when missing."""
    try:
        target = open_target(path, euid=euid)
    except FileNotFoundError:
        return None
    with target:
        return read_target(target)


def open_lock_at(directory: DirHandle, name: str) -> int:
    """Open (creating it 0600) a lock file in `directory`; another uid's is refused at once:
    they could hold it forever, and writing our pid to it would truncate what they chose."""
    where = directory.path / name
    try:
        fd = os.open(
            name,
            os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
            0o600,
            dir_fd=directory.fd,
        )
    except OSError as exc:
        raise failed("open lock file", where, exc) from None
    try:
        st = os.fstat(fd)
        euid = directory.euid
        if not stat.S_ISREG(st.st_mode):
            raise unsafe(where, "it is not a regular file")
        if st.st_uid != euid:
            raise unsafe(
                where,
                f"the lock file belongs to uid {st.st_uid}, not credfresh's uid {euid};"
                " credfresh does not wait on a lock another user holds",
            )
        if stat.S_IMODE(st.st_mode) != 0o600:
            os.fchmod(fd, 0o600)
    except OSError as exc:
        os.close(fd)
        raise failed("open lock file", where, exc) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _entry_dir(path: Path, *, create: bool, euid: int | None) -> DirHandle:
    """The directory handle of `path` itself (no symlink followed), with the entry's checks."""
    full = absolute(Path(path))
    try:
        directory = open_dir(full.parent, create=create, subject=Path(path), euid=euid)
    except FileNotFoundError as exc:
        raise failed("open", path, exc) from None
    try:
        _check_entry(directory, full.name, lstat_at(directory, full.name), path)
    except BaseException:
        directory.close()
        raise
    return directory


def open_lock_file(path: Path, *, create_dirs: bool = False, euid: int | None = None) -> int:
    """`open_lock_at` on `path`'s own directory, opened and checked as for a write."""
    with _entry_dir(path, create=create_dirs, euid=euid) as directory:
        return open_lock_at(directory, absolute(Path(path)).name)


@contextmanager
def file_lock(
    lock_path: Path,
    timeout: float,
    *,
    directory: DirHandle | None = None,
    clock: Clock | None = None,
    euid: int | None = None,
) -> Iterator[None]:
    """Hold an exclusive flock on `lock_path` (created 0600), waiting at most `timeout` s.

    A separate lock file: the target is replaced by rename, so a lock on it would guard an
    inode that stops being the file. With `directory` the lock is `lock_path.name` in it.
    Raises CredfileError `write_failed` on timeout, `unsafe_path` for another uid's lock file.
    """
    if directory is None:
        fd = open_lock_file(lock_path, euid=euid)
    else:
        fd = open_lock_at(directory, lock_path.name)
    monotonic = (clock or SystemClock()).monotonic
    try:
        deadline = monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                remaining = deadline - monotonic()
                if remaining <= 0:
                    raise CredfileError(
                        f"{lock_path} is held by another writer; gave up after {timeout:g} s",
                        code="write_failed",
                    ) from None
                time.sleep(min(_LOCK_POLL, remaining))
        yield
    finally:
        os.close(fd)


def read_all(fd: int) -> bytes:
    """Everything `fd` holds."""
    chunks: list[bytes] = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)
