"""The resolved config as plain data, and the cheap readers the fast commands use.

Validation lives in `schema.py` (pydantic); this module imports only the stdlib and PyYAML so
that `status` and `credential-process` start quickly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from credfresh.errors import ConfigError

DEFAULT_CONFIG_PATH: Final = Path("/etc/credfresh/config.yaml")
MAX_CONFIG_BYTES: Final = 4 * 1024 * 1024

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*")
_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: object) -> float:
    """Read `90s`, `15m`, `1h`, `2d` or plain seconds; raise ValueError for anything else."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 90s, 15m, 1h or a number of seconds")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("expected a non-negative duration")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.fullmatch(value)
        if match:
            return float(match.group(1)) * _UNITS[match.group(2)]
    raise ValueError("expected a duration like 90s, 15m, 1h or a number of seconds")


def format_duration(seconds: float) -> str:
    """Short human form for tables: 41m, 1h05m, 12s."""
    total = round(seconds)
    sign = "-" if total < 0 else ""
    total = abs(total)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{sign}{hours}h{minutes:02d}m"
    if minutes:
        return f"{sign}{minutes}m{secs:02d}s" if minutes < 10 and secs else f"{sign}{minutes}m"
    return f"{sign}{secs}s"


def default_config_path(environ: Mapping[str, str]) -> Path:
    value = environ.get("CREDFRESH_CONFIG")
    return Path(value) if value else DEFAULT_CONFIG_PATH


@dataclasses.dataclass(frozen=True)
class Profile:
    """One role profile, with defaults applied; everything STS needs to issue its credentials."""

    name: str
    role_arn: str
    role_session_name: str
    duration_seconds: int
    region: str | None
    refresh_before: float | None  # None: the default rule in refresh.window_for_lifetime
    endpoint_url: str | None = None
    use_fips_endpoint: bool = False
    use_dualstack_endpoint: bool = False
    source_profile: str | None = None
    chained: bool = False
    web_identity_token_file: Path | None = None
    external_id: str | None = None
    policy: str | None = None
    policy_arns: tuple[str, ...] = ()
    tags: tuple[tuple[str, str], ...] = ()
    transitive_tag_keys: tuple[str, ...] = ()
    source_identity: str | None = None
    adopt: bool = False

    def sts_identity(self) -> tuple[object, ...]:
        """Everything that changes what STS returns: a reload refreshes when this differs."""
        return tuple(
            getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("refresh_before", "adopt")
        )


@dataclasses.dataclass(frozen=True)
class StsSettings:
    endpoint_url: str | None = None
    use_fips_endpoint: bool = False
    use_dualstack_endpoint: bool = False
    max_concurrency: int = 16
    timeout: float = 10.0


@dataclasses.dataclass(frozen=True)
class RetrySettings:
    initial: float = 5.0
    max: float = 300.0


@dataclasses.dataclass(frozen=True)
class AlertSettings:
    after: float = 300.0
    expiry_warning: float = 600.0
    repeat: float = 3600.0
    webhook_url: str | None = None
    command: tuple[str, ...] = ()
    command_timeout: float = 30.0


@dataclasses.dataclass(frozen=True)
class HttpSettings:
    listen: str | None = None


@dataclasses.dataclass(frozen=True)
class MetricsSettings:
    textfile: Path | None = None


@dataclasses.dataclass(frozen=True)
class ContainerCredentialsSettings:
    listen: str | None = None
    token_file: Path | None = None


@dataclasses.dataclass(frozen=True)
class Config:
    """A validated config. `digest` covers the file and every policy file it names."""

    path: Path
    credentials_file: Path
    state_file: Path
    owner: str
    sts: StsSettings
    retry: RetrySettings
    alerts: AlertSettings
    http: HttpSettings
    metrics: MetricsSettings
    container_credentials: ContainerCredentialsSettings
    profiles: Mapping[str, Profile]
    digest: str
    warnings: tuple[str, ...] = ()
    policy_files: tuple[Path, ...] = ()


@dataclasses.dataclass(frozen=True)
class LightConfig:
    """What `status` and `credential-process` need, read without full validation."""

    path: Path
    credentials_file: Path
    state_file: Path
    owner: str
    profiles: Mapping[str, LightProfile]


@dataclasses.dataclass(frozen=True)
class LightProfile:
    name: str
    role_arn: str
    refresh_before: float | None


def read_bytes(path: Path) -> bytes:
    """Read a config file, refusing huge ones before they reach the parser."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError as exc:
        raise ConfigError([f"(file): not found: {path}"], path=str(path)) from exc
    except OSError as exc:
        raise ConfigError(
            [f"(file): cannot be read ({exc.strerror or type(exc).__name__})"], path=str(path)
        ) from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError([f"(file): larger than {MAX_CONFIG_BYTES} bytes"], path=str(path))
    return data


def parse_document(data: bytes, path: Path) -> dict[str, Any]:
    """Parse YAML (or TOML for a `.toml` suffix) into a mapping; errors never quote values."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [f"(document): not valid UTF-8 (byte {exc.start})"], path=str(path)
        ) from exc
    if path.suffix.lower() == ".toml":
        import tomllib

        try:
            document: object = tomllib.loads(text)
        except RecursionError as exc:
            raise ConfigError(["(document): nests too deeply"], path=str(path)) from exc
        except tomllib.TOMLDecodeError as exc:
            where = str(exc).rsplit("(", 1)[-1].rstrip(")") if "(" in str(exc) else ""
            raise ConfigError([f"(document): not valid TOML ({where})"], path=str(path)) from exc
        from credfresh.config import yamlsafe

        yamlsafe.check_size(document, str(path))
    else:
        from credfresh.config import yamlsafe

        document = yamlsafe.load(text, str(path))
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError(["(top level): expected a mapping of keys"], path=str(path))
    return document


def digest_of(*parts: bytes) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(len(part).to_bytes(8, "big"))
        hasher.update(part)
    return hasher.hexdigest()


def expand_path(value: str, base: Path) -> Path:
    """`~` and `$VARS` expand; relative paths are relative to the config's directory."""
    path = Path(os.path.expandvars(os.path.expanduser(value)))
    return path if path.is_absolute() else base / path


def default_owner(config_path: Path) -> str:
    return str(config_path.resolve())


def default_credentials_file(environ: Mapping[str, str]) -> Path:
    value = environ.get("AWS_SHARED_CREDENTIALS_FILE")
    return Path(os.path.expanduser(value)) if value else Path.home() / ".aws" / "credentials"


def default_state_file(owner: str, environ: Mapping[str, str]) -> Path:
    state_dir = environ.get("STATE_DIRECTORY")
    if state_dir:
        return Path(state_dir.split(":")[0]) / "state.json"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", owner).strip("_") or "default"
    return Path.home() / ".local" / "state" / "credfresh" / f"{slug[-100:]}.json"


def resolve_paths(
    document: Mapping[str, Any], config_path: Path, environ: Mapping[str, str]
) -> tuple[Path, str, Path]:
    """credentials_file, owner and state_file, with their documented defaults."""
    base = config_path.parent
    raw_cred = document.get("credentials_file")
    credentials_file = (
        expand_path(raw_cred, base)
        if isinstance(raw_cred, str) and raw_cred
        else default_credentials_file(environ)
    )
    raw_owner = document.get("owner")
    owner = raw_owner if isinstance(raw_owner, str) and raw_owner else default_owner(config_path)
    raw_state = document.get("state_file")
    state_file = (
        expand_path(raw_state, base)
        if isinstance(raw_state, str) and raw_state
        else default_state_file(owner, environ)
    )
    return credentials_file, owner, state_file


def read_light(config_path: Path, environ: Mapping[str, str]) -> LightConfig:
    """Read just enough of the config for the fast commands; no pydantic, no boto3."""
    document = parse_document(read_bytes(config_path), config_path)
    credentials_file, owner, state_file = resolve_paths(document, config_path, environ)
    defaults = document.get("defaults") or {}
    profiles_doc = document.get("profiles") or {}
    if not isinstance(defaults, dict) or not isinstance(profiles_doc, dict):
        raise ConfigError(["defaults, profiles: expected mappings"], path=str(config_path))
    profiles: dict[str, LightProfile] = {}
    problems: list[str] = []
    for name, body in profiles_doc.items():
        merged = {**defaults, **(body if isinstance(body, dict) else {})}
        raw_before = merged.get("refresh_before")
        try:
            refresh_before = None if raw_before is None else parse_duration(raw_before)
        except ValueError as exc:
            problems.append(f"profiles.{name}.refresh_before: {exc}")
            continue
        profiles[str(name)] = LightProfile(
            name=str(name), role_arn=str(merged.get("role_arn", "")), refresh_before=refresh_before
        )
    if problems:
        raise ConfigError(problems, path=str(config_path))
    return LightConfig(
        path=config_path,
        credentials_file=credentials_file,
        state_file=state_file,
        owner=owner,
        profiles=profiles,
    )


def topological_order(profiles: Mapping[str, Profile]) -> list[list[str]]:
    """Profiles in waves: every chained profile comes in a later wave than its source."""
    remaining = dict(profiles)
    waves: list[list[str]] = []
    done: set[str] = set()
    while remaining:
        wave = sorted(
            name
            for name, profile in remaining.items()
            if not profile.chained
            or profile.source_profile in done
            or profile.source_profile not in profiles
        )
        if not wave:
            wave = sorted(remaining)
        waves.append(wave)
        done.update(wave)
        for name in wave:
            del remaining[name]
    return waves
