"""Env files: a profile's credentials as `KEY=value` lines for systemd's `EnvironmentFile=`
and `docker --env-file`, written after the credentials file (before the hooks).

The two parsers disagree on quoting (systemd strips quotes and reads backslash escapes;
docker keeps every character after `=`), so only values that need no quoting for either
are written: AWS keys, tokens, ISO times and region names always are, and anything else is
refused rather than written in a form one of them would read differently.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final

from credfresh.credentials import account_id, format_time
from credfresh.errors import CredfileError

if TYPE_CHECKING:
    from pathlib import Path

    from credfresh.config.model import Config, Profile
    from credfresh.credentials import Credentials
    from credfresh.observe.logs import Logger

#: What both parsers read back unchanged without quotes (no space, quote, `\`, `#`, `$`).
SAFE_VALUE: Final = re.compile(r"[A-Za-z0-9/+=:._-]+")
ENV_FILE_MODE: Final = 0o600


def render_env(creds: Credentials, region: str | None) -> bytes:
    """The file's bytes: one `KEY=value` a line, in a fixed order (pure); a static set has
    no token or expiry line."""
    pairs = [
        ("AWS_ACCESS_KEY_ID", creds.access_key_id),
        ("AWS_SECRET_ACCESS_KEY", creds.secret_access_key),
    ]
    if creds.session_token:
        pairs.append(("AWS_SESSION_TOKEN", creds.session_token))
    if creds.expiration is not None:
        pairs.append(("AWS_CREDENTIAL_EXPIRATION", format_time(creds.expiration)))
    if region:
        pairs.append(("AWS_REGION", region))
    account = account_id(creds.principal_arn)
    if account is not None:
        pairs.append(("AWS_ACCOUNT_ID", account))
    for key, value in pairs:
        if not SAFE_VALUE.fullmatch(value):
            raise ValueError(f"{key} holds characters an env file cannot carry unquoted")
    return "".join(f"{key}={value}\n" for key, value in pairs).encode("ascii")


class EnvFiles:
    """Writes the env file of every profile that has one, after each landed write."""

    def __init__(self, *, euid: int | None, log: Logger) -> None:
        self._euid = euid
        self._log = log

    def written(self, config: Config, updates: Mapping[str, Credentials]) -> None:
        for name, creds in sorted(updates.items()):
            profile = config.profiles.get(name)
            if profile is not None and profile.env_file is not None:
                self._write(profile, profile.env_file, creds)

    def _write(self, profile: Profile, path: Path, creds: Credentials) -> None:
        from credfresh.credfile.atomic import atomic_write

        try:
            atomic_write(
                path, render_env(creds, profile.region), mode=ENV_FILE_MODE, euid=self._euid
            )
        except (CredfileError, ValueError) as exc:
            code = exc.code if isinstance(exc, CredfileError) else "invalid_value"
            self._log.warning(
                "env_file_write_failed",
                profile=profile.name,
                path=str(path),
                error_code=code,
                message=str(exc),
            )
            return
        self._log.info("env_file_written", profile=profile.name, path=str(path))


AfterWrite = Callable[["Config", Mapping[str, "Credentials"]], None]
