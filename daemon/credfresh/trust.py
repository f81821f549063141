"""Who may steer a root daemon: the one rule for trusted files and the directories above them.

Every directory on the way and the file itself must be root's (or the daemon's uid) and
writable by nobody else; a sticky directory (/tmp) passes when the next component is ours,
never as a file's own directory. Pure functions of `stat` results; `path_problems` walks a path.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final

_GROUP_OTHER_WRITE: Final = stat.S_IWGRP | stat.S_IWOTH
#: Like the kernel's limit: more links than this on one path is a loop.
MAX_SYMLINKS: Final = 40


def _trusted_owner(uid: int, euid: int) -> bool:
    return uid in (0, euid)


def _owner_name(euid: int) -> str:
    return "root" if euid == 0 else str(euid)


def directory_problem(
    directory: str, st: os.stat_result, next_st: os.stat_result | None, euid: int, *, own: bool
) -> str | None:
    """Why `directory` (stat `st`) lets someone else swap the path under it, or None.

    `next_st` is the lstat of the next component on the path (None when it does not exist
    yet); `own` says `directory` is the file's own directory, where the sticky exception
    does not apply.
    """
    if not _trusted_owner(st.st_uid, euid):
        return (
            f"directory {directory} is owned by uid {st.st_uid}: "
            f"run `chown {_owner_name(euid)} {directory}`"
        )
    if not st.st_mode & _GROUP_OTHER_WRITE:
        return None
    sticky = bool(st.st_mode & stat.S_ISVTX)
    if sticky and not own and next_st is not None and _trusted_owner(next_st.st_uid, euid):
        return None
    return (
        f"directory {directory} is writable by group or others: run `chmod go-w {directory}`"
        " or move the file to a directory only root can write"
    )


def file_problem(path: str, st: os.stat_result, euid: int) -> str | None:
    """Why the file itself could be edited by someone else, or None."""
    if not _trusted_owner(st.st_uid, euid):
        return f"{path} is owned by uid {st.st_uid}, not by uid {euid}: run `chown {euid} {path}`"
    if st.st_mode & _GROUP_OTHER_WRITE:
        return f"{path} is writable by group or others: run `chmod go-w {path}`"
    return None


def link_problem(link: str, st: os.stat_result, euid: int) -> str | None:
    """Why a symlink on the path is not ours to follow: whoever owns it chooses its target."""
    if _trusted_owner(st.st_uid, euid):
        return None
    return (
        f"{link} is a symlink owned by uid {st.st_uid}: replace it with one owned by "
        f"{_owner_name(euid)} (`ln -sfn TARGET {link}` as {_owner_name(euid)})"
    )


def secret_file_problem(path: str, st: os.stat_result) -> str | None:
    """Why a file that holds a secret is readable by every user, or None."""
    if st.st_mode & stat.S_IROTH:
        return f"{path} is readable by others: run `chmod o-r {path}`"
    return None


def path_problems(path: Path, euid: int) -> list[str]:
    """Every reason another user could change what `path` holds: the file and each ancestor.

    Walked as the kernel would, links followed: each directory judged with the entry below
    it (for the sticky exception), each link and its directory trusted too. A missing file is
    the caller's to report, but the directory it would appear in must still be safe.
    """
    problems: list[str] = []

    def note(found: str | None) -> None:
        if found and found not in problems:
            problems.append(found)

    pending = list(reversed(Path(os.path.abspath(path)).parts[1:]))
    current = Path("/")
    links = 0
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            current = current.parent
            continue
        candidate = current / part
        try:
            lst = os.lstat(candidate)
        except OSError:
            note(_directory_problem_at(current, None, euid, own=True))
            return problems
        is_link = stat.S_ISLNK(lst.st_mode)
        last = not pending
        note(_directory_problem_at(current, lst, euid, own=last and not is_link))
        if is_link:
            links += 1
            note(link_problem(str(candidate), lst, euid))
            if links > MAX_SYMLINKS:
                problems.append(f"{path}: too many levels of symbolic links")
                return problems
            try:
                target = Path(os.readlink(candidate))
            except OSError:
                return problems
            if target.is_absolute():
                current = Path("/")
            pending.extend(reversed(target.parts[1:] if target.is_absolute() else target.parts))
            continue
        if last:
            note(file_problem(str(candidate), lst, euid))
        elif not stat.S_ISDIR(lst.st_mode):
            return problems
        current = candidate
    return problems


def _directory_problem_at(
    directory: Path, next_st: os.stat_result | None, euid: int, *, own: bool
) -> str | None:
    try:
        st = os.stat(directory)
    except OSError:
        return None
    return directory_problem(str(directory), st, next_st, euid, own=own)


def link_escape(path: Path) -> str | None:
    """Why `path` resolves to a file outside its own directory (a symlink out), or None.

    A Kubernetes Secret's `token -> ..data/token` stays inside; `token -> /etc/shadow` or
    `token -> ../other/file` does not, and credfresh does not follow it.
    """
    absolute = Path(os.path.abspath(path))
    home = Path(os.path.realpath(absolute.parent))
    real = Path(os.path.realpath(absolute))
    if real.parent == home or home in real.parents:
        return None
    return (
        f"{absolute} is a symlink to {real}, outside its directory {home}: "
        f"put the file itself in {home}"
    )


def token_file_problems(path: Path, euid: int) -> list[str]:
    """A token file: a trusted path, inside its own directory, not readable by others."""
    problems = path_problems(path, euid)
    escape = link_escape(path)
    if escape:
        problems.append(escape)
        return problems
    try:
        st = os.stat(path)
    except OSError:
        return problems
    found = secret_file_problem(str(os.path.realpath(path)), st)
    if found:
        problems.append(found)
    return problems


def command_problems(argv0: str, search_path: str, euid: int) -> list[str]:
    """The program an alert command runs, and, for a bare name, every PATH directory looked
    in until it is found: another user who can add a file there picks what root runs."""
    if "/" in argv0:
        return path_problems(Path(argv0), euid)
    problems: list[str] = []
    for entry in (Path(os.path.abspath(each or ".")) for each in search_path.split(os.pathsep)):
        candidate = entry / argv0
        problems.extend(p for p in path_problems(entry, euid) if p not in problems)
        if candidate.is_file() and os.access(candidate, os.X_OK):
            problems.extend(p for p in path_problems(candidate, euid) if p not in problems)
            return problems
    return problems
