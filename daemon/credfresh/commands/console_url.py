"""`credfresh console-url`: an AWS console sign-in URL from a profile's current credentials.

The federation endpoint trades the credentials for a sign-in token carried by the login URL.
Both are bearer secrets: the credentials go only to the endpoint over https, the URL only to
stdout, never to a log or an error. No boto3, no pydantic.
"""

from __future__ import annotations

import ipaddress
import json
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final, NamedTuple, TextIO

from credfresh.commands.credential_process import valid_credentials
from credfresh.config.load import read_light
from credfresh.config.model import parse_duration
from credfresh.errors import EXIT_OK, ConsoleError, UsageError

if TYPE_CHECKING:
    from pathlib import Path

    import urllib3

    from credfresh.context import Context
    from credfresh.credentials import Credentials

#: Set to point `console-url` at another federation endpoint (a test stand-in); https, or http
#: to a loopback address only, since the profile's credentials are sent to it.
FEDERATION_ENV: Final = "CREDFRESH_FEDERATION_URL"
FEDERATION_URLS: Final = {
    "aws": "https://signin.aws.amazon.com/federation",
    "aws-cn": "https://signin.amazonaws.cn/federation",
    "aws-us-gov": "https://signin.amazonaws-us-gov.com/federation",
}
CONSOLE_URLS: Final = {
    "aws": "https://console.aws.amazon.com/",
    "aws-cn": "https://console.amazonaws.cn/",
    "aws-us-gov": "https://console.amazonaws-us-gov.com/",
}
DEFAULT_ISSUER: Final = "credfresh"
#: SessionDuration bounds of getSigninToken for AssumeRole* credentials (AWS documentation).
MIN_SESSION_SECONDS: Final = 900
MAX_SESSION_SECONDS: Final = 43200
REQUEST_TIMEOUT: Final = 10.0
MAX_RESPONSE_BYTES: Final = 64 * 1024


def session_seconds(duration: str | float) -> int:
    """`--duration` as whole seconds within 900..43200; ValueError says what was expected."""
    seconds = parse_duration(duration)
    if seconds != int(seconds):
        raise ValueError("expected a whole number of seconds")
    if not MIN_SESSION_SECONDS <= seconds <= MAX_SESSION_SECONDS:
        raise ValueError("expected 15m to 12h (900 to 43200 seconds)")
    return int(seconds)


def partition_of(*arns: str) -> str:
    """The partition of the first ARN that names a known one; `aws` otherwise."""
    for arn in arns:
        parts = arn.split(":", 2)
        if len(parts) == 3 and parts[0] == "arn" and parts[1] in FEDERATION_URLS:
            return parts[1]
    return "aws"


def federation_url(partition: str, environ: Mapping[str, str]) -> str:
    """The partition's federation endpoint, or $CREDFRESH_FEDERATION_URL: https, or http to a
    loopback address (anything else would send the credentials in clear across a network)."""
    override = environ.get(FEDERATION_ENV)
    if not override:
        return FEDERATION_URLS[partition]
    parts = urllib.parse.urlsplit(override)
    if parts.query or parts.fragment or not parts.hostname:
        raise UsageError(f"{FEDERATION_ENV}: expected a URL like https://HOST/federation")
    if parts.scheme == "https":
        return override
    if parts.scheme == "http" and _is_loopback(parts.hostname):
        return override
    raise UsageError(f"{FEDERATION_ENV}: expected https, or http to a loopback address")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def signin_token_request(federation: str, creds: Credentials, seconds: int | None) -> str:
    """The getSigninToken URL, a secret itself (it carries the credentials); `seconds` None:
    no SessionDuration, which the endpoint refuses (400) for a chained role session."""
    session = json.dumps(
        {
            "sessionId": creds.access_key_id,
            "sessionKey": creds.secret_access_key,
            "sessionToken": creds.session_token,
        },
        separators=(",", ":"),
    )
    params = {"Action": "getSigninToken"}
    if seconds is not None:
        params["SessionDuration"] = str(seconds)
    params["Session"] = session
    return f"{federation}?{urllib.parse.urlencode(params)}"


def login_url(federation: str, *, issuer: str, destination: str, signin_token: str) -> str:
    """The URL a browser opens to land signed in on `destination`."""
    query = urllib.parse.urlencode(
        {
            "Action": "login",
            "Issuer": issuer,
            "Destination": destination,
            "SigninToken": signin_token,
        }
    )
    return f"{federation}?{query}"


def proxy_for(url: str, environ: Mapping[str, str]) -> str | None:
    """The proxy to reach `url` through (None: direct), read as urllib and botocore read it so
    STS and the console take the same path: `<scheme>_proxy` in either case, lowercase winning,
    `no_proxy` as host suffixes or `*`. Never for loopback: the proxy would reach its own."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if _is_loopback_host(host):
        return None
    wanted = (f"{parts.scheme}_proxy", "no_proxy")
    found: dict[str, str] = {}
    for name in sorted(environ, key=str.islower):
        if name.lower() in wanted and environ[name]:
            found[name.lower()] = environ[name]
    proxy = found.get(wanted[0])
    if proxy is None or _bypassed(host, found.get("no_proxy", "")):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


def _is_loopback_host(host: str) -> bool:
    """127.0.0.0/8, ::1 (also IPv4-mapped), `localhost` and names under `.localhost`."""
    name = host.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


def _bypassed(host: str, no_proxy: str) -> bool:
    for entry in no_proxy.split(","):
        suffix = entry.strip().lstrip(".").lower()
        if suffix == "*" or (suffix and (host == suffix or host.endswith(f".{suffix}"))):
            return True
    return False


def connection_pool(url: str, environ: Mapping[str, str]) -> urllib3.PoolManager:
    """A pool for `url`, direct or through the environment's proxy (user:password as basic
    auth). No retries or redirects: urllib3 logs the URL (the credentials) when it retries.
    Plain http through a proxy is refused: the proxy would read the URL (https tunnels)."""
    import urllib3

    timeout = urllib3.Timeout(total=REQUEST_TIMEOUT)
    proxy = proxy_for(url, environ)
    if proxy is None:
        return urllib3.PoolManager(timeout=timeout, retries=False)
    if urllib.parse.urlsplit(url).scheme != "https":
        raise ConsoleError(
            "refusing to send credentials over plain http through the proxy in the "
            "environment (HTTP_PROXY); use https",
            code="proxy_plain_http",
        )
    try:
        parts = urllib.parse.urlsplit(proxy)
        host = parts.hostname
        port = parts.port
        if parts.scheme not in ("http", "https") or not host:
            raise ValueError(parts.scheme)
    except ValueError:
        raise ConsoleError(
            "the proxy in the environment (HTTPS_PROXY or HTTP_PROXY) is not an http(s) URL",
            code="proxy_invalid",
        ) from None
    headers = None
    if parts.username is not None:
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        headers = urllib3.make_headers(proxy_basic_auth=f"{user}:{password}")
    netloc = f"[{host}]" if ":" in host else host
    bare = f"{parts.scheme}://{netloc}" + (f":{port}" if port else "")
    return urllib3.ProxyManager(bare, proxy_headers=headers, timeout=timeout, retries=False)


def fetch_signin_token(url: str, pool: urllib3.PoolManager) -> str:
    """GET the getSigninToken URL and return the token; ConsoleError names only the exception
    type or the HTTP status, never the URL."""
    import urllib3

    try:
        response = pool.request("GET", url, preload_content=False, redirect=False)
        try:
            data = response.read(MAX_RESPONSE_BYTES + 1)
        finally:
            response.release_conn()
    except urllib3.exceptions.HTTPError as exc:
        raise ConsoleError(
            f"the federation endpoint could not be reached ({type(exc).__name__})",
            code="federation_unreachable",
        ) from None
    if response.status != 200:
        raise ConsoleError(
            f"the federation endpoint answered HTTP {response.status}",
            code="federation_refused",
            status=response.status,
        )
    try:
        token = json.loads(data.decode("utf-8"))["SigninToken"]
    except (ValueError, KeyError, TypeError):
        token = None
    if not isinstance(token, str) or not token:
        raise ConsoleError(
            "the federation endpoint answered without a SigninToken", code="federation_invalid"
        )
    return token


def _signin_token(
    federation: str,
    creds: Credentials,
    seconds: int,
    http: urllib3.PoolManager,
    err: TextIO,
) -> str:
    """Ask with SessionDuration; on HTTP 400 (a role session assumed with temporary
    credentials: an instance role, IRSA, a chained profile) once more without it."""
    try:
        return fetch_signin_token(signin_token_request(federation, creds, seconds), http)
    except ConsoleError as exc:
        if exc.status != 400:
            raise
    err.write(
        "credfresh: the federation endpoint refused SessionDuration (a chained role session?); "
        "asking again without it, so --duration does not apply\n"
    )
    return fetch_signin_token(signin_token_request(federation, creds, None), http)


class Options(NamedTuple):
    """The sign-in's options, checked: `seconds` is the console session's length."""

    seconds: int
    issuer: str
    destination: str | None


def check_options(duration: str | float, issuer: str | None, destination: str | None) -> Options:
    """The options, or UsageError naming the first wrong one (AWS wants an https destination)."""
    try:
        seconds = session_seconds(duration)
    except ValueError as exc:
        raise UsageError(f"--duration: {exc}") from None
    if issuer is not None and (not issuer or any(ch in issuer for ch in "\r\n")):
        raise UsageError("--issuer: expected a single line of text")
    try:
        parts = None if destination is None else urllib.parse.urlsplit(destination)
        if parts is not None and (parts.scheme != "https" or not parts.hostname):
            raise ValueError("expected an https URL like https://console.aws.amazon.com/s3/")
    except ValueError as exc:
        raise UsageError(f"--destination: {exc}") from None
    return Options(seconds, issuer or DEFAULT_ISSUER, destination)


def main(config_path: Path, profile: str, options: Options, ctx: Context) -> int:
    """Print the sign-in URL for `profile` and return 0; errors are raised for `cli`."""
    light = read_light(config_path, ctx.environ, ctx.home)
    settings = light.profiles.get(profile)
    if settings is None:
        raise UsageError(f"profile {profile} is not in {config_path}")
    creds = valid_credentials(
        light.credentials_file, light.owner, profile, ctx.clock, only=[profile]
    )
    if creds.static:
        raise ConsoleError(
            f"profile {profile} holds long-term keys (a static copy): the console federation"
            " endpoint takes temporary credentials only",
            code="static_keys",
        )
    partition = partition_of(creds.principal_arn, settings.role_arn)
    federation = federation_url(partition, ctx.environ)
    pool = connection_pool(federation, ctx.environ)
    token = _signin_token(federation, creds, options.seconds, pool, ctx.err)
    target = options.destination or CONSOLE_URLS[partition]
    url = login_url(federation, issuer=options.issuer, destination=target, signin_token=token)
    ctx.out.write(url + "\n")
    return EXIT_OK
