"""Full config validation: every problem at once, each with its path, never a value.

pydantic checks types and single fields; the rules that relate fields (partitions, chaining,
web identity) are plain functions below, run on whatever validated.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from credfresh.config import model as cfg
from credfresh.engine import policy as refresh
from credfresh.errors import ConfigError

ROLE_ARN: Final = re.compile(
    r"arn:(aws|aws-cn|aws-us-gov):iam::(\d{12}):role/(?:[\x21-\x7e]{0,510}/)?[\w+=,.@-]{1,64}"
)
POLICY_ARN: Final = re.compile(r"arn:(aws|aws-cn|aws-us-gov):iam::(\d{12}|aws):policy/[\x21-\x7e]+")
SESSION_NAME: Final = re.compile(r"[A-Za-z0-9_+=,.@-]{2,64}")
SOURCE_IDENTITY: Final = re.compile(r"[A-Za-z0-9_+=,.@-]{2,64}")
REGION: Final = re.compile(r"[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d{1,2}")
PROFILE_NAME: Final = re.compile(r"[A-Za-z0-9_.@+=,:/-]{1,128}")
ROLE_ARN_HINT: Final = "expected an IAM role ARN like arn:aws:iam::123456789012:role/NAME"
MAX_POLICY_CHARS: Final = 2048
CHAINED_MAX_DURATION: Final = 3600


_M = TypeVar("_M", bound=BaseModel)


def _duration(value: object) -> float:
    return cfg.parse_duration(value)


def _duration_seconds(value: object) -> int:
    seconds = cfg.parse_duration(value)
    if seconds != int(seconds):
        raise ValueError("expected a whole number of seconds")
    return int(seconds)


Duration = Annotated[float, BeforeValidator(_duration)]
DurationSeconds = Annotated[int, BeforeValidator(_duration_seconds), Field(ge=900, le=43200)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True, strict=False)


class ProfileModel(_Strict):
    """Every key a profile (or `defaults`) may carry."""

    role_arn: str | None = None
    role_session_name: str | None = None
    external_id: Annotated[str, Field(min_length=2, max_length=1224)] | None = None
    duration_seconds: DurationSeconds | None = None
    region: str | None = None
    endpoint_url: str | None = None
    source_profile: Annotated[str, Field(min_length=1)] | None = None
    web_identity_token_file: Annotated[str, Field(min_length=1)] | None = None
    policy: dict[str, Any] | str | None = None
    policy_file: Annotated[str, Field(min_length=1)] | None = None
    policy_arns: list[str] | None = None
    tags: dict[str, str] | None = None
    transitive_tag_keys: list[str] | None = None
    source_identity: str | None = None
    refresh_before: Duration | None = None
    adopt: bool | None = None

    @field_validator("role_arn")
    @classmethod
    def _role_arn(cls, value: str | None) -> str | None:
        if value is not None and not ROLE_ARN.fullmatch(value):
            raise ValueError(ROLE_ARN_HINT)
        return value

    @field_validator("role_session_name")
    @classmethod
    def _session_name(cls, value: str | None) -> str | None:
        if value is not None and not SESSION_NAME.fullmatch(value):
            raise ValueError("expected 2 to 64 characters of letters, digits and +=,.@_-")
        return value

    @field_validator("source_identity")
    @classmethod
    def _source_identity(cls, value: str | None) -> str | None:
        if value is not None and not SOURCE_IDENTITY.fullmatch(value):
            raise ValueError("expected 2 to 64 characters of letters, digits and +=,.@_-")
        return value

    @field_validator("region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        if value is not None and not REGION.fullmatch(value):
            raise ValueError("expected an AWS region like us-east-1")
        return value

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return _check_url(value)

    @field_validator("policy_arns")
    @classmethod
    def _policy_arns(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        if len(value) > 10:
            raise ValueError("expected at most 10 policy ARNs")
        for arn in value:
            if not POLICY_ARN.fullmatch(arn):
                raise ValueError(
                    "expected managed policy ARNs like arn:aws:iam::aws:policy/ReadOnlyAccess"
                )
        return value

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return value
        if len(value) > 50:
            raise ValueError("expected at most 50 tags")
        for key, tag_value in value.items():
            if not 1 <= len(key) <= 128:
                raise ValueError("expected tag keys of 1 to 128 characters")
            if len(tag_value) > 256:
                raise ValueError("expected tag values of at most 256 characters")
        return value


def _check_url(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s]*)?", value):
        raise ValueError("expected an http(s) URL like https://sts.eu-west-1.amazonaws.com")
    return value


class StsModel(_Strict):
    endpoint_url: str | None = None
    use_fips_endpoint: bool = False
    use_dualstack_endpoint: bool = False
    max_concurrency: Annotated[int, Field(ge=1, le=256)] = 16
    timeout: Annotated[Duration, Field(gt=0, le=300)] = 10.0

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return _check_url(value)


class RetryModel(_Strict):
    initial: Annotated[Duration, Field(gt=0, le=86400)] = 5.0
    max: Annotated[Duration, Field(gt=0, le=86400)] = 300.0


class AlertsModel(_Strict):
    after: Duration = 300.0
    expiry_warning: Duration = 600.0
    repeat: Annotated[Duration, Field(gt=0)] = 3600.0
    webhook_url: str | None = None
    command: Annotated[list[str], Field(min_length=1)] | None = None
    command_timeout: Annotated[Duration, Field(gt=0, le=3600)] = 30.0

    @field_validator("webhook_url")
    @classmethod
    def _webhook(cls, value: str | None) -> str | None:
        return _check_url(value)


class HttpModel(_Strict):
    listen: str | None = None

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value is not None:
            split_listen(value)
        return value


class MetricsModel(_Strict):
    textfile: Annotated[str, Field(min_length=1)] | None = None


CONTAINER_HOSTS: Final = ("127.0.0.1", "::1", "169.254.170.23", "fd00:ec2::23")


class ContainerCredentialsModel(_Strict):
    listen: str | None = None
    token_file: Annotated[str, Field(min_length=1)] | None = None

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value is not None:
            host, _ = split_listen(value)
            if host not in CONTAINER_HOSTS:
                raise ValueError(
                    "expected one of the addresses botocore accepts over http: "
                    "127.0.0.1, ::1, 169.254.170.23 or fd00:ec2::23, with a port"
                )
        return value


class TopModel(_Strict):
    credentials_file: Annotated[str, Field(min_length=1)] | None = None
    state_file: Annotated[str, Field(min_length=1)] | None = None
    owner: Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^\r\n]+$")] | None = None
    defaults: dict[str, Any] | None = None
    sts: dict[str, Any] | None = None
    retry: dict[str, Any] | None = None
    profiles: dict[str, Any] | None = None
    alerts: dict[str, Any] | None = None
    http: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    container_credentials: dict[str, Any] | None = None


def split_listen(value: str) -> tuple[str, int]:
    """`127.0.0.1:9464` or `[::]:9464` into host and port; raise ValueError otherwise."""
    match = re.fullmatch(r"(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})", value)
    if not match or not 0 <= int(match.group(3)) < 65536:
        raise ValueError("expected HOST:PORT like 127.0.0.1:9464 or [::]:9464")
    return (match.group(1) or match.group(2)), int(match.group(3))


_MESSAGES: Final = {
    "extra_forbidden": "unknown key",
    "missing": "required",
    "greater_than_equal": "expected at least {ge}",
    "greater_than": "expected more than {gt}",
    "less_than_equal": "expected at most {le}",
    "less_than": "expected less than {lt}",
    "int_parsing": "expected a whole number",
    "int_type": "expected a whole number",
    "int_from_float": "expected a whole number",
    "float_parsing": "expected a number",
    "float_type": "expected a number",
    "bool_parsing": "expected true or false",
    "bool_type": "expected true or false",
    "string_type": "expected a string",
    "dict_type": "expected a mapping",
    "list_type": "expected a list",
    "string_too_short": "expected at least {min_length} characters",
    "string_too_long": "expected at most {max_length} characters",
    "too_short": "expected at least {min_length} items",
    "too_long": "expected at most {max_length} items",
    "string_pattern_mismatch": "expected a single line of text",
}


def _problems(error: ValidationError, prefix: str) -> list[str]:
    """pydantic's errors as `path: expectation` lines, without the input values."""
    out = []
    for item in error.errors(include_input=False, include_url=False):
        parts = [str(part) for part in item["loc"]]
        loc = parts[:1] + [part for part in parts[1:] if not _is_type_tag(part)]
        path = ".".join(part for part in (prefix, *loc) if part)
        template = _MESSAGES.get(item["type"])
        ctx = item.get("ctx") or {}
        message = template.format(**ctx) if template else str(item["msg"])
        message = message.removeprefix("Value error, ")
        line = f"{path or '(top level)'}: {message}"
        if line not in out:
            out.append(line)
    return out


def _is_type_tag(part: str) -> bool:
    """pydantic puts union members (`str`, `dict[str,any]`) into error paths: drop them."""
    return "[" in part or part.startswith("function-") or part in _TYPE_TAGS


_TYPE_TAGS: Final = {"str", "int", "float", "bool", "constrained-str", "constrained-int"}


def _validate(model: type[_M], data: object, prefix: str, problems: list[str]) -> _M | None:
    """Validate, then again without the keys that failed, so cross-checks still run."""
    data = {} if data is None else data
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems.extend(_problems(exc, prefix))
        if not isinstance(data, dict):
            return None
        failed = {item["loc"][0] for item in exc.errors() if item["loc"]}
    try:
        return model.model_validate({k: v for k, v in data.items() if k not in failed})
    except ValidationError:
        return None


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> cfg.Config:
    """Read and validate a config file; raise ConfigError listing every problem."""
    env = os.environ if environ is None else environ
    raw = cfg.read_bytes(path)
    document = cfg.parse_document(raw, path)
    return build_config(document, path, env, raw)


def build_config(
    document: Mapping[str, Any], path: Path, environ: Mapping[str, str], raw: bytes = b""
) -> cfg.Config:
    problems: list[str] = []
    warnings: list[str] = []
    top = _validate(TopModel, document, "", problems) or TopModel()
    sts = _validate(StsModel, top.sts, "sts", problems)
    retry = _validate(RetryModel, top.retry, "retry", problems)
    alerts = _validate(AlertsModel, top.alerts, "alerts", problems)
    http = _validate(HttpModel, top.http, "http", problems)
    metrics = _validate(MetricsModel, top.metrics, "metrics", problems)
    container = _validate(
        ContainerCredentialsModel, top.container_credentials, "container_credentials", problems
    )
    if retry is not None and retry.initial > retry.max:
        problems.append("retry.initial: expected a value no larger than retry.max")
    if container is not None and container.listen and not container.token_file:
        problems.append("container_credentials.token_file: required when listen is set")
    defaults = _validate(ProfileModel, top.defaults, "defaults", problems)
    default_values = defaults.model_dump(exclude_none=True) if defaults else {}
    profiles_doc = top.profiles or {}
    if not profiles_doc:
        warnings.append("profiles: no profiles configured; credfresh has nothing to refresh")
    base = path.parent
    policy_parts: list[bytes] = []
    policy_paths: list[Path] = []
    models: dict[str, tuple[ProfileModel, set[str]]] = {}
    for name, raw_body in profiles_doc.items():
        prefix = f"profiles.{name}"
        body = {} if raw_body is None else raw_body
        if not PROFILE_NAME.fullmatch(name):
            problems.append(f"{prefix}: expected a profile name of letters, digits and _.@+=,:/-")
            continue
        if not isinstance(body, dict):
            problems.append(f"{prefix}: expected a mapping of profile keys")
            continue
        explicit = set(body)
        inherited = {k: v for k, v in default_values.items() if k not in explicit}
        if "web_identity_token_file" in body or "web_identity_token_file" in inherited:
            for key in _NOT_WITH_WEB_IDENTITY:
                inherited.pop(key, None)
        model = _validate(ProfileModel, {**body}, prefix, problems)
        if model is None:
            continue
        merged = ProfileModel.model_validate({**inherited, **model.model_dump(exclude_none=True)})
        models[name] = (merged, explicit)
    profiles: dict[str, cfg.Profile] = {}
    for name, (model, explicit) in models.items():
        profile = _profile(
            name,
            model,
            explicit=explicit,
            models=models,
            sts=sts,
            base=base,
            problems=problems,
            warnings=warnings,
            policy_parts=policy_parts,
            policy_paths=policy_paths,
        )
        if profile is not None:
            profiles[name] = profile
    _check_chains(models, problems)
    if problems:
        raise ConfigError(problems, path=str(path))
    warnings = list(dict.fromkeys(warnings))
    assert sts is not None and retry is not None and alerts is not None  # noqa: PT018
    assert http is not None and metrics is not None and container is not None  # noqa: PT018
    credentials_file, owner, state_file = cfg.resolve_paths(document, path, environ)
    return cfg.Config(
        path=path,
        credentials_file=credentials_file,
        state_file=state_file,
        owner=owner,
        sts=cfg.StsSettings(
            endpoint_url=sts.endpoint_url,
            use_fips_endpoint=sts.use_fips_endpoint,
            use_dualstack_endpoint=sts.use_dualstack_endpoint,
            max_concurrency=sts.max_concurrency,
            timeout=sts.timeout,
        ),
        retry=cfg.RetrySettings(initial=retry.initial, max=retry.max),
        alerts=cfg.AlertSettings(
            after=alerts.after,
            expiry_warning=alerts.expiry_warning,
            repeat=alerts.repeat,
            webhook_url=alerts.webhook_url,
            command=tuple(alerts.command or ()),
            command_timeout=alerts.command_timeout,
        ),
        http=cfg.HttpSettings(listen=http.listen),
        metrics=cfg.MetricsSettings(
            textfile=cfg.expand_path(metrics.textfile, base) if metrics.textfile else None
        ),
        container_credentials=cfg.ContainerCredentialsSettings(
            listen=container.listen,
            token_file=cfg.expand_path(container.token_file, base)
            if container.token_file
            else None,
        ),
        profiles=profiles,
        digest=cfg.digest_of(raw, *policy_parts),
        warnings=tuple(warnings),
        policy_files=tuple(dict.fromkeys(policy_paths)),
    )


_NOT_WITH_WEB_IDENTITY: Final = (
    "source_profile",
    "external_id",
    "tags",
    "transitive_tag_keys",
    "source_identity",
)


def _partition(arn: str) -> str:
    return arn.split(":", 2)[1]


def _region_partition(region: str) -> str:
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def _profile(
    name: str,
    model: ProfileModel,
    *,
    explicit: set[str],
    models: Mapping[str, tuple[ProfileModel, set[str]]],
    sts: StsModel | None,
    base: Path,
    problems: list[str],
    warnings: list[str],
    policy_parts: list[bytes],
    policy_paths: list[Path],
) -> cfg.Profile | None:
    prefix = f"profiles.{name}"
    start = len(problems)

    def where(key: str) -> str:
        return f"{prefix}.{key}" if key in explicit else f"defaults.{key}"

    if not model.role_arn and "role_arn" not in explicit:
        problems.append(f"{prefix}.role_arn: required; {ROLE_ARN_HINT}")
    region = model.region
    if model.role_arn and region and _partition(model.role_arn) != _region_partition(region):
        problems.append(
            f"{where('region')}: expected a region of the role ARN's partition "
            f"{_partition(model.role_arn)}"
        )
    if model.web_identity_token_file:
        for key in _NOT_WITH_WEB_IDENTITY:
            if getattr(model, key) is not None:
                problems.append(
                    f"{prefix}.{key}: not allowed with web_identity_token_file "
                    "(AssumeRoleWithWebIdentity takes no such parameter)"
                )
    if model.policy is not None and model.policy_file is not None:
        problems.append(f"{prefix}.policy_file: not allowed together with policy (choose one)")
    policy_text: str | None = None
    if model.policy is not None:
        policy_text = _compact_policy(model.policy, where("policy"), problems)
    elif model.policy_file is not None:
        policy_path = cfg.expand_path(model.policy_file, base)
        policy_paths.append(policy_path)
        try:
            data = policy_path.read_bytes()
        except OSError as exc:
            problems.append(
                f"{where('policy_file')}: cannot read {policy_path} "
                f"({exc.strerror or type(exc).__name__})"
            )
        else:
            policy_parts.append(data)
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                problems.append(f"{where('policy_file')}: expected UTF-8 JSON in {policy_path}")
            else:
                policy_text = _compact_policy(text, where("policy_file"), problems)
    if model.transitive_tag_keys:
        tag_keys = set((model.tags or {}).keys())
        if not set(model.transitive_tag_keys) <= tag_keys:
            problems.append(
                f"{where('transitive_tag_keys')}: expected keys that are among the tags"
            )
    chained = bool(model.source_profile and model.source_profile in models)
    duration = model.duration_seconds or 3600
    if chained and duration > CHAINED_MAX_DURATION:
        problems.append(
            f"{where('duration_seconds')}: expected at most 3600 for a chained role "
            "(AWS caps role chaining at one hour)"
        )
    if model.source_profile == name:
        problems.append(f"{prefix}.source_profile: a profile cannot be its own source")
    advice = refresh_point_advice(duration, model.refresh_before)
    if advice is not None:
        warnings.append(f"{where(advice[0])}: {advice[1]}")
    if len(problems) > start or not model.role_arn:
        return None
    sts_model = sts or StsModel()
    return cfg.Profile(
        name=name,
        role_arn=model.role_arn,
        role_session_name=model.role_session_name or _default_session_name(name),
        duration_seconds=duration,
        region=region,
        refresh_before=model.refresh_before,
        endpoint_url=model.endpoint_url or sts_model.endpoint_url,
        use_fips_endpoint=sts_model.use_fips_endpoint,
        use_dualstack_endpoint=sts_model.use_dualstack_endpoint,
        source_profile=model.source_profile,
        chained=chained,
        web_identity_token_file=(
            cfg.expand_path(model.web_identity_token_file, base)
            if model.web_identity_token_file
            else None
        ),
        external_id=model.external_id,
        policy=policy_text,
        policy_arns=tuple(model.policy_arns or ()),
        tags=tuple(sorted((model.tags or {}).items())),
        transitive_tag_keys=tuple(model.transitive_tag_keys or ()),
        source_identity=model.source_identity,
        adopt=bool(model.adopt),
    )


def _default_session_name(profile: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_+=,.@-]", "-", f"credfresh-{profile}")
    return cleaned[:64]


def _compact_policy(policy: object, path: str, problems: list[str]) -> str | None:
    """The JSON actually sent: compacted, and checked against STS's 2048-character limit."""
    if isinstance(policy, str):
        try:
            policy = json.loads(policy)
        except ValueError as exc:
            problems.append(f"{path}: expected a JSON policy document (line {_line(exc)})")
            return None
    if not isinstance(policy, dict):
        problems.append(f"{path}: expected a JSON object policy document")
        return None
    text = json.dumps(policy, separators=(",", ":"), ensure_ascii=False)
    if len(text) > MAX_POLICY_CHARS:
        problems.append(
            f"{path}: expected at most {MAX_POLICY_CHARS} characters once compacted "
            f"(got {len(text)})"
        )
        return None
    return text


def _line(exc: ValueError) -> str:
    return str(getattr(exc, "lineno", "?"))


def _check_chains(models: Mapping[str, tuple[ProfileModel, set[str]]], problems: list[str]) -> None:
    """Role chains must end at a non-config source: report each cycle once."""
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


def refresh_point_advice(duration: int, refresh_before: float | None) -> tuple[str, str] | None:
    """(key, message) when the refresh point falls inside a major SDK's refresh window.

    In-process consumers (credential_process, the container endpoint) then ask on every call
    until credfresh refreshes: worth a warning, not a refusal. The key is the one to change.
    """
    hit = refresh.sdk_windows_hit(duration, refresh_before)
    if not hit:
        return None
    window = refresh.window_for_lifetime(duration, refresh_before)
    named = [f"{sdk} ({_as_duration(seconds)})" for sdk, seconds in hit]
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
                f"{problem}; set refresh_before to at least {_as_duration(wanted)}"
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


def _as_duration(seconds: float) -> str:
    """A duration as the config writes it (`65m`, `450s`), so a warning can be copied."""
    whole = round(seconds)
    return f"{whole // 60}m" if whole % 60 == 0 else f"{whole}s"
