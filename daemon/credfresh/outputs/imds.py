"""The IMDSv2-compatible endpoint: one profile's credentials as EC2's instance metadata serves
an instance role's, for tools that speak nothing else.

The protocol has no secret (a token is anyone's for a PUT), so who may read is decided by the
kernel: the peer socket's owner uid (`outputs.peer`) must be in `allow_uids`, before anything
else is looked at. Heads are bounded as every credfresh server's (`outputs.http`); tokens
live in memory with their expiry, bounded in number; nothing secret is logged.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import ipaddress
import json
import secrets
import socket
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from credfresh.config.model import IMDS_HOSTS, OVERFLOW_UID
from credfresh.config.model import parse_listen as parse_host_port
from credfresh.context import Clock, SystemClock
from credfresh.credentials import Credentials, endpoint_unavailable, format_time
from credfresh.outputs.container import credentials_body
from credfresh.outputs.http import (
    LOG_INTERVAL,
    REQUEST_TIMEOUT,
    LingeringHandler,
    LoopbackHTTPServer,
    RateLimitedLog,
    ServerThread,
)
from credfresh.outputs.peer import PROC_NET, Endpoint, endpoint, read_owner

if TYPE_CHECKING:
    from credfresh.observe.logs import Logger

TOKEN_PATH: Final = "/latest/api/token"  # noqa: S105  a path, not a secret
CREDENTIALS_PATH: Final = "/latest/meta-data/iam/security-credentials/"
TTL_HEADER: Final = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER: Final = "X-aws-ec2-metadata-token"  # noqa: S105  a header name
MAX_TOKEN_TTL: Final = 21600
#: Tokens held at once; past it the oldest goes (its holder gets 401 and asks for another, as
#: SDKs do). Only allowed uids reach the token route, so only they can fill it.
MAX_TOKENS: Final = 1024
#: After answering, unread input is drained this much before closing (no reset lost answer).
ALLOWED_HOSTS: Final = frozenset(ipaddress.ip_address(host) for host in IMDS_HOSTS)

Route = Literal["token", "list", "credentials", "unknown"]


def parse_listen(listen: str) -> tuple[str, int]:
    """`127.0.0.1:PORT`, `[::1]:PORT` or `169.254.169.254:80` into (host, port)."""
    host, port = parse_host_port(listen)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address not in ALLOWED_HOSTS:
        raise ValueError(f"imds listen {listen!r}: expected one of {', '.join(IMDS_HOSTS)}")
    return str(address), port


def token_ttl(values: Sequence[str]) -> int | None:
    """The token lifetime asked for: exactly one header of 1..21600 seconds, else None."""
    if len(values) != 1:
        return None
    text = values[0].strip(" \t")
    if not text.isascii() or not text.isdigit() or len(text) > 5:
        return None
    ttl = int(text)
    return ttl if 1 <= ttl <= MAX_TOKEN_TTL else None


def route(path: str) -> tuple[Route, str]:
    """Which answer a path asks for, and the role name for `credentials` (query ignored)."""
    raw = path.partition("?")[0]
    if raw == TOKEN_PATH:
        return "token", ""
    if raw in (CREDENTIALS_PATH, CREDENTIALS_PATH.rstrip("/")):
        return "list", ""
    if raw.startswith(CREDENTIALS_PATH):
        name = raw[len(CREDENTIALS_PATH) :]
        if name and "/" not in name:
            return "credentials", name
    return "unknown", ""


def credentials_document(creds: Credentials) -> dict[str, str]:
    """EC2's security-credentials answer: the container endpoint's fields, and three more."""
    return {
        "Code": "Success",
        "LastUpdated": format_time(creds.issued),
        "Type": "AWS-HMAC",
        **credentials_body(creds),
    }


def set_hop_limit(sock: socket.socket, hops: int) -> None:
    """The IP TTL (IPv6: unicast hops) of what this socket sends from now on."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, hops)
    else:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, hops)


class Tokens:
    """Issued session tokens (as SHA-256 digests) with their monotonic expiry; bounded."""

    def __init__(self, limit: int = MAX_TOKENS) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._expiry: collections.OrderedDict[bytes, float] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._expiry)

    def issue(self, ttl: int, now: float) -> str:
        token = secrets.token_urlsafe(42)
        with self._lock:
            for key in [key for key, ends in self._expiry.items() if ends <= now]:
                del self._expiry[key]
            while len(self._expiry) >= self.limit:
                self._expiry.popitem(last=False)
            self._expiry[_digest(token)] = now + ttl
        return token

    def valid(self, token: str, now: float) -> bool:
        with self._lock:
            ends = self._expiry.get(_digest(token))
        return ends is not None and now < ends


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("latin-1", errors="replace")).digest()


@dataclasses.dataclass(frozen=True, slots=True)
class Request:
    """What an answer depends on: method, path, the two IMDS headers, X-Forwarded-For."""

    method: str
    path: str
    tokens: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    ttl: tuple[str, ...] = ()
    forwarded: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    """One response; the body may hold credentials or a token, so never in a repr."""

    status: int
    body: str = dataclasses.field(repr=False)
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    hop_limited: bool = False  # the token answer: sent with the configured IP TTL


class _Refusal(Exception):
    def __init__(self, status: int, reason: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.headers = status, reason, headers or {}


class ImdsEndpoint:
    """Serves EC2's token and security-credentials paths for `profile`, to `allow_uids` only.

    `current(profile)`: what the daemon last wrote. Order of checks: the peer's uid (403,
    `imds_refused`), X-Forwarded-For (403), the route (404), method (405), token (401/400),
    credentials (404 while none are valid: botocore then tries again later).
    """

    def __init__(  # noqa: PLR0913  a server built from injected parts
        self,
        listen: str,
        profile: str,
        *,
        current: Callable[[str], Credentials | None],
        allow_uids: Collection[int],
        allow_v1: bool = False,
        hop_limit: int = 1,
        log: Logger | None = None,
        clock: Clock | None = None,
        owner: Callable[[Endpoint, Endpoint], int | None] | None = None,
        proc_net: Path = PROC_NET,
        request_timeout: float = REQUEST_TIMEOUT,
        poll_interval: float = 0.5,
    ) -> None:
        if log is None:
            import structlog

            log = structlog.get_logger("credfresh.imds")
        self.host, port = parse_listen(listen)
        self.profile = profile
        self.current = current
        self.allow_uids = frozenset(allow_uids)
        self.allow_v1 = allow_v1
        self.hop_limit = hop_limit
        self.log: Logger = log
        self.clock: Clock = clock or SystemClock()
        self.owner = owner or (lambda peer, ours: read_owner(peer, ours, proc_net))
        self.request_timeout = request_timeout
        self.tokens = Tokens()
        self.limited = RateLimitedLog(log, LOG_INTERVAL, self.clock.monotonic)
        self._runner = ServerThread(
            lambda bound: _Server(self.host, bound, self),
            port,
            name="credfresh-imds",
            poll_interval=poll_interval,
        )

    @property
    def port(self) -> int:
        return self._runner.port

    @property
    def url(self) -> str:
        """What `AWS_EC2_METADATA_SERVICE_ENDPOINT` is set to."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> None:
        """Bind (OSError if the address is taken or absent) and serve from a daemon thread."""
        self._runner.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._runner.stop(timeout)

    def peer_uid(self, peer: tuple[str, int], ours: tuple[str, int]) -> int | None:
        """The owner of the connecting socket; None when the kernel does not say."""
        try:
            return self.owner(endpoint(*peer), endpoint(*ours))
        except (OSError, ValueError):
            return None

    def answer(self, request: Request, uid: int | None) -> Answer:
        """Decide one request; pure but for the token table, the lookup and the clock.

        The overflow uid is never allowed: it stands for anyone unmapped in our user namespace.
        """
        try:
            if uid is None or uid == OVERFLOW_UID or uid not in self.allow_uids:
                self.limited.warning(f"uid:{uid}", "imds_refused", uid=uid)
                return Answer(403, "Forbidden\n")
            return self._answer(request)
        except _Refusal as refusal:
            if refusal.status != 404:
                self.refused(refusal.reason, refusal.status)
            phrase = HTTPStatus(refusal.status).phrase
            return Answer(refusal.status, f"{phrase}\n", refusal.headers)
        except Exception as exc:
            self.log.warning("imds_handler_failed", error=type(exc).__name__)
            return Answer(500, "Internal Server Error\n")

    def _answer(self, request: Request) -> Answer:
        if request.forwarded:
            raise _Refusal(403, "forwarded")
        where, name = route(request.path)
        if where == "unknown":
            raise _Refusal(404, "unknown_path")
        now = self.clock.monotonic()
        if where == "token":
            if request.method != "PUT":
                raise _Refusal(405, "method_not_allowed", {"Allow": "PUT"})
            ttl = token_ttl(request.ttl)
            if ttl is None:
                raise _Refusal(400, "bad_token_ttl")
            token = self.tokens.issue(ttl, now)
            return Answer(200, token, {TTL_HEADER: str(ttl)}, hop_limited=True)
        if request.method != "GET":
            raise _Refusal(405, "method_not_allowed", {"Allow": "GET"})
        self._authorize(request.tokens, now)
        if where == "list":
            return Answer(200, self.profile)
        if name != self.profile:
            raise _Refusal(404, "unknown_role")
        return self._credentials()

    def _authorize(self, tokens: Sequence[str], now: float) -> None:
        if not tokens:
            if self.allow_v1:
                return
            raise _Refusal(401, "missing_token")
        if len(tokens) > 1:
            raise _Refusal(400, "malformed_token")
        if not self.tokens.valid(tokens[0].strip(" \t"), now):
            raise _Refusal(401, "wrong_token")

    def _credentials(self) -> Answer:
        creds = self.current(self.profile)
        reason = endpoint_unavailable(creds, self.clock.now())
        if creds is None or reason is not None:
            self.limited.warning(
                f"unavailable:{reason}",
                "imds_credentials_unavailable",
                profile=self.profile,
                reason=reason,
            )
            return Answer(404, "Not Found\n")
        return Answer(200, json.dumps(credentials_document(creds), indent=2))

    def refused(self, reason: str, status: int) -> None:
        """A refusal other than the uid's, rate-limited per reason, never with the request."""
        self.limited.warning(reason, "imds_request_refused", reason=reason, status=status)


class _Handler(LingeringHandler):
    server: _Server

    def respond(self) -> None:
        if self.request_version == "HTTP/0.9" or self.head.malformed:
            self.send_error(HTTPStatus.BAD_REQUEST)
            return
        app = self.server.app
        host, port = self.client_address[:2]
        ours = self.connection.getsockname()
        request = Request(
            method=self.command or "",
            path=self.path,
            tokens=tuple(self.headers.get_all(TOKEN_HEADER) or ()),
            ttl=tuple(self.headers.get_all(TTL_HEADER) or ()),
            forwarded="X-Forwarded-For" in self.headers,
        )
        answer = app.answer(request, app.peer_uid((host, port), (ours[0], ours[1])))
        if answer.hop_limited:
            set_hop_limit(self.connection, app.hop_limit)
        self._send(answer)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors of the HTTP layer, without echoing any part of the request."""
        self.close_connection = True
        if self.shed():
            return
        self.request_version = "HTTP/1.0"
        self.server.app.refused("bad_request", int(code))
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "Error"
        self._send(Answer(int(code), f"{phrase}\n"))

    def _send(self, answer: Answer) -> None:
        body = answer.body.encode()
        self.send_response(answer.status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


class _Server(LoopbackHTTPServer):
    app: ImdsEndpoint
    handler = _Handler
    prefix = "imds"
