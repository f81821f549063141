"""Who may steer a root daemon: the one rule for trusted files and the directories above them.

A root process that reads instructions (a config, a policy, a command to run) or writes
secrets must not let another user rename something into its path. So every directory on the
way, and the file itself, must belong to root (or the daemon's own uid) and be writable by
nobody else. The one exception is a sticky directory such as /tmp: others can create entries
there but not rename or remove ours, so it is fine when the next component on the path is
owned by root (or us). A world-writable directory is never accepted as a file's own directory.
These are pure functions of `stat` results, so they can be tested without a real tree.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

_GROUP_OTHER_WRITE = stat.S_IWGRP | stat.S_IWOTH


def _trusted_owner(uid: int, euid: int) -> bool:
    return uid in (0, euid)


def directory_problem(
    directory: str, st: os.stat_result, next_st: os.stat_result | None, euid: int, *, own: bool
) -> str | None:
    """Why `directory` (stat `st`) lets someone else swap the path under it, or None.

    `next_st` is the stat of the next component on the path (None when it does not exist
    yet); `own` says `directory` is the file's own directory, where the sticky exception
    does not apply.
    """
    if not _trusted_owner(st.st_uid, euid):
        return f"directory {directory} is owned by uid {st.st_uid}: run `chown root {directory}`"
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


def path_problems(path: Path, euid: int) -> list[str]:
    """Every reason another user could change what `path` holds: the file and each ancestor.

    Symlinks on the way are followed (through `realpath`) and each link itself must be
    trusted too, since whoever owns a link chooses where it points. A missing file is not a
    problem here: the caller reports it where it reads it.
    """
    problems: list[str] = []
    absolute = Path(os.path.abspath(path))
    for link in _links_on(absolute):
        st = os.lstat(link)
        if not _trusted_owner(st.st_uid, euid):
            problems.append(f"{link} is a symlink owned by uid {st.st_uid}, not root")
    real = Path(os.path.realpath(absolute))
    try:
        file_st: os.stat_result | None = os.stat(real)
    except OSError:
        file_st = None
    if file_st is not None and (found := file_problem(str(real), file_st, euid)):
        problems.append(found)
    next_st = file_st
    for index, directory in enumerate(real.parents):
        try:
            st = os.stat(directory)
        except OSError:
            next_st = None
            continue
        found = directory_problem(str(directory), st, next_st, euid, own=index == 0)
        if found:
            problems.append(found)
        next_st = st
    return problems


def _links_on(path: Path) -> list[Path]:
    links: list[Path] = []
    current = Path("/")
    for part in path.parts[1:]:
        current = current / part
        try:
            if stat.S_ISLNK(os.lstat(current).st_mode):
                links.append(current)
                current = Path(os.path.realpath(current))
        except OSError:
            break
    return links
