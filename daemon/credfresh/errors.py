"""Every error type, every error code with its hint, and the exit status of each type
(`cli.main` applies `EXIT_STATUS`); imported everywhere, so it imports nothing of credfresh."""

from __future__ import annotations

from typing import ClassVar, Final

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_CONFIG: Final = 2
EXIT_LOCKED: Final = 3
EXIT_INTERRUPTED: Final = 130

#: Every code credfresh's own errors carry, with what to do about it. STS's codes and their
#: hints are classified where the answer is read (`sources.classify.HINTS`).
CODES: Final = {
    "config_invalid": "fix each `path: expectation` listed, then run `credfresh validate`",
    "usage": "an option or argument is not what the command expects: see `--help`",
    "write_failed": "check the directory's permissions and free space",
    "read_failed": "check the credentials file's permissions",
    "unparseable_file": "the credentials file is not INI at the line given: fix that line",
    "section_conflict": "the section exists and is not credfresh's: set adopt: true",
    "unsafe_path": "the message names the path refused and why (a symlink, another owner)",
    "already_running": "another credfresh holds this credentials file's lock",
    "no_credentials": "credfresh has not written the profile: is the daemon running?",
    "credentials_expired": "the daemon is not refreshing the profile: see `credfresh status`",
    "federation_unreachable": "check the network and the proxy settings",
    "federation_refused": "the federation endpoint refused the credentials",
    "federation_invalid": "the federation endpoint's answer was not a sign-in token",
    "proxy_plain_http": "credentials go through a proxy over https only",
    "proxy_invalid": "HTTPS_PROXY or HTTP_PROXY must be an http(s) URL",
    "static_keys": "the profile holds long-term keys (a static copy): the console and the "
    "container endpoint (which exec serves through) take temporary credentials only; use a "
    "role chained on it",
    "sink_failed": "the alert_failed event says why the delivery failed",
    "no_daemon": "no daemon runs for this config: start it, or refresh without one with "
    "`credfresh once --force`",
    "control_refused": "only the daemon's own user may use its control socket: run the "
    "command as that user",
    "unknown_profile": "the daemon's config has no such profile: see `credfresh status`",
    "refresh_timeout": "the daemon is still trying (see its refresh_failed log lines and "
    "`credfresh status`); wait longer with --wait",
    "daemon_stopping": "the daemon stopped meanwhile: run the command again once it is back",
    "busy": "the daemon is serving other control requests: try again in a moment",
    "bad_request": "the control socket's client and daemon differ: are both the same version?",
}


class CredfreshError(Exception):
    """`code` is a stable machine-readable name; the message, for humans, never carries a
    credential value (callers pass names and paths only)."""

    code: str = "error"
    #: Printed as `credfresh: CODE: message`; False where the message says it all.
    show_code: ClassVar[bool] = True

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
    show_code = False

    def __init__(self, problems: list[str], *, path: str | None = None):
        self.problems = problems
        where = f"{path}: " if path else ""
        super().__init__(
            f"{where}{len(problems)} problem(s) in config:\n  " + "\n  ".join(problems)
        )


class UsageError(CredfreshError):
    """A command-line value is wrong; the message names the option and what was expected."""

    code = "usage"
    show_code = False


class CredfileError(CredfreshError):
    """The credentials file could not be read or written: `write_failed`, `read_failed`,
    `unparseable_file` (with `line`), `section_conflict` (with `profile`), `unsafe_path`."""

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


class NoCredentials(CredfreshError):
    """A fast command found no valid credentials for the profile on disk."""

    code = "no_credentials"
    show_code = False

    @classmethod
    def missing(cls, profile: str, path: object) -> NoCredentials:
        return cls(
            f"profile {profile} has no credentials in {path} (is credfresh running?)",
            profile=profile,
        )

    @classmethod
    def expired(cls, profile: str, expiration: str) -> NoCredentials:
        return cls(
            f"profile {profile} expired at {expiration} "
            "(is credfresh running? see `credfresh status`)",
            code="credentials_expired",
            profile=profile,
        )


class ConsoleError(CredfreshError):
    """No sign-in token (`status`: the endpoint's HTTP status); never a secret or URL."""

    def __init__(self, message: str, *, code: str, status: int | None = None) -> None:
        super().__init__(message, code=code)
        self.status = status


class AlreadyRunning(CredfreshError):
    """Another daemon holds the instance lock of the credentials file."""

    code = "already_running"


class SinkError(CredfreshError):
    """An alert delivery failed; the message is safe to log (no URL, no secret)."""

    code = "sink_failed"


#: The exit status of each error type: the first that matches wins.
EXIT_STATUS: Final[tuple[tuple[type[CredfreshError], int], ...]] = (
    (AlreadyRunning, EXIT_LOCKED),
    (ConfigError, EXIT_CONFIG),
    (UsageError, EXIT_CONFIG),
    (CredfreshError, EXIT_FAILED),
)
