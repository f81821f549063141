"""The document's pydantic models: types and single-field rules, with the model's defaults;
errors come out as `path: expectation` lines that never quote the value (`validated`)."""

from __future__ import annotations

import re
import signal
from typing import Annotated, Any, Final, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from credfresh.config import model as cfg

ROLE_ARN: Final = re.compile(
    r"arn:(aws|aws-cn|aws-us-gov):iam::(\d{12}):role/(?:[\x21-\x7e]{0,510}/)?[\w+=,.@-]{1,64}"
)
POLICY_ARN: Final = re.compile(r"arn:(aws|aws-cn|aws-us-gov):iam::(\d{12}|aws):policy/[\x21-\x7e]+")
SESSION_NAME: Final = re.compile(r"[A-Za-z0-9_+=,.@-]{2,64}")  # and SourceIdentity
REGION: Final = re.compile(r"[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d{1,2}")
URL: Final = re.compile(r"https?://[^\s/?#]+(/[^\s]*)?")
ROLE_ARN_HINT: Final = "expected an IAM role ARN like arn:aws:iam::123456789012:role/NAME"
_RA_ARN: Final = (
    r"arn:(aws|aws-cn|aws-us-gov):rolesanywhere:([a-z]{2}(?:-gov|-iso[a-z]?)?-[a-z]+-\d{1,2}):"
    r"(\d{12}):"
)
TRUST_ANCHOR_ARN: Final = re.compile(_RA_ARN + r"trust-anchor/[0-9A-Za-z-]{1,64}")
RA_PROFILE_ARN: Final = re.compile(_RA_ARN + r"profile/[0-9A-Za-z-]{1,64}")

ModelT = TypeVar("ModelT", bound=BaseModel)


def _matching(regex: re.Pattern[str], hint: str) -> AfterValidator:
    """A string rule: the whole value matches `regex`, or the problem is `hint`."""

    def check(value: str) -> str:
        if not regex.fullmatch(value):
            raise ValueError(hint)
        return value

    return AfterValidator(check)


def _duration_seconds(value: object) -> int:
    seconds = cfg.parse_duration(value)
    if seconds != int(seconds):
        raise ValueError("expected a whole number of seconds")
    return int(seconds)


def _policy_arns(value: list[str]) -> list[str]:
    if len(value) > 10:
        raise ValueError("expected at most 10 policy ARNs")
    if not all(POLICY_ARN.fullmatch(arn) for arn in value):
        raise ValueError("expected managed policy ARNs like arn:aws:iam::aws:policy/ReadOnlyAccess")
    return value


def _tags(value: dict[str, str]) -> dict[str, str]:
    if len(value) > 50:
        raise ValueError("expected at most 50 tags")
    for key, tag_value in value.items():
        if not 1 <= len(key) <= 128:
            raise ValueError("expected tag keys of 1 to 128 characters")
        if len(tag_value) > 256:
            raise ValueError("expected tag values of at most 256 characters")
    return value


def _listen(value: str) -> str:
    cfg.parse_listen(value)
    return value


def _container_listen(value: str) -> str:
    if cfg.parse_listen(value)[0] not in cfg.CONTAINER_HOSTS:
        raise ValueError(
            "expected one of the addresses botocore accepts over http: "
            "127.0.0.1, ::1, 169.254.170.23 or fd00:ec2::23, with a port"
        )
    return value


def _imds_listen(value: str) -> str:
    host, port = cfg.parse_listen(value)
    if host not in cfg.IMDS_HOSTS:
        raise ValueError("expected 127.0.0.1:PORT, [::1]:PORT or 169.254.169.254:80")
    if host == "169.254.169.254" and port != 80:
        raise ValueError("expected port 80 with 169.254.169.254 (where SDKs look)")
    return value


def _allow_uids(value: list[int]) -> list[int]:
    if cfg.OVERFLOW_UID in value:
        raise ValueError(
            "expected uids other than 65534: the kernel shows every user unmapped in a user "
            "namespace (systemd's PrivateUsers=) as that uid"
        )
    return value


Duration = Annotated[float, BeforeValidator(cfg.parse_duration)]
DurationSeconds = Annotated[int, BeforeValidator(_duration_seconds), Field(ge=900, le=43200)]
NonEmpty = Annotated[str, Field(min_length=1)]
StsName = Annotated[
    str, _matching(SESSION_NAME, "expected 2 to 64 characters of letters, digits and +=,.@_-")
]
Url = Annotated[
    str, _matching(URL, "expected an http(s) URL like https://sts.eu-west-1.amazonaws.com")
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True, strict=False)


class RolesAnywhereModel(_Strict):
    """A `roles_anywhere:` mapping: the files CreateSession is signed with, and its ARNs."""

    certificate: NonEmpty
    private_key: NonEmpty
    certificate_chain: NonEmpty | None = None
    trust_anchor_arn: Annotated[
        str,
        _matching(
            TRUST_ANCHOR_ARN,
            "expected a Roles Anywhere trust anchor ARN like "
            "arn:aws:rolesanywhere:us-east-1:123456789012:trust-anchor/ID",
        ),
    ]
    profile_arn: Annotated[
        str,
        _matching(
            RA_PROFILE_ARN,
            "expected a Roles Anywhere profile ARN like "
            "arn:aws:rolesanywhere:us-east-1:123456789012:profile/ID",
        ),
    ]
    role_arn: Annotated[str, _matching(ROLE_ARN, ROLE_ARN_HINT)]
    session_name: StsName | None = None
    endpoint_url: Url | None = None


def _signal_name(value: str) -> str:
    """`SIGHUP` or `HUP`, as the signal's full name; the numbers differ between systems."""
    name = value.strip().upper()
    name = name if name.startswith("SIG") else f"SIG{name}"
    if name not in signal.Signals.__members__:
        raise ValueError("expected a signal name like SIGHUP, SIGUSR1 or SIGTERM")
    return name


class HookSignalModel(_Strict):
    pid_file: NonEmpty
    signal: Annotated[str, AfterValidator(_signal_name)] = cfg.HookSpec.signal


class OnRefreshModel(_Strict):
    """`on_refresh`: what to run after a write carried the profile's new credentials."""

    command: Annotated[list[NonEmpty], Field(min_length=1)] | None = None
    signal: HookSignalModel | None = None
    timeout: Annotated[Duration, Field(gt=0, le=3600)] = cfg.DEFAULT_HOOK_TIMEOUT

    @model_validator(mode="after")
    def _something(self) -> OnRefreshModel:
        if self.command is None and self.signal is None:
            raise ValueError("expected command, signal or both")
        return self


class ProfileModel(_Strict):
    """Every key a profile (or `defaults`) may carry; None is unset (defaults come later)."""

    role_arn: Annotated[str, _matching(ROLE_ARN, ROLE_ARN_HINT)] | None = None
    role_session_name: StsName | None = None
    external_id: Annotated[str, Field(min_length=2, max_length=1224)] | None = None
    duration_seconds: DurationSeconds | None = None
    region: Annotated[str, _matching(REGION, "expected an AWS region like us-east-1")] | None = None
    endpoint_url: Url | None = None
    source_profile: NonEmpty | None = None
    web_identity_token_file: NonEmpty | None = None
    policy: dict[str, Any] | str | None = None
    policy_file: NonEmpty | None = None
    policy_arns: Annotated[list[str], AfterValidator(_policy_arns)] | None = None
    tags: Annotated[dict[str, str], AfterValidator(_tags)] | None = None
    transitive_tag_keys: list[str] | None = None
    source_identity: StsName | None = None
    refresh_before: Duration | None = None
    adopt: bool | None = None
    roles_anywhere: RolesAnywhereModel | None = None
    env_file: NonEmpty | None = None
    on_refresh: OnRefreshModel | None = None


class StsModel(_Strict):
    endpoint_url: Url | None = cfg.StsSettings.endpoint_url
    use_fips_endpoint: bool = cfg.StsSettings.use_fips_endpoint
    use_dualstack_endpoint: bool = cfg.StsSettings.use_dualstack_endpoint
    max_concurrency: Annotated[int, Field(ge=1, le=256)] = cfg.StsSettings.max_concurrency
    timeout: Annotated[Duration, Field(gt=0, le=300)] = cfg.StsSettings.timeout
    roles_anywhere_rate: Annotated[float, Field(gt=0, le=1000)] = (
        cfg.StsSettings.roles_anywhere_rate
    )


class RetryModel(_Strict):
    initial: Annotated[Duration, Field(gt=0, le=86400)] = cfg.RetrySettings.initial
    max: Annotated[Duration, Field(gt=0, le=86400)] = cfg.RetrySettings.max


class AlertsModel(_Strict):
    after: Duration = cfg.AlertSettings.after
    expiry_warning: Duration = cfg.AlertSettings.expiry_warning
    certificate_warning: Duration = cfg.AlertSettings.certificate_warning
    repeat: Annotated[Duration, Field(gt=0)] = cfg.AlertSettings.repeat
    webhook_url: Url | None = cfg.AlertSettings.webhook_url
    command: Annotated[list[str], Field(min_length=1)] | None = None  # None: no command
    command_timeout: Annotated[Duration, Field(gt=0, le=3600)] = cfg.AlertSettings.command_timeout


class HttpModel(_Strict):
    listen: Annotated[str, AfterValidator(_listen)] | None = cfg.HttpSettings.listen


class MetricsModel(_Strict):
    textfile: NonEmpty | None = None


class ContainerCredentialsModel(_Strict):
    listen: Annotated[str, AfterValidator(_container_listen)] | None = None
    token_file: NonEmpty | None = None


class ImdsModel(_Strict):
    listen: Annotated[str, AfterValidator(_imds_listen)] | None = cfg.ImdsSettings.listen
    profile: NonEmpty | None = cfg.ImdsSettings.profile
    allow_v1: bool = cfg.ImdsSettings.allow_v1
    hop_limit: Annotated[int, Field(ge=1, le=64)] = cfg.ImdsSettings.hop_limit
    allow_uids: (
        Annotated[
            list[Annotated[int, Field(ge=0, le=2**32 - 2)]],
            Field(min_length=1),
            AfterValidator(_allow_uids),
        ]
        | None
    ) = None  # None: the daemon's own euid


class TopModel(_Strict):
    credentials_file: NonEmpty | None = None
    state_file: NonEmpty | None = None
    owner: Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^\r\n]+$")] | None = None
    defaults: dict[str, Any] | None = None
    sts: dict[str, Any] | None = None
    retry: dict[str, Any] | None = None
    profiles: dict[str, Any] | None = None
    alerts: dict[str, Any] | None = None
    http: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    container_credentials: dict[str, Any] | None = None
    imds: dict[str, Any] | None = None


_MESSAGES: Final = {
    "extra_forbidden": "unknown key",
    "missing": "required",
    "greater_than_equal": "expected at least {ge}",
    "greater_than": "expected more than {gt}",
    "less_than_equal": "expected at most {le}",
    "less_than": "expected less than {lt}",
    **dict.fromkeys(("int_parsing", "int_type", "int_from_float"), "expected a whole number"),
    **dict.fromkeys(("float_parsing", "float_type"), "expected a number"),
    **dict.fromkeys(("bool_parsing", "bool_type"), "expected true or false"),
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


def validated(model: type[ModelT], data: object, prefix: str) -> tuple[ModelT | None, list[str]]:
    """Validate, then again without the keys that failed, so cross-checks still run."""
    data = {} if data is None else data
    try:
        return model.model_validate(data), []
    except ValidationError as exc:
        problems = _problems(exc, prefix)
        if not isinstance(data, dict):
            return None, problems
        failed = {item["loc"][0] for item in exc.errors() if item["loc"]}
    try:
        return model.model_validate({k: v for k, v in data.items() if k not in failed}), problems
    except ValidationError:
        return None, problems


def section(model: type[ModelT], data: object, prefix: str) -> tuple[ModelT, list[str]]:
    """`validated`, falling back to the section's defaults; the problems say why."""
    found, problems = validated(model, data, prefix)
    return found or model(), problems
