"""`credfresh exec`'s decisions, on plain data: which profiles run, when the child may start,
the child's environment, the shared credentials file rule, signals and the exit status.
`commands/exec.py` does the I/O around them."""

from __future__ import annotations

import os
import re
import signal
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Final, Literal, Protocol, TypeVar

from credfresh.credentials import NEVER

if TYPE_CHECKING:
    from datetime import datetime

    from credfresh.engine.state import ProfileState

#: The variables that would win over the container provider in an SDK's default chain
#: (static keys, a named profile, web identity, the ECS relative URI botocore prefers to the
#: full one, an inline endpoint token) or that describe other credentials.
REMOVED: Final = frozenset(
    {
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_CREDENTIAL_EXPIRATION",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN",
        "AWS_ROLE_ARN",
        "AWS_ROLE_SESSION_NAME",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    }
)
SHARED_CREDENTIALS_FILE: Final = "AWS_SHARED_CREDENTIALS_FILE"
FULL_URI: Final = "AWS_CONTAINER_CREDENTIALS_FULL_URI"
TOKEN_FILE_VARIABLE: Final = "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"  # noqa: S105 - a variable name
ENDPOINT_PREFIX: Final = "CREDFRESH_ENDPOINT_"
FORWARDED: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
#: `si_code` of a signal the kernel sent itself, e.g. the terminal's Ctrl-C to its foreground
#: process group: a child in exec's own group received that one already.
SI_KERNEL: Final = 0x80
_NOT_ALNUM = re.compile(r"[^A-Z0-9]", re.ASCII)

Verdict = Literal["ready", "failed", "static_keys", "waiting"]


class Linked(Protocol):
    """What `scoped` needs of a profile (`config.model.Profile` has it)."""

    @property
    def chained(self) -> bool: ...

    @property
    def source_profile(self) -> str | None: ...


P = TypeVar("P", bound=Linked)


def scoped(profiles: Mapping[str, P], chosen: Sequence[str]) -> dict[str, P]:
    """The chosen profiles and the credfresh profiles they chain from, in config order."""
    keep: set[str] = set()
    pending = list(chosen)
    while pending:
        name = pending.pop()
        if name in keep or name not in profiles:
            continue
        keep.add(name)
        profile = profiles[name]
        if profile.chained and profile.source_profile is not None:
            pending.append(profile.source_profile)
    return {name: profile for name, profile in profiles.items() if name in keep}


def endpoint_variable(profile: str) -> str:
    """`CREDFRESH_ENDPOINT_` and the name upper-cased, each character but A-Z and 0-9 as `_`."""
    return ENDPOINT_PREFIX + _NOT_ALNUM.sub("_", profile.upper())


def endpoint_variables(names: Sequence[str]) -> dict[str, str]:
    """Each profile's variable; ValueError naming both when two names give the same one."""
    found: dict[str, str] = {}
    for name in names:
        variable = endpoint_variable(name)
        clash = next((other for other, v in found.items() if v == variable), None)
        if clash is not None:
            raise ValueError(f"profiles {clash} and {name} would both be {variable}")
        found[name] = variable
    return found


def endpoint_url(base: str, profile: str) -> str:
    """The endpoint's URL of one profile (the name percent-encoded, `/` included)."""
    return base + urllib.parse.quote(profile, safe="")


def start_verdict(
    profiles: Sequence[str],
    held: Mapping[str, datetime | None],
    states: Mapping[str, ProfileState],
    now: datetime,
    served: Sequence[str] = (),
) -> tuple[Verdict, list[str]]:
    """`ready` once every profile holds valid credentials; `failed` (with the names) when one
    without them failed permanently (the child would only fail); `static_keys` when a
    `served` one holds a static copy (the container endpoint does not serve it); else
    `waiting`."""
    static = [n for n in served if held.get(n) == NEVER]
    if static:
        return "static_keys", static
    missing = [n for n in profiles if (expires := held.get(n)) is None or expires <= now]
    if not missing:
        return "ready", []
    failed = [n for n in missing if (s := states.get(n)) is not None and s.last_error_permanent]
    return ("failed", failed) if failed else ("waiting", missing)


def shared_credentials_file(
    current: str | None, *, is_credfresh_file: bool, has_default: bool
) -> str | None:
    """The child's AWS_SHARED_CREDENTIALS_FILE (None: unset). The file the SDK would read
    (`current`, else ~/.aws/credentials) stays only when it is credfresh's own file with no
    `[default]` section, which would win over the container provider; anything else becomes
    /dev/null, because merely unsetting it would send the SDK to ~/.aws/credentials."""
    if is_credfresh_file and not has_default:
        return current
    return os.devnull


def child_environment(
    parent: Mapping[str, str],
    *,
    endpoints: Sequence[tuple[str, str]],
    token_file: str,
    region: str | None,
    shared_file: str | None,
) -> dict[str, str]:
    """The parent's environment without what would win over the container provider, plus
    the first profile's endpoint, the token file, the region (both names: botocore reads only
    AWS_DEFAULT_REGION, other SDKs AWS_REGION) and, for several profiles, one variable each."""
    env = {
        key: value
        for key, value in parent.items()
        if key not in REMOVED
        and key != SHARED_CREDENTIALS_FILE
        and not key.startswith(ENDPOINT_PREFIX)
    }
    if shared_file is not None:
        env[SHARED_CREDENTIALS_FILE] = shared_file
    env[FULL_URI] = endpoints[0][1]
    env[TOKEN_FILE_VARIABLE] = token_file
    if region:
        env["AWS_REGION"] = env["AWS_DEFAULT_REGION"] = region
    if len(endpoints) > 1:
        variables = endpoint_variables([name for name, _ in endpoints])
        for name, url in endpoints:
            env[variables[name]] = url
    return env


def should_forward(si_code: int, *, child_in_our_group: bool) -> bool:
    """Forward every signal but one the kernel already sent to the whole group the child is in
    (a terminal's Ctrl-C or hang-up): forwarding that would deliver it twice."""
    return not (si_code == SI_KERNEL and child_in_our_group)


def exit_status(wait_status: int) -> int:
    """The child's exit code, or 128+N when signal N ended it (as a shell reports it)."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    if os.WIFEXITED(wait_status):
        return os.WEXITSTATUS(wait_status)
    return 1


def command_of(argv: Sequence[str]) -> list[str]:
    """CMD [ARG...] as given after `--` (argparse's REMAINDER keeps the `--`); ValueError
    when there is none, or when it looks like an option given without `--`."""
    if argv[:1] == ["--"]:
        command = list(argv[1:])
    else:
        if argv[:1] and argv[0].startswith("-"):
            raise ValueError(f"exec: unknown option {argv[0]} (put the command after --)")
        command = list(argv)
    if not command:
        raise ValueError("exec: no command given (credfresh exec --profile P -- CMD [ARG...])")
    return command
