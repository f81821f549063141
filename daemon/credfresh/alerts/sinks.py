"""Where alerts go: a webhook and a command, run on the alert worker, never on the refresh path."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any, Final, Protocol

import urllib3

from credfresh import __version__
from credfresh.config.model import AlertSettings
from credfresh.observe.logs import Redactor
from credfresh.process.child import Child, one_line, without_aws

WEBHOOK_TIMEOUT: Final = 5.0


class SinkError(Exception):
    """A delivery failed; the message is safe to log (no URL, no secret)."""


class Sink(Protocol):
    name: str

    def send(self, payload: Mapping[str, object]) -> str:
        """Deliver one event; return a short status for the log, raise SinkError on failure."""
        ...

    def abort(self) -> None:
        """Cut a delivery in progress short (called from another thread on shutdown)."""
        ...

    def close(self) -> None: ...


def environ_proxies(environ: Mapping[str, str]) -> dict[str, str]:
    """`urllib.request.getproxies_environment` over an injected environ (lowercase wins)."""
    proxies: dict[str, str] = {}
    for name, value in environ.items():
        if value and name.lower().endswith("_proxy"):
            proxies[name.lower()[:-6]] = value
    for name, value in environ.items():
        if name.endswith("_proxy"):
            if value:
                proxies[name[:-6].lower()] = value
            else:
                proxies.pop(name[:-6].lower(), None)
    return proxies


def proxy_for(url: str, environ: Mapping[str, str]) -> str | None:
    """The proxy boto3 would use for `url`, or None: botocore's rules (`<scheme>_proxy`,
    lowercase first; `no_proxy` by host or suffix, `*` for all, no CIDR; no scheme: http)."""
    proxies = environ_proxies(environ)
    parts = urllib.parse.urlsplit(url)
    hostport = parts.netloc.rpartition("@")[2]
    no_proxy = proxies.get("no")
    if no_proxy and urllib.request.proxy_bypass(hostport, {"no": no_proxy}):
        return None
    proxy = proxies.get(parts.scheme.lower())
    if not proxy:
        return None
    if proxy.startswith("//"):
        return "http:" + proxy
    return proxy if proxy.startswith(("http:", "https:")) else "http://" + proxy


def webhook_secrets(url: str) -> tuple[str, ...]:
    """The parts of a webhook URL that must never reach a log: all of it, its path and query."""
    parts = urllib.parse.urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    found = [url, target, parts.path, parts.query]
    if parts.password:
        found.append(parts.password)
    return tuple(part for part in found if part and part != "/")


def default_retry() -> urllib3.Retry:
    """3 retries with backoff on connection errors and 429/5xx; never on a read timeout (the
    POST may have landed). Retry-After is ignored: a 503 must not park the worker for an hour."""
    return urllib3.Retry(
        total=3,
        connect=3,
        read=0,
        status=3,
        other=0,
        redirect=False,
        backoff_factor=0.5,
        status_forcelist=(429, 500, 502, 503, 504),
        allowed_methods=frozenset({"POST"}),
        raise_on_status=False,
        respect_retry_after_header=False,
    )


class WebhookSink:
    """POST the event JSON to a URL, through the proxy boto3 would use for it."""

    name = "webhook"

    def __init__(
        self,
        url: str,
        *,
        environ: Mapping[str, str],
        timeout: float = WEBHOOK_TIMEOUT,
        retries: urllib3.Retry | None = None,
    ) -> None:
        self._url = url
        self._timeout = timeout
        options: dict[str, Any] = {
            "num_pools": 1,
            "maxsize": 1,
            "retries": retries if retries is not None else default_retry(),
            "timeout": urllib3.Timeout(connect=timeout, read=timeout),
            "headers": {"User-Agent": f"credfresh/{__version__}"},
        }
        self.proxy = proxy_for(url, environ)
        self._http: urllib3.PoolManager
        if self.proxy is None:
            self._http = urllib3.PoolManager(**options)
        else:
            parsed = urllib3.util.parse_url(self.proxy)
            headers = {}
            if parsed.auth:
                headers = urllib3.util.make_headers(
                    proxy_basic_auth=urllib.parse.unquote(parsed.auth)
                )
            bare = parsed._replace(auth=None).url
            self._http = urllib3.ProxyManager(bare, proxy_headers=headers, **options)

    def send(self, payload: Mapping[str, object]) -> str:
        try:
            response = self._http.request(
                "POST", self._url, json=payload, redirect=False, preload_content=False
            )
        except urllib3.exceptions.MaxRetryError as exc:
            raise SinkError(_describe(exc.reason)) from None
        except urllib3.exceptions.HTTPError as exc:
            raise SinkError(_describe(exc)) from None
        try:
            response.read(64 * 1024)
        except urllib3.exceptions.HTTPError:
            pass
        finally:
            response.release_conn()
            response.close()
        if not 200 <= response.status < 300:
            raise SinkError(f"HTTP {response.status}")
        return f"HTTP {response.status}"

    def abort(self) -> None:
        """Nothing to cut: a stuck request ends at the 5 s timeout on its own."""

    def close(self) -> None:
        self._http.clear()


def _describe(reason: BaseException | None) -> str:
    """A failure in words that never quote the URL (a Slack webhook's path is its secret).

    Order matters: urllib3's NewConnectionError is a subclass of ConnectTimeoutError.
    """
    errors = urllib3.exceptions
    for kinds, text in (
        (errors.ReadTimeoutError, "no answer within the timeout"),
        (errors.ProxyError, "the proxy refused or failed the request"),
        (errors.SSLError, "TLS handshake failed"),
        ((errors.NewConnectionError, ConnectionError), "connection failed"),
        (errors.ConnectTimeoutError, "connect timed out"),
        (errors.ResponseError, "too many error responses"),
    ):
        if isinstance(reason, kinds):
            return text
    return f"request failed ({type(reason).__name__})"


class CommandSink:
    """Run an argv list with the event JSON on stdin, without any AWS_* variable."""

    name = "command"

    def __init__(self, argv: Sequence[str], *, timeout: float, environ: Mapping[str, str]) -> None:
        self._child = Child(argv, timeout=timeout, environ=without_aws(environ))

    def send(self, payload: Mapping[str, object]) -> str:
        outcome = self._child.run(json.dumps(payload).encode() + b"\n")
        if outcome.ok:
            return "exit status 0"
        said = one_line(outcome.stderr_tail)
        raise SinkError(outcome.describe(self._child.timeout) + (f": {said}" if said else ""))

    def abort(self) -> None:
        """Kill the running command, and any started after this (the manager is closing)."""
        self._child.abort()

    def close(self) -> None:
        """Nothing is held between events."""


def build_sinks(
    settings: AlertSettings, environ: Mapping[str, str], redactor: Redactor | None = None
) -> tuple[Sink, ...]:
    """The sinks the settings ask for (none: alerts are only logged). The webhook URL and
    path become the redactor's secrets: Slack's path is a token, urllib3 logs it on retries."""
    sinks: list[Sink] = []
    if settings.webhook_url:
        if redactor is not None:
            redactor.add(*webhook_secrets(settings.webhook_url))
        sinks.append(WebhookSink(settings.webhook_url, environ=environ))
    if settings.command:
        sinks.append(
            CommandSink(settings.command, timeout=settings.command_timeout, environ=environ)
        )
    return tuple(sinks)
