"""Full config validation into the model: every problem at once, with its path, never a value
(`schema.py` checks single fields; the rules relating fields each return their problems)."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Final, NamedTuple

from credfresh.config import load
from credfresh.config import model as cfg
from credfresh.config.schema import (
    ROLE_ARN_HINT,
    AlertsModel,
    ContainerCredentialsModel,
    HttpModel,
    ImdsModel,
    MetricsModel,
    ModelT,
    OnRefreshModel,
    ProfileModel,
    RetryModel,
    StsModel,
    TopModel,
    section,
    validated,
)
from credfresh.config.sources import (
    NOT_INHERITED,
    NOT_WITH_WEB_IDENTITY,
    kind_of,
    kind_of_keys,
    kind_problems,
    region_partition,
    roles_anywhere_problems,
    roles_anywhere_spec,
)
from credfresh.engine import policy as refresh
from credfresh.errors import ConfigError

MAX_POLICY_CHARS: Final = 2048
CHAINED_MAX_DURATION: Final = 3600
#: Expands a path from the config: `~`, `$VARS`, relative to the config's directory.
_Expand = Callable[[str], Path]


def load_config(
    path: Path, environ: Mapping[str, str], home: Path, now: datetime | None = None
) -> cfg.Config:
    """Read and validate a config file; raise ConfigError listing every problem.

    With `now`, a Roles Anywhere certificate that has already expired is a problem too.
    """
    raw = load.read_bytes(path)
    return build_config(load.parse_document(raw, path), path, environ, home, raw, now=now)


def build_config(  # noqa: PLR0913  the document, where it came from, and the moment
    document: Mapping[str, Any],
    path: Path,
    environ: Mapping[str, str],
    home: Path,
    raw: bytes = b"",
    *,
    now: datetime | None = None,
) -> cfg.Config:
    """The model of a parsed document; raise ConfigError listing every problem."""
    top, problems = validated(TopModel, document, "")
    top = top or TopModel()
    paths = functools.partial(cfg.expand_path, base=path.parent, environ=environ, home=home)
    sections, found = _sections(top, paths)
    problems += found
    profiles, found = _profiles(top, sections.sts, paths, now)
    problems += found
    problems += imds_problems(sections.imds, top.profiles or {})
    if problems:
        raise ConfigError(problems, path=str(path))
    credentials_file, owner, state_file = cfg.resolve_paths(document, path, environ, home)
    policies = dict(zip(profiles.policy_paths, profiles.policy_parts, strict=False))
    return cfg.Config(
        path=path,
        credentials_file=credentials_file,
        state_file=state_file,
        owner=owner,
        profiles=profiles.profiles,
        **sections._asdict(),
        # Each policy file once, in `policy_files`' order: `isolated.unchanged_on_disk` hashes
        # the same bytes again without a child.
        digest=cfg.digest_of(raw, *policies.values()),
        warnings=tuple(dict.fromkeys(profiles.warnings)),
        policy_files=tuple(policies),
    )


class _Sections(NamedTuple):
    """The settings sections; a section that failed holds its defaults (and problems say why)."""

    sts: cfg.StsSettings
    retry: cfg.RetrySettings
    alerts: cfg.AlertSettings
    http: cfg.HttpSettings
    metrics: cfg.MetricsSettings
    container_credentials: cfg.ContainerCredentialsSettings
    imds: cfg.ImdsSettings


def _sections(top: TopModel, paths: _Expand) -> tuple[_Sections, list[str]]:
    """Every settings section from its pydantic model, with the cross-field checks."""
    problems: list[str] = []

    def read(model: type[ModelT], key: str) -> ModelT:
        found, more = section(model, getattr(top, key), key)
        problems.extend(more)
        return found

    sts, retry = read(StsModel, "sts"), read(RetryModel, "retry")
    alerts, http = read(AlertsModel, "alerts"), read(HttpModel, "http")
    metrics = read(MetricsModel, "metrics")
    container = read(ContainerCredentialsModel, "container_credentials")
    imds = read(ImdsModel, "imds")
    if retry.initial > retry.max:
        problems.append("retry.initial: expected a value no larger than retry.max")
    if container.listen and not container.token_file:
        problems.append("container_credentials.token_file: required when listen is set")
    return _Sections(
        sts=cfg.StsSettings(**sts.model_dump()),
        retry=cfg.RetrySettings(**retry.model_dump()),
        alerts=cfg.AlertSettings(**{**alerts.model_dump(), "command": tuple(alerts.command or ())}),
        http=cfg.HttpSettings(**http.model_dump()),
        metrics=cfg.MetricsSettings(textfile=paths(metrics.textfile) if metrics.textfile else None),
        container_credentials=cfg.ContainerCredentialsSettings(
            listen=container.listen,
            token_file=paths(container.token_file) if container.token_file else None,
        ),
        imds=cfg.ImdsSettings(
            **{
                **imds.model_dump(),
                "allow_uids": None if imds.allow_uids is None else tuple(imds.allow_uids),
            }
        ),
    ), problems


def imds_problems(imds: cfg.ImdsSettings, profiles: Mapping[str, object]) -> list[str]:
    """The served profile must be one of the config's (its name is the role name)."""
    if imds.listen and imds.profile is None:
        return ["imds.profile: required when listen is set"]
    if imds.profile is not None and imds.profile not in profiles:
        return ["imds.profile: expected the name of a profile under profiles"]
    return []


#: A profile's keys after `defaults` are merged in, and the keys its own body set.
_Models = Mapping[str, tuple["ProfileModel", set[str]]]


class _Scope(NamedTuple):
    """What each profile is built against: every profile's model, the sts section, paths."""

    models: _Models
    sts: cfg.StsSettings
    paths: _Expand


class _Profiles(NamedTuple):
    """Every valid profile, and what validating them found besides problems."""

    profiles: dict[str, cfg.Profile]
    warnings: list[str]
    policy_parts: list[bytes]
    policy_paths: list[Path]


def _profiles(
    top: TopModel, sts: cfg.StsSettings, paths: _Expand, now: datetime | None
) -> tuple[_Profiles, list[str]]:
    """`defaults` and `profiles`: each profile on its own, then the chains between them."""
    defaults, problems = validated(ProfileModel, top.defaults, "defaults")
    default_values = defaults.model_dump(exclude_none=True) if defaults else {}
    profiles_doc = top.profiles or {}
    found = _Profiles({}, [], [], [])
    if not profiles_doc:
        found.warnings.append("profiles: no profiles configured; credfresh has nothing to refresh")
    models: dict[str, tuple[ProfileModel, set[str]]] = {}
    for name, raw_body in profiles_doc.items():
        merged, more = _merged_model(name, raw_body, default_values)
        problems += more
        if merged is not None:
            models[name] = merged
    scope = _Scope(models, sts, paths)
    for name, (model, explicit) in models.items():
        where = _Where(f"profiles.{name}", explicit)
        policy = _policy(model, where, paths)
        found.policy_parts.extend(policy.data)
        found.policy_paths.extend(policy.paths)
        more = [*_identity_problems(name, model, where), *policy.problems]
        more += _limit_problems(name, model, where, models)
        more += roles_anywhere_problems(model, where, paths, now)
        if kind_of(model) != "copy":
            found.warnings.extend(_advice(model, where))
        if not more and kind_of(model) is not None:
            found.profiles[name] = _profile(name, model, policy.text, scope)
        problems += more
    problems += _chain_problems(models)
    return found, problems


def _merged_model(
    name: str, raw_body: object, default_values: Mapping[str, Any]
) -> tuple[tuple[ProfileModel, set[str]] | None, list[str]]:
    """One profile's own keys validated, then `defaults` merged under them."""
    prefix = f"profiles.{name}"
    body = {} if raw_body is None else raw_body
    if not cfg.PROFILE_NAME.fullmatch(name):
        return None, [f"{prefix}: expected a profile name of letters, digits and _.@+=,:/-"]
    if not isinstance(body, dict):
        return None, [f"{prefix}: expected a mapping of profile keys"]
    explicit = set(body)
    inherited = {k: v for k, v in default_values.items() if k not in explicit}
    for key in NOT_INHERITED[kind_of_keys(explicit, set(inherited))]:
        inherited.pop(key, None)
    model, problems = validated(ProfileModel, {**body}, prefix)
    if model is None:
        return None, problems
    merged = ProfileModel.model_validate({**inherited, **model.model_dump(exclude_none=True)})
    return (merged, explicit), problems


class _Where(NamedTuple):
    """Names a key where the user wrote it: in the profile, or inherited from `defaults`."""

    prefix: str
    explicit: set[str]

    def __call__(self, key: str) -> str:
        return f"{self.prefix}.{key}" if key in self.explicit else f"defaults.{key}"


def _identity_problems(name: str, model: ProfileModel, where: _Where) -> list[str]:
    """The role, its partition, and which keys the chosen STS call can take."""
    prefix = where.prefix
    problems = kind_problems(model, prefix, where.explicit)
    if kind_of(model) is None and not {"role_arn", "roles_anywhere"} & where.explicit:
        problems.append(
            f"{prefix}.role_arn: required (or roles_anywhere, or source_profile alone to copy "
            f"an AWS profile); {ROLE_ARN_HINT}"
        )
    if model.role_arn and model.region:
        partition = model.role_arn.split(":", 2)[1]
        if partition != region_partition(model.region):
            problems.append(
                f"{where('region')}: expected a region of the role ARN's partition {partition}"
            )
    if model.web_identity_token_file:
        problems += [
            f"{prefix}.{key}: not allowed with web_identity_token_file "
            "(AssumeRoleWithWebIdentity takes no such parameter)"
            for key in NOT_WITH_WEB_IDENTITY
            if getattr(model, key) is not None
        ]
    if model.policy is not None and model.policy_file is not None:
        problems.append(f"{prefix}.policy_file: not allowed together with policy (choose one)")
    return problems


def _limit_problems(name: str, model: ProfileModel, where: _Where, models: _Models) -> list[str]:
    """Tags, chained durations and sources: the limits AWS puts on a profile's values."""
    problems = []
    if model.transitive_tag_keys and not set(model.transitive_tag_keys) <= set(model.tags or {}):
        problems.append(f"{where('transitive_tag_keys')}: expected keys that are among the tags")
    duration = model.duration_seconds or cfg.DEFAULT_DURATION_SECONDS
    if _chained(model, models) and duration > CHAINED_MAX_DURATION:
        problems.append(
            f"{where('duration_seconds')}: expected at most {CHAINED_MAX_DURATION} for a "
            "chained role (AWS caps role chaining at one hour)"
        )
    if model.source_profile == name:
        problems.append(f"{where.prefix}.source_profile: a profile cannot be its own source")
    elif kind_of(model) == "copy" and _chained(model, models):
        problems.append(
            f"{where('source_profile')}: a copied profile cannot copy another profile of this "
            "config (its section is credfresh's own); add role_arn to chain a role from it"
        )
    return problems


def _chained(model: ProfileModel, models: _Models) -> bool:
    return bool(model.source_profile and model.source_profile in models)


def _advice(model: ProfileModel, where: _Where) -> list[str]:
    duration = model.duration_seconds or cfg.DEFAULT_DURATION_SECONDS
    advice = refresh_point_advice(duration, model.refresh_before)
    return [] if advice is None else [f"{where(advice[0])}: {advice[1]}"]


def _profile(name: str, model: ProfileModel, policy: str | None, scope: _Scope) -> cfg.Profile:
    """The model of a profile that passed every check, with its defaults applied."""
    sts, paths = scope.sts, scope.paths
    spec = roles_anywhere_spec(model, paths)
    region = model.region
    if spec is not None and region is None:
        region = spec.trust_anchor_arn.split(":")[3]
    role_arn = spec.role_arn if spec is not None else model.role_arn or ""
    return cfg.Profile(
        name=name,
        role_arn=role_arn,
        roles_anywhere=spec,
        copy=kind_of(model) == "copy",
        role_session_name=model.role_session_name or cfg.default_session_name(name),
        duration_seconds=model.duration_seconds or cfg.DEFAULT_DURATION_SECONDS,
        region=region,
        refresh_before=model.refresh_before,
        endpoint_url=model.endpoint_url or sts.endpoint_url,
        use_fips_endpoint=sts.use_fips_endpoint,
        use_dualstack_endpoint=sts.use_dualstack_endpoint,
        source_profile=model.source_profile,
        chained=_chained(model, scope.models),
        web_identity_token_file=(
            paths(model.web_identity_token_file) if model.web_identity_token_file else None
        ),
        external_id=model.external_id,
        policy=policy,
        policy_arns=tuple(model.policy_arns or ()),
        tags=tuple(sorted((model.tags or {}).items())),
        transitive_tag_keys=tuple(model.transitive_tag_keys or ()),
        source_identity=model.source_identity,
        adopt=bool(model.adopt),
        env_file=paths(model.env_file) if model.env_file else None,
        on_refresh=_hook(model.on_refresh, paths),
    )


def _hook(model: OnRefreshModel | None, paths: _Expand) -> cfg.HookSpec | None:
    if model is None:
        return None
    return cfg.HookSpec(
        command=tuple(model.command or ()),
        pid_file=paths(model.signal.pid_file) if model.signal else None,
        signal=model.signal.signal if model.signal else cfg.HookSpec.signal,
        timeout=model.timeout,
    )


class _Policy(NamedTuple):
    """The compacted inline policy, the files read for it (for the digest and the watcher)."""

    text: str | None
    problems: list[str]
    paths: tuple[Path, ...] = ()
    data: tuple[bytes, ...] = ()


def _policy(model: ProfileModel, where: _Where, paths: _Expand) -> _Policy:
    """The session policy as sent: from `policy`, or read from `policy_file`."""
    if model.policy is not None:
        return _Policy(*_compact_policy(model.policy, where("policy")))
    if model.policy_file is None:
        return _Policy(None, [])
    key = where("policy_file")
    path = paths(model.policy_file)
    try:
        data = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        return _Policy(None, [f"{key}: cannot read {path} ({reason})"], (path,))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return _Policy(None, [f"{key}: expected UTF-8 JSON in {path}"], (path,), (data,))
    return _Policy(*_compact_policy(text, key), (path,), (data,))


def _compact_policy(policy: object, path: str) -> tuple[str | None, list[str]]:
    """The JSON actually sent: compacted, and checked against STS's 2048-character limit."""
    if isinstance(policy, str):
        try:
            policy = json.loads(policy)
        except ValueError as exc:
            line = getattr(exc, "lineno", "?")
            return None, [f"{path}: expected a JSON policy document (line {line})"]
    if not isinstance(policy, dict):
        return None, [f"{path}: expected a JSON object policy document"]
    text = json.dumps(policy, separators=(",", ":"), ensure_ascii=False)
    if len(text) > MAX_POLICY_CHARS:
        return None, [
            f"{path}: expected at most {MAX_POLICY_CHARS} characters once compacted "
            f"(got {len(text)})"
        ]
    return text, []


def _chain_problems(models: _Models) -> list[str]:
    """Role chains must end at a non-config source: report each cycle once."""
    problems: list[str] = []
    reported: set[frozenset[str]] = set()
    for start in models:
        seen: list[str] = []
        current: str | None = start
        while current is not None and current in models:
            if current in seen:
                cycle = seen[seen.index(current) :]
                key = frozenset(cycle)
                if key not in reported and len(cycle) > 1:
                    reported.add(key)
                    chain = " -> ".join([*cycle, current])
                    problems.append(f"profiles.{cycle[0]}.source_profile: chaining cycle {chain}")
                break
            seen.append(current)
            current = models[current][0].source_profile
    return problems


@functools.lru_cache(maxsize=256)
def refresh_point_advice(duration: int, refresh_before: float | None) -> tuple[str, str] | None:
    """(key, message) when the refresh point falls inside a major SDK's refresh window.

    Cached: the search for a clear duration costs ~3 ms and 1,000 profiles share a handful of
    (duration, refresh_before) pairs (benchmarks/PROFILE.md, "Footprint").

    In-process consumers (credential_process, the container endpoint) then ask on every call
    until credfresh refreshes: worth a warning, not a refusal. The key is the one to change.
    """
    hit = refresh.sdk_windows_hit(duration, refresh_before)
    if not hit:
        return None
    window = refresh.window_for_lifetime(duration, refresh_before)
    named = [f"{sdk} ({cfg.config_duration(seconds)})" for sdk, seconds in hit]
    sdks = ", ".join(named[:-1]) + " and " + named[-1] if len(named) > 1 else named[0]
    problem = (
        f"credfresh refreshes {cfg.format_duration(window)} before expiry, inside the refresh "
        f"window of {sdks} for {duration} s credentials, so their in-process consumers "
        "(credential_process, the container endpoint) ask on every call until it does"
    )
    if refresh_before is not None and refresh_before < duration / 2:
        wanted = max(seconds for _, seconds in hit) + refresh.SDK_MARGIN
        if not refresh.sdk_windows_hit(duration, wanted):
            default_ok = not refresh.sdk_windows_hit(duration, None)
            return "refresh_before", (
                f"{problem}; set refresh_before to at least {cfg.config_duration(wanted)}"
                + (" or remove it to use the default" if default_ok else "")
            )
    clear = [
        seconds
        for seconds in range(900, 43201, 60)
        if not refresh.sdk_windows_hit(seconds, refresh_before)
    ]
    longer = [seconds for seconds in clear if seconds > duration]
    shorter = [seconds for seconds in clear if seconds < duration]
    if longer and shorter:
        fix = f"set duration_seconds to at least {longer[0]} (or at most {shorter[-1]})"
    elif longer:
        fix = f"set duration_seconds to at least {longer[0]}"
    elif shorter:
        fix = f"set duration_seconds to at most {shorter[-1]}"
    else:
        fix = "remove refresh_before to use the default"
    return "duration_seconds", f"{problem}; {fix}"
