"""The one seam to the outside world: streams, environment, clock, user and home (tests pass
a fake). No dataclasses, pathlib only for `home`: `credential-process` pays for every import."""

from __future__ import annotations

import os
import re
import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path
    from typing import TextIO

_VARIABLE = re.compile(r"\$(\w+|\{[^}]*\})", re.ASCII)  # posixpath.expandvars's


class Clock(Protocol):
    """Wall time for expiry arithmetic, monotonic time for intervals and deadlines."""

    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...


class SystemClock:
    """The real clocks."""

    __slots__ = ()

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


class Context:
    """What a command or the daemon may know about the process it runs in."""

    __slots__ = ("_home", "clock", "environ", "err", "euid", "out")

    def __init__(  # noqa: PLR0913 - the seam: each injected part is its own keyword
        self,
        out: TextIO,
        err: TextIO,
        environ: Mapping[str, str],
        *,
        clock: Clock | None = None,
        euid: int | None = None,
        home: Path | None = None,
    ) -> None:
        self.out = out
        self.err = err
        self.environ = environ
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.euid = process_euid() if euid is None else euid
        self._home = home

    @property
    def home(self) -> Path:
        """`$HOME` as the SDKs read it; the password database only when it is unset."""
        if self._home is None:
            from pathlib import Path

            home = self.environ.get("HOME")
            self._home = Path(home) if home else Path.home()
        return self._home

    @classmethod
    def system(
        cls,
        out: TextIO | None = None,
        err: TextIO | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Context:
        """The real process (streams and environment given here instead, for tests)."""
        return cls(
            out or sys.stdout, err or sys.stderr, dict(os.environ) if environ is None else environ
        )


def expand_user(value: str, home: str | None) -> str:
    """`os.path.expanduser` with the given home (None: the password database's, as without
    $HOME); `~user` still asks the password database."""
    if value != "~" and not value.startswith("~/"):
        return os.path.expanduser(value)
    if not home:
        import pwd

        home = pwd.getpwuid(os.getuid()).pw_dir
    return home.rstrip("/") + value[1:] or "/"


def expand_vars(value: str, environ: Mapping[str, str]) -> str:
    """`os.path.expandvars` over `environ`: unknown variables stay as written."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1).removeprefix("{").removesuffix("}")
        return environ.get(name, match.group(0))

    return _VARIABLE.sub(replace, value) if "$" in value else value


def process_euid() -> int:
    """The real effective uid: the default of the file checks when a caller passes none."""
    return os.geteuid()
