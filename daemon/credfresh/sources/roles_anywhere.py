"""IAM Roles Anywhere: CreateSession signed with the profile's X.509 certificate.

One POST per refresh to `https://rolesanywhere.<region>.amazonaws.com/sessions`, under the
same overall deadline as STS calls, and at most `sts.roles_anywhere_rate` calls per second
per region (the service allows about 10): a thousand profiles due together queue instead
of being throttled.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from credfresh.sources import x509_sigv4 as sigv4
from credfresh.sources.base import Issued
from credfresh.sources.certificates import CertificateFiles, check_dates
from credfresh.sources.classify import SourceError, classify
from credfresh.sources.clients import call_deadline
from credfresh.sources.deadline import CallGuard, within_deadline
from credfresh.sources.response import accept_response

if TYPE_CHECKING:
    from datetime import datetime

    from credfresh.config.model import Profile, RolesAnywhereSpec, StsSettings
    from credfresh.context import Clock
    from credfresh.credentials import Credentials

#: Error types by HTTP status, for answers that carry no `x-amzn-ErrorType`.
_BY_STATUS: Final = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    429: "ThrottlingException",
}
MAX_ANSWER_BYTES: Final = 1024 * 1024


def endpoint_for(spec: RolesAnywhereSpec, region: str) -> str:
    if spec.endpoint_url:
        return spec.endpoint_url.rstrip("/")
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"https://rolesanywhere.{region}.{suffix}"


def session_body(spec: RolesAnywhereSpec, duration_seconds: int) -> bytes:
    """CreateSession's JSON body (keys sorted: the signed bytes are reproducible)."""
    body: dict[str, Any] = {
        "durationSeconds": duration_seconds,
        "profileArn": spec.profile_arn,
        "roleArn": spec.role_arn,
        "trustAnchorArn": spec.trust_anchor_arn,
    }
    if spec.session_name:
        body["roleSessionName"] = spec.session_name
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")


def error_code(status: int, headers: Mapping[str, str], body: bytes) -> tuple[str, str]:
    """The error type and message of a failed CreateSession (REST-JSON error shape)."""
    message = ""
    code = headers.get("x-amzn-errortype", "").split(":", 1)[0].strip()
    try:
        data = json.loads(body) if body else {}
    except ValueError:
        data = {}
    if isinstance(data, dict):
        message = str(data.get("message") or data.get("Message") or "")
        if not code:
            code = str(data.get("__type") or "").rsplit("#", 1)[-1]
    if not code:
        code = _BY_STATUS.get(status, "InternalServerException" if status >= 500 else "unknown")
    return code, message


def credentials_of(body: bytes) -> Mapping[str, Any]:
    """The first credential set of a CreateSession answer, in STS's shape for the checks."""
    try:
        data = json.loads(body)
        found = data["credentialSet"][0]["credentials"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise SourceError(classify("invalid_response", "no credentialSet in the answer")) from None
    if not isinstance(found, dict):
        raise SourceError(classify("invalid_response", "no credentials in the answer"))
    return {
        "AccessKeyId": found.get("accessKeyId"),
        "SecretAccessKey": found.get("secretAccessKey"),
        "SessionToken": found.get("sessionToken"),
        "Expiration": found.get("expiration"),
    }


def next_slot(last: float | None, rate: float, now: float) -> float:
    """When the next call may start: `1/rate` after the previous one, never before now."""
    return now if last is None else max(now, last + 1.0 / rate)


class RegionPacer:
    """At most `rate` calls per second per region, across every refresh thread."""

    def __init__(self, rate: float, clock: Clock, sleep: Callable[[float], None]) -> None:
        self._rate = rate
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}

    def wait(self, region: str) -> None:
        with self._lock:
            slot = next_slot(self._last.get(region), self._rate, self._clock.monotonic())
            self._last[region] = slot
        delay = slot - self._clock.monotonic()
        if delay > 0:
            self._sleep(delay)


class RolesAnywhereSource:
    """The `Source` for `roles_anywhere` profiles; thread-safe."""

    def __init__(
        self,
        settings: StsSettings,
        *,
        clock: Clock,
        on_reload_failed: Callable[[str, str], None],
        sleep: Callable[[float], None],
    ) -> None:
        import urllib3

        self._settings = settings
        self._clock = clock
        self._on_reload_failed = on_reload_failed
        self._lock = threading.Lock()
        self._files: dict[tuple[object, ...], CertificateFiles] = {}
        self._pacer = RegionPacer(settings.roles_anywhere_rate, clock, sleep)
        self._guard = CallGuard(
            2 * max(1, settings.max_concurrency), name="credfresh-rolesanywhere", clock=clock
        )
        timeout = urllib3.Timeout(connect=settings.timeout, read=settings.timeout)
        self._http = urllib3.PoolManager(
            num_pools=8, maxsize=max(4, settings.max_concurrency), retries=False, timeout=timeout
        )

    def files_for(self, profile: Profile) -> CertificateFiles:
        spec = _spec(profile)
        key = (spec.certificate, spec.private_key, spec.certificate_chain)
        with self._lock:
            files = self._files.get(key)
            if files is None:
                files = CertificateFiles(
                    *key,
                    on_reload_failed=lambda why: self._on_reload_failed(profile.name, why),
                )
                self._files[key] = files
            return files

    def source_expiry(self, profile: Profile) -> datetime | None:
        """The certificate's end, from the last pair that loaded (None before the first)."""
        good = self.files_for(profile).last_good()
        return good.not_after if good is not None else None

    def fetch(self, profile: Profile, parent: Credentials | None = None) -> Issued:
        spec = _spec(profile)
        region = profile.region or "us-east-1"
        material = self.files_for(profile).material()
        check_dates(material, self._clock.now())
        url = endpoint_for(spec, region) + "/sessions"
        parts = urlsplit(url)
        body = session_body(spec, profile.duration_seconds)
        request = sigv4.SigningRequest(
            method="POST",
            path="/sessions",
            query="",
            headers={"Host": parts.netloc, "Content-Type": "application/json"},
            body=body,
        )
        self._pacer.wait(region)
        headers = sigv4.signed_headers(
            key=material.key,
            certificate=material.certificate,
            chain=material.chain,
            request=request,
            region=region,
            when=self._clock.now(),
        )
        status, answer_headers, answer = self._post(url, headers, body, profile.name)
        received_at = self._clock.now()
        if status >= 300:
            code, message = error_code(status, answer_headers, answer)
            raise SourceError(classify(code, message, status), profile.name)
        response = {
            "Credentials": credentials_of(answer),
            "ResponseMetadata": {"HTTPHeaders": {"date": answer_headers.get("date", "")}},
        }
        credentials, skew = accept_response(
            response, received_at=received_at, duration_seconds=profile.duration_seconds
        )
        return Issued(credentials=credentials, skew=skew)

    def _post(
        self, url: str, headers: Mapping[str, str], body: bytes, profile: str
    ) -> tuple[int, dict[str, str], bytes]:
        import urllib3

        def call() -> tuple[int, dict[str, str], bytes]:
            response = self._http.request(
                "POST", url, body=body, headers=dict(headers), preload_content=False
            )
            try:
                data = response.read(MAX_ANSWER_BYTES + 1)
            finally:
                response.release_conn()
            found = {k.lower(): v for k, v in response.headers.items()}
            return response.status, found, data[: MAX_ANSWER_BYTES + 1]

        try:
            return within_deadline(self._guard, call, call_deadline(self._settings), profile)
        except urllib3.exceptions.TimeoutError:
            raise SourceError(classify("timeout", "Roles Anywhere timed out"), profile) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise SourceError(classify("connection_error", type(exc).__name__), profile) from None


def _spec(profile: Profile) -> RolesAnywhereSpec:
    if profile.roles_anywhere is None:
        raise ValueError(f"profile {profile.name} is not a Roles Anywhere profile")
    return profile.roles_anywhere
