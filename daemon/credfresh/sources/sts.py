"""STS calls: shared clients, error classification and response checks.

Clients are expensive (aws-facts.md: a boto3 Session per refresh costs ~8 MB and 100 ms), so
there is one per (source, region, endpoint, fips, dualstack), created from sessions that
share one model loader. botocore's retries are off: credfresh's own backoff decides.
"""

from __future__ import annotations

import dataclasses
import email.utils
import re
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from credfresh.config.model import Profile, StsSettings
from credfresh.credentials import Credentials
from credfresh.errors import CredfreshError
from credfresh.sources.deadline import CallGuard, DeadlineExceeded

if TYPE_CHECKING:
    import botocore.session

T = TypeVar("T")

MAX_EXPIRY_SLACK: Final = timedelta(minutes=5)
SKEW_REPORT: Final = timedelta(minutes=5)
SKEW_IGNORED_BELOW: Final = timedelta(seconds=2)
ROTATION_CODES: Final = frozenset({"InvalidClientTokenId", "SignatureDoesNotMatch", "ExpiredToken"})

# The AWS formats of what credfresh takes from an answer, checked whole (`fullmatch`): a
# newline or any other stray character in a value would end up in the credentials file.
ACCESS_KEY_ID: Final = re.compile(r"[A-Za-z0-9_]{16,128}")
SECRET_ACCESS_KEY: Final = re.compile(r"[A-Za-z0-9/+=]{1,256}")
SESSION_TOKEN: Final = re.compile(r"[A-Za-z0-9/+=_-]{1,16384}")
CREDENTIAL_FORMATS: Final = {
    "AccessKeyId": ACCESS_KEY_ID,
    "SecretAccessKey": SECRET_ACCESS_KEY,
    "SessionToken": SESSION_TOKEN,
}
ASSUMED_ROLE_ARN: Final = re.compile(
    r"arn:aws(?:-[a-z]+)*:sts::\d{12}:assumed-role/[A-Za-z0-9_+=,.@-]{1,64}/[A-Za-z0-9_+=,.@-]{1,64}"
)
EXPIRATION_TEXT: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})?"
)

PERMANENT_CODES: Final = frozenset(
    {
        "AccessDenied",
        "MalformedPolicyDocument",
        "PackedPolicyTooLarge",
        "RegionDisabledException",
        "ValidationError",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidIdentityToken",
        "InvalidParameterValue",
        "no_source_credentials",
        "source_profile_not_found",
        "web_identity_token_unreadable",
    }
)
TRANSIENT_CODES: Final = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "IDPCommunicationError",
        "ExpiredTokenException",
        "InternalFailure",
        "InternalError",
        "ServiceUnavailable",
        "connection_error",
        "timeout",
        "invalid_response",
        "source_unavailable",
    }
)

HINTS: Final[Mapping[str, str]] = {
    "AccessDenied": "the role's trust policy must name the caller (e.g. the IAM user's ARN, "
    "not a role ARN), and the caller needs sts:AssumeRole on the role",
    "MalformedPolicyDocument": "the session policy (policy / policy_file) is not a valid "
    "IAM policy; the message says what is wrong",
    "PackedPolicyTooLarge": "the session policy plus tags are too large: shorten the policy, "
    "use policy_arns, or drop tags",
    "RegionDisabledException": "activate STS for this region in IAM (Account settings), or "
    "set another `region` for the profile",
    "ExpiredToken": "the source credentials have expired: renew them or rotate the keys",
    "InvalidClientTokenId": "the source access key is not valid: check or rotate the keys "
    "of the source profile",
    "SignatureDoesNotMatch": "the source secret key does not match its access key id; "
    "'Signature expired' means the clock is off: check NTP",
    "Throttling": "STS is rate limiting: credfresh backs off; lower sts.max_concurrency if "
    "it persists",
    "ValidationError": "a parameter is out of range, e.g. duration_seconds above the role's "
    "maximum session duration",
    "connection_error": "STS could not be reached: check the network, proxy and endpoint_url",
    "timeout": "STS did not answer within sts.timeout (to connect, plus sts.timeout for the "
    "whole answer)",
    "invalid_response": "STS's answer was not a valid credential response (a captive proxy "
    "or a broken endpoint?)",
    "no_source_credentials": "no source credentials were found: set source_profile or "
    "provide credentials through the default chain",
    "source_profile_not_found": "the source_profile does not exist in the AWS config or "
    "credentials file",
    "source_unavailable": "the source profile of this chained role has no valid credentials",
    "web_identity_token_unreadable": "the web_identity_token_file cannot be read",
    "InvalidIdentityToken": "the web identity token was rejected: check the OIDC provider "
    "and the role's trust policy",
}


@dataclasses.dataclass(frozen=True)
class Failure:
    """A classified STS failure: `permanent` needs a human, otherwise retry later."""

    code: str
    message: str
    permanent: bool
    hint: str | None = None
    status: int | None = None


class StsError(CredfreshError):
    def __init__(self, failure: Failure, profile: str | None = None) -> None:
        super().__init__(f"{failure.code}: {failure.message}", code=failure.code, profile=profile)
        self.failure = failure


def classify(code: str, message: str = "", status: int | None = None) -> Failure:
    """Permanent or transient, with a one-line hint for the common errors."""
    if code in PERMANENT_CODES:
        permanent = True
    elif code in TRANSIENT_CODES:
        permanent = False
    else:
        permanent = status is not None and 400 <= status < 500
    hint = HINTS.get(code)
    if code == "SignatureDoesNotMatch" and "expired" in message.lower():
        hint = "'Signature expired': this machine's clock is off; check NTP"
    return Failure(
        code=code, message=_clean(message), permanent=permanent, hint=hint, status=status
    )


def _clean(message: str) -> str:
    """One line, bounded: STS messages may be long, and may echo request text."""
    line = " ".join(message.split())
    return line[:300]


def response_date(headers: Mapping[str, str]) -> datetime | None:
    value = headers.get("date")
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).astimezone(UTC)
    except (TypeError, ValueError, IndexError):
        return None


def clock_skew(received_at: datetime, server_date: datetime | None) -> timedelta:
    """Local clock minus server clock; differences under 2 s are the Date header's rounding."""
    if server_date is None:
        return timedelta(0)
    skew = received_at - server_date
    return skew if abs(skew) >= SKEW_IGNORED_BELOW else timedelta(0)


def accept_response(
    response: Mapping[str, Any],
    *,
    received_at: datetime,
    duration_seconds: int,
) -> tuple[Credentials, timedelta]:
    """Check an AssumeRole* response and turn it into local Credentials, or raise StsError.

    The local expiry is `Expiration + skew`; it must satisfy
    `now < expiry <= now + duration_seconds + 5 min`, otherwise nothing is written.
    """
    creds = response.get("Credentials")
    if not isinstance(creds, Mapping):
        raise StsError(classify("invalid_response", "response has no Credentials"))
    fields = {}
    for name, pattern in CREDENTIAL_FORMATS.items():
        value = creds.get(name)
        if not isinstance(value, str) or not value.strip() or not value.isascii():
            raise StsError(
                classify("invalid_response", f"response field {name} is missing or empty")
            )
        if not pattern.fullmatch(value):
            raise StsError(classify("invalid_response", f"response field {name} is malformed"))
        fields[name] = value
    expiration = creds.get("Expiration")
    if isinstance(expiration, str):
        from credfresh.credentials import parse_time

        try:
            expiration = parse_time(expiration) if EXPIRATION_TEXT.fullmatch(expiration) else None
        except ValueError:
            expiration = None
    if not isinstance(expiration, datetime):
        raise StsError(classify("invalid_response", "response field Expiration is missing"))
    if expiration.tzinfo is None:
        expiration = expiration.replace(tzinfo=UTC)
    headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    skew = clock_skew(received_at, response_date(headers))
    local_expiry = expiration.astimezone(UTC) + skew
    if local_expiry <= received_at:
        raise StsError(classify("invalid_response", "response Expiration is in the past"))
    if local_expiry > received_at + timedelta(seconds=duration_seconds) + MAX_EXPIRY_SLACK:
        raise StsError(
            classify("invalid_response", "response Expiration is later than the requested duration")
        )
    principal = _principal(response)
    return (
        Credentials(
            access_key_id=fields["AccessKeyId"],
            secret_access_key=fields["SecretAccessKey"],
            session_token=fields["SessionToken"],
            expiration=local_expiry,
            issued=received_at,
            principal_arn=principal,
        ),
        skew,
    )


def _principal(response: Mapping[str, Any]) -> str:
    """The assumed-role ARN, or "" when the answer names none; anything else is refused."""
    assumed = response.get("AssumedRoleUser")
    if assumed is None:
        return ""
    arn = assumed.get("Arn") if isinstance(assumed, Mapping) else None
    if arn is None and isinstance(assumed, Mapping):
        return ""
    if not isinstance(arn, str) or not ASSUMED_ROLE_ARN.fullmatch(arn):
        raise StsError(
            classify("invalid_response", "response field AssumedRoleUser.Arn is malformed")
        )
    return arn


def assume_role_params(profile: Profile) -> dict[str, Any]:
    """The AssumeRole / AssumeRoleWithWebIdentity parameters for a profile (no token)."""
    params: dict[str, Any] = {
        "RoleArn": profile.role_arn,
        "RoleSessionName": profile.role_session_name,
        "DurationSeconds": profile.duration_seconds,
    }
    if profile.policy is not None:
        params["Policy"] = profile.policy
    if profile.policy_arns:
        params["PolicyArns"] = [{"arn": arn} for arn in profile.policy_arns]
    if profile.web_identity_token_file is None:
        if profile.external_id is not None:
            params["ExternalId"] = profile.external_id
        if profile.tags:
            params["Tags"] = [{"Key": k, "Value": v} for k, v in profile.tags]
        if profile.transitive_tag_keys:
            params["TransitiveTagKeys"] = list(profile.transitive_tag_keys)
        if profile.source_identity is not None:
            params["SourceIdentity"] = profile.source_identity
    return params


@dataclasses.dataclass(frozen=True)
class Issued:
    credentials: Credentials
    skew: timedelta


ClientKey = tuple[str, str | None, str | None, bool, bool]


def call_deadline(settings: StsSettings) -> float:
    """The whole call's budget: the connect timeout plus `sts.timeout` for the answer."""
    connect_timeout = settings.timeout
    return connect_timeout + settings.timeout


def tracking_pools(guard: CallGuard) -> dict[str, type]:
    """botocore's connection pools, with connections that show themselves to `guard`."""
    from botocore.awsrequest import (
        AWSHTTPConnection,
        AWSHTTPConnectionPool,
        AWSHTTPSConnection,
        AWSHTTPSConnectionPool,
    )

    class Http(AWSHTTPConnection):
        def connect(self) -> None:
            guard.track(self)
            super().connect()

        def request(
            self,
            method: str,
            url: str,
            body: Any = None,
            headers: Mapping[str, Any] | None = None,
            *args: Any,
            **kwargs: Any,
        ) -> Any:
            guard.track(self)
            return super().request(method, url, body, headers, *args, **kwargs)

    class Https(AWSHTTPSConnection):
        def connect(self) -> None:
            guard.track(self)
            super().connect()

        def request(
            self,
            method: str,
            url: str,
            body: Any = None,
            headers: Mapping[str, Any] | None = None,
            *args: Any,
            **kwargs: Any,
        ) -> Any:
            guard.track(self)
            return super().request(method, url, body, headers, *args, **kwargs)

    class HttpPool(AWSHTTPConnectionPool):
        ConnectionCls = Http

    class HttpsPool(AWSHTTPSConnectionPool):
        ConnectionCls = Https

    return {"http": HttpPool, "https": HttpsPool}


def track_connections(client: Any, pools: Mapping[str, type]) -> Any:
    """Let the guard see the connections this client's calls use, to cut abandoned ones.

    botocore offers no hook for its sockets, so this swaps the connection classes in the
    client's own pool map (shared by its pool and proxy managers, before any pool exists).
    Should botocore's layout change, calls are still abandoned at the deadline; only the
    abandoned helper then lives until the socket's own timeout.
    """
    session = getattr(getattr(client, "_endpoint", None), "http_session", None)
    by_scheme = getattr(session, "_pool_classes_by_scheme", None)
    if isinstance(by_scheme, dict):
        by_scheme.update(pools)
    return client


class StsClients:
    """One STS client per source and endpoint, shared by every profile that uses it.

    Thread-safe: refreshes run in a pool. `credentials_file` is where AWS source profiles
    are looked up (the same file credfresh writes, by default).
    """

    def __init__(
        self,
        settings: StsSettings,
        *,
        credentials_file: str | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        import botocore.session

        self._settings = settings
        self._credentials_file = credentials_file
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()
        self._base = botocore.session.get_session()
        self._quiet(self._base)
        self._sessions: dict[str | None, botocore.session.Session] = {}
        self._clients: dict[ClientKey, Any] = {}
        self._chained: dict[ClientKey, tuple[str, Any]] = {}
        # Room for every worker's call plus as many abandoned ones still winding down.
        self._guard = CallGuard(2 * max(1, settings.max_concurrency), name="credfresh-sts")
        self._pools = tracking_pools(self._guard)

    def _quiet(self, session: botocore.session.Session) -> None:
        if self._credentials_file:
            session.set_config_variable("credentials_file", self._credentials_file)

    def _session(self, source_profile: str | None) -> botocore.session.Session:
        import botocore.session

        session = self._sessions.get(source_profile)
        if session is None:
            session = botocore.session.Session(profile=source_profile)
            self._quiet(session)
            session.register_component("data_loader", self._base.get_component("data_loader"))
            self._sessions[source_profile] = session
        return session

    def _config(self, region: str, profile: Profile, unsigned: bool = False) -> Any:
        from botocore import UNSIGNED
        from botocore.config import Config

        return Config(
            region_name=region,
            retries={"total_max_attempts": 1},
            connect_timeout=self._settings.timeout,
            read_timeout=self._settings.timeout,
            max_pool_connections=max(10, self._settings.max_concurrency),
            use_fips_endpoint=profile.use_fips_endpoint,
            use_dualstack_endpoint=profile.use_dualstack_endpoint,
            signature_version=UNSIGNED if unsigned else None,
        )

    def _key(self, source: str, profile: Profile, region: str) -> ClientKey:
        return (
            source,
            region,
            profile.endpoint_url,
            profile.use_fips_endpoint,
            profile.use_dualstack_endpoint,
        )

    def _region(self, profile: Profile) -> str:
        return profile.region or self._base.get_config_variable("region") or "us-east-1"

    def client_for(self, profile: Profile, source: Credentials | None) -> Any:
        """The shared client this profile's call goes through."""
        region = self._region(profile)
        with self._lock:
            if profile.web_identity_token_file is not None:
                key = self._key("<web-identity>", profile, region)
                client = self._clients.get(key)
                if client is None:
                    client = self._base.create_client(
                        "sts",
                        endpoint_url=profile.endpoint_url,
                        config=self._config(region, profile, unsigned=True),
                    )
                    self._clients[key] = track_connections(client, self._pools)
                return client
            if profile.chained:
                if source is None:
                    raise StsError(classify("source_unavailable", "source credentials missing"))
                key = self._key(f"chain:{profile.source_profile}", profile, region)
                cached = self._chained.get(key)
                if cached is not None and cached[0] == source.access_key_id:
                    return cached[1]
                client = self._base.create_client(
                    "sts",
                    endpoint_url=profile.endpoint_url,
                    config=self._config(region, profile),
                    aws_access_key_id=source.access_key_id,
                    aws_secret_access_key=source.secret_access_key,
                    aws_session_token=source.session_token,
                )
                self._chained[key] = (source.access_key_id, track_connections(client, self._pools))
                return client
            key = self._key(f"profile:{profile.source_profile or ''}", profile, region)
            client = self._clients.get(key)
            if client is None:
                client = self._make_source_client(profile, region)
                self._clients[key] = track_connections(client, self._pools)
            return client

    def _make_source_client(self, profile: Profile, region: str) -> Any:
        from botocore.exceptions import NoCredentialsError, ProfileNotFound

        try:
            session = self._session(profile.source_profile)
            if session.get_credentials() is None:
                raise StsError(classify("no_source_credentials", "no source credentials found"))
            return session.create_client(
                "sts", endpoint_url=profile.endpoint_url, config=self._config(region, profile)
            )
        except ProfileNotFound as exc:
            raise StsError(
                classify("source_profile_not_found", "source profile not found")
            ) from exc
        except NoCredentialsError as exc:
            raise StsError(
                classify("no_source_credentials", "no source credentials found")
            ) from exc

    def forget_source(self, profile: Profile) -> None:
        """Drop a source's session and client so rotated keys are read again."""
        region = self._region(profile)
        with self._lock:
            self._clients.pop(
                self._key(f"profile:{profile.source_profile or ''}", profile, region), None
            )
            self._sessions.pop(profile.source_profile, None)

    def assume(self, profile: Profile, source: Credentials | None = None) -> Issued:
        """Issue credentials for a profile; on a bad-key error, re-read the source keys once."""
        try:
            return self._assume_once(profile, source)
        except StsError as exc:
            if (
                exc.failure.code in ROTATION_CODES
                and profile.web_identity_token_file is None
                and not profile.chained
            ):
                self.forget_source(profile)
                return self._assume_once(profile, source)
            raise

    def guarded(self, call: Callable[[], T], profile: str) -> T:
        """Run one STS call under the overall deadline; past it, a transient `timeout`.

        The abandoned call's result is dropped here, so it can never reach the state.
        """
        deadline = call_deadline(self._settings)
        try:
            return self._guard.run(call, deadline)
        except DeadlineExceeded:
            raise StsError(
                classify("timeout", f"no complete answer within {deadline:g} s"), profile
            ) from None

    def _assume_once(self, profile: Profile, source: Credentials | None) -> Issued:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectTimeoutError,
            EndpointConnectionError,
            ParamValidationError,
            ReadTimeoutError,
        )
        from botocore.parsers import ResponseParserError

        client = self.client_for(profile, source)
        params = assume_role_params(profile)
        if profile.web_identity_token_file is not None:
            params["WebIdentityToken"] = _read_token(profile.web_identity_token_file, profile.name)
            call = client.assume_role_with_web_identity
        else:
            call = client.assume_role
        try:
            response = self.guarded(lambda: call(**params), profile.name)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            failure = classify(
                str(error.get("Code") or "unknown"), str(error.get("Message") or ""), status
            )
            if failure.code == "ExpiredToken" and profile.chained:
                failure = dataclasses.replace(failure, permanent=False)
            raise StsError(failure, profile.name) from None
        except (ConnectTimeoutError, ReadTimeoutError) as exc:
            raise StsError(classify("timeout", type(exc).__name__), profile.name) from None
        except EndpointConnectionError as exc:
            raise StsError(classify("connection_error", type(exc).__name__), profile.name) from None
        except ParamValidationError:
            raise StsError(
                classify("ValidationError", "botocore refused a parameter", 400), profile.name
            ) from None
        except BotoCoreError as exc:
            code = (
                "connection_error"
                if "connection" in type(exc).__name__.lower()
                else "invalid_response"
            )
            raise StsError(classify(code, type(exc).__name__), profile.name) from None
        except (ResponseParserError, KeyError, ValueError, TypeError, AttributeError) as exc:
            # botocore's parsers raise these on bodies that are not STS XML (a captive
            # portal's HTML page, truncated or invalid XML).
            raise StsError(classify("invalid_response", type(exc).__name__), profile.name) from None
        received_at = self._clock()
        credentials, skew = accept_response(
            response, received_at=received_at, duration_seconds=profile.duration_seconds
        )
        return Issued(credentials=credentials, skew=skew)


def _read_token(path: Path, profile: str) -> str:
    """Re-read at each call: the kubelet rotates projected service-account tokens."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise StsError(
            classify("web_identity_token_unreadable", f"cannot read {path}"), profile
        ) from exc
    if not token:
        raise StsError(classify("web_identity_token_unreadable", f"{path} is empty"), profile)
    return token
