"""Static copies: what the AWS files a copy was read from held, so a change refetches it.

A copied set without an expiry (long-term keys) is never due by time; the engine's wake-up
asks whether the AWS config or shared credentials file botocore read for it has changed
since. credfresh's own sections are left out of the digest: they change at every refresh
of any profile and are never a copy's source (`copy_loop`).
"""

from __future__ import annotations

import configparser
import hashlib
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from credfresh.credfile.format import OWNER_KEY

#: The digest of a missing or unreadable file.
ABSENT = "absent"


def text_digest(data: bytes) -> str:
    """The digest of one AWS file's sections but credfresh's (pure); a file configparser
    cannot read is digested whole, so any edit of it still counts."""
    parser = configparser.RawConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(data.decode("utf-8"))
    except (configparser.Error, UnicodeDecodeError):
        return "raw:" + hashlib.sha256(data).hexdigest()
    digest = hashlib.sha256()
    for section in sorted(parser.sections()):
        if parser.has_option(section, OWNER_KEY):
            continue
        items = sorted(parser.items(section, raw=True))
        digest.update(repr((section, items)).encode("utf-8"))
    defaults = sorted(parser.defaults().items())
    digest.update(repr(("DEFAULT", defaults)).encode("utf-8"))
    return "ini:" + digest.hexdigest()


def files_digest(contents: Mapping[str, bytes | None]) -> tuple[tuple[str, str], ...]:
    """Each path with the digest of what it held (None: absent), in path order (pure)."""
    return tuple(
        (path, ABSENT if data is None else text_digest(data))
        for path, data in sorted(contents.items())
    )


def expand(path: str, home: Path | None) -> Path:
    """A botocore file setting as botocore opens it: `~/` is the user's home (from
    `Context`, as only it reads the environment)."""
    if home is not None and (path == "~" or path.startswith("~/")):
        return home / path[2:]
    return Path(path)


def read_files(paths: Sequence[str], home: Path | None) -> dict[str, bytes | None]:
    """The bytes of each file (None when it is missing or unreadable)."""
    found: dict[str, bytes | None] = {}
    for path in paths:
        try:
            found[path] = expand(path, home).read_bytes()
        except OSError:
            found[path] = None
    return found


class FileDigests:
    """Each file's `text_digest`, parsed again only when its stat says it changed: every
    static copy asks at every wake-up, and one file is credfresh's own, rewritten often."""

    def __init__(self, home: Path | None) -> None:
        self._home = home
        self._lock = threading.Lock()
        self._known: dict[str, tuple[tuple[int, ...], str]] = {}

    def of(self, paths: Sequence[str]) -> tuple[tuple[str, str], ...]:
        return tuple((path, self._one(path)) for path in sorted(paths))

    def _one(self, path: str) -> str:
        where = expand(path, self._home)
        try:
            st = os.stat(where)
        except OSError:
            return ABSENT
        stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        with self._lock:
            cached = self._known.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        found = read_files([path], self._home)[path]
        digest = ABSENT if found is None else text_digest(found)
        with self._lock:
            self._known[path] = (stamp, digest)
        return digest
