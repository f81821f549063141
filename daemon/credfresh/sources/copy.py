"""Copied profiles: the credentials of any AWS profile (credential_process, SSO, keys,
`credential_source`) or of boto3's default chain, resolved by botocore's own providers.

Each fetch resolves through a new botocore Session, so botocore's in-memory cache cannot hand
back credentials it would only refresh later (its windows are not credfresh's); the disk
caches botocore keeps for SSO stay in use. Credentials handed back unchanged are then
simply refetched at half their remaining time (`engine.policy`'s lifetime / 2 cap).

A source without an expiry (long-term keys) gives a static set: copied as it is, never due
by time, and fetched again when the AWS files botocore read for it change (`static_watch`).
"""

from __future__ import annotations

import configparser
import dataclasses
import functools
import hashlib
import json
import threading
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from credfresh.config.model import DEFAULT_CHAIN
from credfresh.credentials import Credentials, parse_time
from credfresh.credfile.format import OWNER_KEY
from credfresh.sources.base import Issued
from credfresh.sources.classify import Failure, SourceError, classify
from credfresh.sources.clients import call_deadline
from credfresh.sources.deadline import CallGuard, within_deadline
from credfresh.sources.response import accept_response
from credfresh.sources.static_watch import FileDigests

if TYPE_CHECKING:
    from credfresh.config.model import Profile, StsSettings
    from credfresh.context import Clock

Digest = tuple[tuple[str, str], ...]

#: A copied credential set may live up to this long (SSO role sessions end within 12 h;
#: instance profiles within about 6 h): longer is refused as a broken answer.
MAX_COPY_SECONDS: Final = 36 * 3600
ZERO: Final = timedelta(0)


def resolved_profile(source_profile: str) -> str | None:
    """The AWS profile botocore reads: None (the default chain) for `default-chain`."""
    return None if source_profile == DEFAULT_CHAIN else source_profile


def is_credfresh_section(credentials_file: str | None, section: str) -> bool:
    """Whether that section of the credentials file is one credfresh writes (a copy loop)."""
    if not credentials_file:
        return False
    parser = configparser.RawConfigParser(interpolation=None)
    try:
        parser.read(credentials_file, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError, OSError):
        return False
    return parser.has_section(section) and parser.has_option(section, OWNER_KEY)


def expiry_of(credentials: Any) -> datetime | None:
    """botocore keeps a refreshable set's expiry in `_expiry_time` (no public accessor)."""
    expiry = getattr(credentials, "_expiry_time", None)
    if not isinstance(expiry, datetime):
        return None
    return expiry if expiry.tzinfo is not None else expiry.replace(tzinfo=UTC)


def sso_cache_file(scoped: Mapping[str, Any], home: Path) -> Path | None:
    """Where botocore caches the SSO token of a profile's session: `~/.aws/sso/cache/` and
    the SHA-1 of the `sso_session` name (or, for legacy profiles, of `sso_start_url`)."""
    key = scoped.get("sso_session") or scoped.get("sso_start_url")
    if not isinstance(key, str) or not key:
        return None
    digest = hashlib.sha1(key.encode("utf-8"), usedforsecurity=False).hexdigest()
    return home / ".aws" / "sso" / "cache" / f"{digest}.json"


def sso_session_end(cache: Mapping[str, Any]) -> datetime | None:
    """When a login is needed again: a token without a refresh token ends at `expiresAt`;
    one botocore can refresh lasts until its client registration ends."""
    field = "registrationExpiresAt" if cache.get("refreshToken") else "expiresAt"
    value = cache.get(field)
    if not isinstance(value, str):
        return None
    try:
        return parse_time(value)
    except ValueError:
        return None


class CopySource:
    """The `Source` for copied profiles; thread-safe (a Session per fetch)."""

    def __init__(
        self,
        settings: StsSettings,
        *,
        credentials_file: str | None,
        clock: Clock,
        home: Path | None = None,
    ) -> None:
        self._settings = settings
        self._credentials_file = credentials_file
        self._clock = clock
        self._home = home
        self._sso_caches: dict[str, Path] = {}
        self._static: dict[str, tuple[tuple[str, ...], Digest]] = {}  # files, their digest
        self._digests = FileDigests(home)
        self._lock = threading.Lock()
        self._guard = CallGuard(
            2 * max(1, settings.max_concurrency), name="credfresh-copy", clock=clock
        )

    def _resolve(self, profile: Profile) -> tuple[Any, datetime | None, Digest | None]:
        """The frozen credentials, their expiry and (for a static set) the digest of the AWS
        files read, through a new botocore Session."""
        import botocore.session
        from botocore.exceptions import BotoCoreError, ProfileNotFound

        assert profile.source_profile is not None  # a copied profile always names one
        name = resolved_profile(profile.source_profile)
        session = botocore.session.Session(profile=name)
        if self._credentials_file:
            session.set_config_variable("credentials_file", self._credentials_file)
        self._remember_sso_cache(profile.name, session)
        files = self._files_of(session)
        before = self._digests.of(files)  # taken first: a later edit still differs
        try:
            credentials = session.get_credentials()
            frozen = credentials.get_frozen_credentials() if credentials is not None else None
        except ProfileNotFound:
            raise SourceError(
                classify("source_profile_not_found", "source profile not found"), profile.name
            ) from None
        except BotoCoreError as exc:
            failure = _failure_of(exc)
            if failure.code == "sso_session_expired":
                sso = session.get_scoped_config().get("sso_session") or name or "default"
                hint = f"the SSO session has ended: run aws sso login --sso-session {sso}"
                failure = dataclasses.replace(failure, hint=hint)
            raise SourceError(failure, profile.name) from None
        if credentials is None or frozen is None:
            raise SourceError(
                classify("no_source_credentials", "no credentials found"), profile.name
            )
        if credentials.method == "shared-credentials-file" and is_credfresh_section(
            self._credentials_file, name or "default"
        ):
            raise SourceError(
                classify("copy_loop", "the source resolves to a section credfresh writes"),
                profile.name,
            )
        expiry = expiry_of(credentials)
        with self._lock:
            if expiry is None:
                self._static[profile.name] = (files, before)
            else:
                self._static.pop(profile.name, None)
        return frozen, expiry, before if expiry is None else None

    def _files_of(self, session: Any) -> tuple[str, ...]:
        """The AWS config and shared credentials files this session reads."""
        found = (session.get_config_variable(v) for v in ("config_file", "credentials_file"))
        return tuple(value for value in found if isinstance(value, str) and value)

    def source_changed(self, profile: Profile) -> bool:
        """Whether the AWS files a static copy was read from hold something else now."""
        with self._lock:
            known = self._static.get(profile.name)
        if known is None:
            return True  # not read by this source (built by a reload): read it to know
        files, digest = known
        return self._digests.of(files) != digest

    def _remember_sso_cache(self, profile: str, session: Any) -> None:
        if self._home is None:
            return
        try:
            found = sso_cache_file(session.get_scoped_config(), self._home)
        except Exception:
            return
        if found is not None:
            self._sso_caches[profile] = found

    def source_expiry(self, profile: Profile) -> datetime | None:
        """The SSO session's end, from botocore's token cache (read, never written)."""
        path = self._sso_caches.get(profile.name)
        if path is None:
            return None
        try:
            cache = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return None
        return sso_session_end(cache) if isinstance(cache, dict) else None

    def fetch(self, profile: Profile, parent: Credentials | None = None) -> Issued:
        deadline = call_deadline(self._settings)
        resolve = functools.partial(self._resolve, profile)
        frozen, expiry, _ = within_deadline(self._guard, resolve, deadline, profile.name)
        if expiry is None:
            return Issued(credentials=static_credentials(frozen, self._clock.now()), skew=ZERO)
        if not frozen.token:
            raise SourceError(
                classify("invalid_response", "the source's credentials expire but have no token"),
                profile.name,
            )
        response = {
            "Credentials": {
                "AccessKeyId": frozen.access_key,
                "SecretAccessKey": frozen.secret_key,
                "SessionToken": frozen.token,
                "Expiration": expiry,
            }
        }
        try:
            credentials, skew = accept_response(
                response, received_at=self._clock.now(), duration_seconds=MAX_COPY_SECONDS
            )
        except SourceError as exc:
            raise SourceError(exc.failure, profile.name) from None
        return Issued(credentials=credentials, skew=skew)


def static_credentials(frozen: Any, now: datetime) -> Credentials:
    """A set without an expiry as botocore froze it (long-term keys: no token either)."""
    return Credentials(
        access_key_id=frozen.access_key,
        secret_access_key=frozen.secret_key,
        session_token=frozen.token or "",
        expiration=None,
        issued=now,
    )


def _failure_of(exc: Exception) -> Failure:
    """botocore's provider errors by type only: a credential_process's message may quote its
    output. An expired SSO session needs a login; the others may pass."""
    name = type(exc).__name__
    if name in ("SSOTokenLoadError", "UnauthorizedSSOTokenError", "TokenRetrievalError"):
        return classify("sso_session_expired", name)
    if name in ("InvalidConfigError", "PartialCredentialsError", "ProfileNotFound"):
        return classify("source_misconfigured", name)
    return classify("connection_error" if "connect" in name.lower() else "source_failed", name)
