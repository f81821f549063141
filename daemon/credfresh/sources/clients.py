"""Shared STS clients (a Session per refresh would cost ~8 MB and 100 ms: aws-facts.md),
one per (source, region, endpoint, fips, dualstack), and the connections a deadline cuts.
botocore's retries are off: credfresh's own backoff decides."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from credfresh.sources.classify import SourceError, classify
from credfresh.sources.deadline import CallGuard, CutGuard, within_deadline

if TYPE_CHECKING:
    import botocore.session

    from credfresh.config.model import Profile, StsSettings
    from credfresh.context import Clock
    from credfresh.credentials import Credentials

T = TypeVar("T")

ClientKey = tuple[str, str | None, str | None, bool, bool]


def call_deadline(settings: StsSettings) -> float:
    """The whole call's budget: `sts.timeout` to connect plus `sts.timeout` for the answer."""
    return 2 * settings.timeout


def tracking_pools(guard: CutGuard) -> dict[str, type]:
    """botocore's connection pools, with connections that show themselves to `guard`."""
    from botocore.awsrequest import (
        AWSHTTPConnection,
        AWSHTTPConnectionPool,
        AWSHTTPSConnection,
        AWSHTTPSConnectionPool,
    )

    return {
        "http": _pool(AWSHTTPConnectionPool, _tracked(AWSHTTPConnection, guard)),
        "https": _pool(AWSHTTPSConnectionPool, _tracked(AWSHTTPSConnection, guard)),
    }


def _tracked(base: type[Any], guard: CutGuard) -> type[Any]:
    """`base` (HTTP or HTTPS) whose connect goes through `guard` and whose request first shows
    the connection to it."""

    def connect(self: Any) -> None:
        guard.connect(self, lambda: base.connect(self))

    def request(self: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        guard.track(self)
        return base.request(self, method, url, *args, **kwargs)

    return type(f"Tracked{base.__name__}", (base,), {"connect": connect, "request": request})


def _pool(base: type[Any], connection: type[Any]) -> type[Any]:
    return type(f"Tracked{base.__name__}", (base,), {"ConnectionCls": connection})


def track_connections(client: Any, pools: Mapping[str, type]) -> bool:
    """Let the guard see (and cut) the connections this client's calls use; False when it
    cannot.

    botocore has no socket hook, so this swaps the classes in the client's own pool map.
    Should its layout change, calls run in a `CallGuard` helper instead: still abandoned at the
    deadline, the helper then lives until the socket's own timeout.
    """
    session = getattr(getattr(client, "_endpoint", None), "http_session", None)
    by_scheme = getattr(session, "_pool_classes_by_scheme", None)
    if not isinstance(by_scheme, dict):
        return False
    by_scheme.update(pools)
    return True


class StsClients:
    """One STS client per source and endpoint, shared by every profile that uses it; thread-safe.

    `credentials_file` is where AWS source profiles are looked up.
    """

    def __init__(
        self, settings: StsSettings, *, credentials_file: str | None = None, clock: Clock
    ) -> None:
        self._settings = settings
        self._credentials_file = credentials_file
        self._lock = threading.Lock()
        self._botocore_lock = threading.Lock()
        self._loaded: tuple[botocore.session.Session, dict[str, type]] | None = None
        self._sessions: dict[str | None, botocore.session.Session] = {}
        self._clients: dict[ClientKey, Any] = {}
        self._chained: dict[ClientKey, tuple[str, Any]] = {}
        # Room for every worker's call plus as many abandoned ones still winding down.
        limit = 2 * max(1, settings.max_concurrency)
        self._guard = CutGuard(limit, name="credfresh-sts", clock=clock)
        self._helpers = CallGuard(limit, name="credfresh-sts-helper", clock=clock)
        self._untracked = False

    def _botocore(self) -> tuple[botocore.session.Session, dict[str, type]]:
        """botocore's base session and pools, loaded on the first call: a daemon whose
        profiles are all fresh on disk reaches READY=1 without importing botocore."""
        with self._botocore_lock:
            if self._loaded is None:
                import botocore.session

                base = botocore.session.get_session()
                self._quiet(base)
                self._loaded = (base, tracking_pools(self._guard))
            return self._loaded

    @property
    def _base(self) -> botocore.session.Session:
        return self._botocore()[0]

    @property
    def _pools(self) -> dict[str, type]:
        return self._botocore()[1]

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

    def _key(self, profile: Profile, region: str) -> ClientKey:
        if profile.web_identity_token_file is not None:
            source = "<web-identity>"
        elif profile.chained:
            source = f"chain:{profile.source_profile}"
        else:
            source = f"profile:{profile.source_profile or ''}"
        endpoint = (profile.endpoint_url, profile.use_fips_endpoint, profile.use_dualstack_endpoint)
        return (source, region, *endpoint)

    def _region(self, profile: Profile) -> str:
        return profile.region or self._base.get_config_variable("region") or "us-east-1"

    def client_for(self, profile: Profile, source: Credentials | None) -> Any:
        """The shared client this profile's call goes through."""
        region = self._region(profile)
        key = self._key(profile, region)
        web = profile.web_identity_token_file is not None
        with self._lock:
            if profile.chained and not web:
                if source is None:
                    raise SourceError(classify("source_unavailable", "source credentials missing"))
                cached = self._chained.get(key)
                if cached is None or cached[0] != source.access_key_id:
                    chained = self._base.create_client(
                        "sts",
                        endpoint_url=profile.endpoint_url,
                        config=self._config(region, profile),
                        aws_access_key_id=source.access_key_id,
                        aws_secret_access_key=source.secret_access_key,
                        aws_session_token=source.session_token or None,
                    )
                    self._track(chained)
                    cached = (source.access_key_id, chained)
                    self._chained[key] = cached
                return cached[1]
            client = self._clients.get(key)
            if client is None:
                client = (
                    self._base.create_client(
                        "sts",
                        endpoint_url=profile.endpoint_url,
                        config=self._config(region, profile, unsigned=True),
                    )
                    if web
                    else self._make_source_client(profile, region)
                )
                self._track(client)
                self._clients[key] = client
            return client

    def _track(self, client: Any) -> None:
        if not track_connections(client, self._pools):
            self._untracked = True

    def _make_source_client(self, profile: Profile, region: str) -> Any:
        from botocore.exceptions import NoCredentialsError, ProfileNotFound

        try:
            session = self._session(profile.source_profile)
            if session.get_credentials() is not None:
                return session.create_client(
                    "sts", endpoint_url=profile.endpoint_url, config=self._config(region, profile)
                )
        except ProfileNotFound as exc:
            raise SourceError(
                classify("source_profile_not_found", "source profile not found")
            ) from exc
        except NoCredentialsError:
            pass
        raise SourceError(classify("no_source_credentials", "no source credentials found"))

    def forget_source(self, profile: Profile) -> None:
        """Drop a source's session and client so rotated keys are read again."""
        key = self._key(profile, self._region(profile))
        with self._lock:
            self._clients.pop(key, None)
            self._sessions.pop(profile.source_profile, None)

    def calls_in_flight(self) -> int:
        """STS calls still running, abandoned ones included."""
        return self._guard.in_flight() + self._helpers.in_flight()

    def guarded(self, call: Callable[[], T], profile: str) -> T:
        """Run one STS call under the overall deadline; past it, a transient `timeout` (the
        abandoned call's result is dropped, never reaching the state)."""
        guard = self._helpers if self._untracked else self._guard
        return within_deadline(guard, call, call_deadline(self._settings), profile)
