"""Exceptions and exit codes shared by every module, kept apart so nothing imports in a loop."""

from __future__ import annotations

from typing import Final

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_CONFIG: Final = 2
EXIT_LOCKED: Final = 3


class CredfreshError(Exception):
    """Base error: `code` is a stable machine-readable name, the message is for humans.

    Messages never carry credential values: callers pass names and paths only.
    """

    code: str = "error"

    def __init__(self, message: str, *, code: str | None = None, profile: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.profile = profile

    def __str__(self) -> str:
        return self.message


class ConfigError(CredfreshError):
    """The config cannot be used; `problems` lists every `path: expectation` found."""

    code = "config_invalid"

    def __init__(self, problems: list[str], *, path: str | None = None):
        self.problems = problems
        self.path = path
        where = f"{path}: " if path else ""
        super().__init__(
            f"{where}{len(problems)} problem(s) in config:\n  " + "\n  ".join(problems)
        )


class CredfileError(CredfreshError):
    """The credentials file could not be read or written.

    Codes: `write_failed`, `unparseable_file` (with `line`), `section_conflict` (with
    `profile`), `unsafe_path`.
    """

    code = "write_failed"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        profile: str | None = None,
        line: int | None = None,
    ):
        super().__init__(message, code=code, profile=profile)
        self.line = line
