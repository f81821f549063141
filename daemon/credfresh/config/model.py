"""The config as plain data: every type, every default (written once here), and the value rules
several readers share (durations, listen addresses, profile names, paths). Stdlib only."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from credfresh.context import expand_user, expand_vars

DEFAULT_CONFIG_PATH: Final = Path("/etc/credfresh/config.yaml")
#: What a profile without `duration_seconds` asks STS for (also STS's own default).
DEFAULT_DURATION_SECONDS: Final = 3600
#: The addresses botocore accepts for a container credentials endpoint over plain http.
CONTAINER_HOSTS: Final = ("127.0.0.1", "::1", "169.254.170.23", "fd00:ec2::23")
#: Where the IMDSv2-compatible endpoint may listen: loopback, or EC2's own metadata address
#: where it is configured on an interface (a network namespace or pod).
IMDS_HOSTS: Final = ("127.0.0.1", "::1", "169.254.169.254")
#: The uid the kernel shows for a user unmapped in the reader's user namespace: never allowed.
OVERFLOW_UID: Final = 65534
#: A profile name: what an AWS config section and the container endpoint's path may carry.
PROFILE_NAME: Final = re.compile(r"[A-Za-z0-9_.@+=,:/-]{1,128}")

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*")
_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_LISTEN = re.compile(r"(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})")


@dataclasses.dataclass(frozen=True)
class ProfileCore:
    """The part of a profile the fast commands read (`load.read_light`); `Profile` extends it."""

    name: str
    role_arn: str
    refresh_before: float | None  # None: the default rule in policy.window_for_lifetime


#: `source_profile: default-chain` copies boto3's default chain (a reserved name).
DEFAULT_CHAIN: Final = "default-chain"


@dataclasses.dataclass(frozen=True)
class RolesAnywhereSpec:
    """A `roles_anywhere:` mapping: the certificate files and the three ARNs."""

    certificate: Path
    private_key: Path
    trust_anchor_arn: str
    profile_arn: str
    role_arn: str
    certificate_chain: Path | None = None
    session_name: str | None = None
    endpoint_url: str | None = None


#: What `on_refresh.timeout` is when unset: a hook is killed after this long.
DEFAULT_HOOK_TIMEOUT: Final = 30.0


@dataclasses.dataclass(frozen=True)
class HookSpec:
    """An `on_refresh` hook: a command, a signal to a pid file's process, or both (in that
    order). Equal specs are one hook: profiles sharing it (from `defaults`) run it once."""

    command: tuple[str, ...] = ()
    pid_file: Path | None = None
    signal: str = "SIGHUP"
    timeout: float = DEFAULT_HOOK_TIMEOUT

    def label(self) -> str:
        """How logs and alerts name the hook: its argv[0], the signal and pid file."""
        parts = [Path(self.command[0]).name] if self.command else []
        if self.pid_file is not None:
            parts.append(f"{self.signal} to {self.pid_file}")
        return " and ".join(parts)


@dataclasses.dataclass(frozen=True)
class Profile(ProfileCore):
    """One profile, with defaults applied; everything its source needs to issue credentials.

    Made by exactly one of: `role_arn` (AssumeRole or AssumeRoleWithWebIdentity),
    `roles_anywhere`, or `copy` (the credentials of the AWS profile `source_profile`).
    """

    role_session_name: str
    duration_seconds: int
    region: str | None
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
    roles_anywhere: RolesAnywhereSpec | None = None
    copy: bool = False
    env_file: Path | None = None  # also written after each refresh (outputs/env_file.py)
    on_refresh: HookSpec | None = None  # run after each write that carried it (outputs/hooks.py)

    @property
    def kind(self) -> str:
        """Which source issues it: `assume_role`, `web_identity`, `roles_anywhere` or `copy`."""
        if self.roles_anywhere is not None:
            return "roles_anywhere"
        if self.copy:
            return "copy"
        return "web_identity" if self.web_identity_token_file is not None else "assume_role"

    def sts_identity(self) -> tuple[object, ...]:
        """Everything that changes what STS returns: a reload refreshes when this differs."""
        return tuple(
            getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("refresh_before", "adopt", "env_file", "on_refresh")
        )


@dataclasses.dataclass(frozen=True)
class StsSettings:
    endpoint_url: str | None = None
    use_fips_endpoint: bool = False
    use_dualstack_endpoint: bool = False
    max_concurrency: int = 16
    timeout: float = 10.0
    #: CreateSession calls per second per region (Roles Anywhere allows about 10).
    roles_anywhere_rate: float = 8.0


@dataclasses.dataclass(frozen=True)
class RetrySettings:
    """The backoff after a failed refresh: `initial`, doubling up to `max` (seconds)."""

    initial: float = 5.0
    max: float = 300.0


@dataclasses.dataclass(frozen=True)
class AlertSettings:
    after: float = 300.0
    expiry_warning: float = 600.0
    #: `source_expiring` warns this long before a Roles Anywhere certificate ends (14 days).
    certificate_warning: float = 14 * 86400.0
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
class ImdsSettings:
    """The IMDSv2-compatible endpoint (`outputs/imds.py`): off without `listen`."""

    listen: str | None = None
    profile: str | None = None  # the one profile served, under its name as the role name
    allow_v1: bool = False
    hop_limit: int = 1
    #: Who may read (peer socket owners); None: the daemon's own euid alone.
    allow_uids: tuple[int, ...] | None = None


@dataclasses.dataclass(frozen=True)
class ConfigCore:
    """The part of a config the fast commands read (`load.read_light`); `Config` extends it."""

    path: Path
    credentials_file: Path
    state_file: Path
    owner: str
    profiles: Mapping[str, ProfileCore]


@dataclasses.dataclass(frozen=True)
class Config(ConfigCore):
    """A validated config. `digest` covers the file and every policy file it names."""

    profiles: Mapping[str, Profile]
    sts: StsSettings
    retry: RetrySettings
    alerts: AlertSettings
    http: HttpSettings
    metrics: MetricsSettings
    container_credentials: ContainerCredentialsSettings
    digest: str
    warnings: tuple[str, ...] = ()
    policy_files: tuple[Path, ...] = ()
    imds: ImdsSettings = ImdsSettings()


def digest_of(*parts: bytes) -> str:
    """One hash over the config and its policy files: a reload with the same digest is a no-op."""
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(len(part).to_bytes(8, "big"))
        hasher.update(part)
    return hasher.hexdigest()


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


def config_duration(seconds: float) -> str:
    """A duration as the config writes it (`65m`, `450s`), so a message can be copied."""
    whole = round(seconds)
    return f"{whole // 60}m" if whole % 60 == 0 else f"{whole}s"


def parse_listen(value: str) -> tuple[str, int]:
    """`127.0.0.1:9464` or `[::]:9464` into host and port; raise ValueError otherwise."""
    match = _LISTEN.fullmatch(value)
    if not match or not 0 <= int(match.group(3)) < 65536:
        raise ValueError("expected HOST:PORT like 127.0.0.1:9464 or [::]:9464")
    return (match.group(1) or match.group(2)), int(match.group(3))


def default_session_name(profile: str) -> str:
    """`credfresh-NAME`, cut to what STS accepts as a RoleSessionName."""
    cleaned = re.sub(r"[^A-Za-z0-9_+=,.@-]", "-", f"credfresh-{profile}")
    return cleaned[:64]


def expand_path(value: str, base: Path, environ: Mapping[str, str], home: Path) -> Path:
    """`~` and `$VARS` expand from `home` and `environ`; relative to `base` (the config's dir)."""
    return base / expand_vars(expand_user(value, str(home)), environ)


def default_credentials_file(environ: Mapping[str, str], home: Path) -> Path:
    """Where the AWS SDKs look: `$AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`."""
    value = environ.get("AWS_SHARED_CREDENTIALS_FILE")
    return Path(expand_user(value, str(home))) if value else home / ".aws" / "credentials"


def default_state_file(owner: str, environ: Mapping[str, str], home: Path) -> Path:
    """systemd's `$STATE_DIRECTORY`, else one file per owner under `~/.local/state`."""
    state_dir = environ.get("STATE_DIRECTORY")
    if state_dir:
        return Path(state_dir.split(":")[0]) / "state.json"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", owner).strip("_") or "default"
    return home / ".local" / "state" / "credfresh" / f"{slug[-100:]}.json"


def resolve_paths(
    document: Mapping[str, Any], config_path: Path, environ: Mapping[str, str], home: Path
) -> tuple[Path, str, Path]:
    """credentials_file, owner and state_file, with their documented defaults."""
    base = config_path.parent
    raw_cred = document.get("credentials_file")
    credentials_file = (
        expand_path(raw_cred, base, environ, home)
        if isinstance(raw_cred, str) and raw_cred
        else default_credentials_file(environ, home)
    )
    raw_owner = document.get("owner")
    owner = raw_owner if isinstance(raw_owner, str) and raw_owner else str(config_path.resolve())
    raw_state = document.get("state_file")
    state_file = (
        expand_path(raw_state, base, environ, home)
        if isinstance(raw_state, str) and raw_state
        else default_state_file(owner, environ, home)
    )
    return credentials_file, owner, state_file


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
