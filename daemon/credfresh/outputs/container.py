"""The container credentials endpoint: botocore's `AWS_CONTAINER_CREDENTIALS_FULL_URI` server.

A long-running SDK process reads the credentials file once and keeps the old keys; from here
botocore refreshes them itself (15 min before expiry). Every request must carry the token of
`token_file` in `Authorization`. Anything on the host can connect, so heads are bounded
(`outputs.http`), tokens compared in constant time, names checked before any lookup, and
nothing secret is logged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import ipaddress
import json
import os
import threading
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Final

from credfresh.config.model import CONTAINER_HOSTS, PROFILE_NAME
from credfresh.config.model import parse_listen as parse_host_port
from credfresh.context import Clock, SystemClock
from credfresh.credentials import Credentials, account_id, endpoint_unavailable, format_time
from credfresh.outputs.http import (
    JSON_CONTENT_TYPE,
    LOG_INTERVAL,
    REQUEST_TIMEOUT,
    LingeringHandler,
    LoopbackHTTPServer,
    RateLimitedLog,
    ServerThread,
)

if TYPE_CHECKING:
    from credfresh.observe.logs import Logger

PATH_PREFIX: Final = "/v1/credentials/"
#: A token file larger than this is refused (an EKS or Kubernetes token is about 1-2 KiB).
MAX_TOKEN_BYTES: Final = 16 * 1024
#: After answering, unread input is drained this much (bounded) before closing, so the
#: client sees the answer instead of a reset.
ALLOWED_HOSTS: Final = frozenset(ipaddress.ip_address(host) for host in CONTAINER_HOSTS)


def parse_listen(listen: str) -> tuple[str, int]:
    """`127.0.0.1:9911` or `[::1]:9911` into (host, port); raise ValueError for anything else.

    Only the addresses botocore accepts over http: any other would offer credentials beyond
    the host. Port 0 is allowed (tests); host names are not (they resolve at another's will).
    """
    try:
        text, port = parse_host_port(listen)
    except ValueError:
        raise ValueError(f"container endpoint listen {listen!r}: expected HOST:PORT") from None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        address = None
    if address not in ALLOWED_HOSTS:
        raise ValueError(
            f"container endpoint listen {listen!r}: expected one of "
            f"{', '.join(CONTAINER_HOSTS)} (the addresses botocore accepts over http)"
        )
    return str(address), port


def credentials_body(creds: Credentials) -> dict[str, str]:
    """The JSON botocore's container provider reads (`Token`, not `SessionToken`), and the
    core of EC2's security-credentials answer (`outputs/imds.py`); `AccountId` when the role
    ARN has one. Only for a set that `endpoint_unavailable` passes."""
    assert creds.expiration is not None
    body = {
        "AccessKeyId": creds.access_key_id,
        "SecretAccessKey": creds.secret_access_key,
        "Token": creds.session_token,
        "Expiration": format_time(creds.expiration),
    }
    account = account_id(creds.principal_arn)
    if account is not None:
        body["AccountId"] = account
    return body


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    """One response: status, JSON body (may hold credentials, so never in a repr), headers."""

    status: int
    body: Mapping[str, object] = dataclasses.field(repr=False)
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)


class _Refusal(Exception):
    """A request answered with an error: `reason` is for the log, `message` for the client."""

    def __init__(self, status: int, message: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.message, self.reason = status, message, reason


def profile_from_path(path: str) -> str:
    """The profile name of `/v1/credentials/<name>`; raise _Refusal otherwise (404, or 400).

    Percent-decoded (strict UTF-8), then a valid config profile name with no empty, `.` or
    `..` segment: only ever a dictionary key, but nothing odd should reach even that.
    """
    raw = path.partition("?")[0]
    if not raw.startswith(PATH_PREFIX):
        raise _Refusal(404, "not found", "unknown_path")
    try:
        name = urllib.parse.unquote(raw[len(PATH_PREFIX) :], errors="strict")
    except UnicodeDecodeError:
        raise _Refusal(400, "invalid profile name", "bad_profile_name") from None
    if not PROFILE_NAME.fullmatch(name) or any(
        segment in ("", ".", "..") for segment in name.split("/")
    ):
        raise _Refusal(400, "invalid profile name", "bad_profile_name")
    return name


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


_SWAPPED: Final = "replaced while it was opened: read again at the next request"


class TokenFile:
    """The expected `Authorization` value, re-read whenever the file changes.

    One stat per request; a read only when inode, size, mtime or ctime moved (a Secret
    update swaps a symlink). A file that gives no usable token refuses every request, and
    the log says why once per change, never with the content. Surrounding whitespace is
    stripped, but a trailing newline is warned about (botocore refuses such a file). A
    symlink is followed only inside the file's own directory (a Secret's `..data/token`).
    """

    def __init__(self, path: Path, log: Logger) -> None:
        self.path = path
        self._log = log
        self._lock = threading.Lock()
        self._signature: tuple[int, ...] | None = None
        self._digest: bytes | None = None
        self._problem: str | None = None

    def digest(self) -> bytes | None:
        """SHA-256 of the current token, or None when the file gives no usable token."""
        from credfresh.trust import link_escape

        with self._lock:  # one resolve and stat per request; a read only after a change
            if link_escape(self.path) is not None:
                self._set(None, None, "a symlink to a file outside its directory: not followed")
                return None
            target = os.path.realpath(self.path)
            try:
                st = os.stat(target)
            except OSError as exc:
                self._set(None, None, f"cannot stat: {exc.strerror or type(exc).__name__}")
                return None
            signature = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            if signature != self._signature:
                digest, problem = self._load(target, signature)
                self._set(None if problem == _SWAPPED else signature, digest, problem)
            return self._digest

    def _load(self, target: str, signature: tuple[int, ...]) -> tuple[bytes | None, str | None]:
        """Read the resolved file itself (O_NOFOLLOW: no link swapped in since the resolve)."""
        try:
            fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
            with open(fd, "rb") as handle:
                st = os.fstat(handle.fileno())
                if (st.st_dev, st.st_ino) != signature[:2]:
                    return None, _SWAPPED
                data = handle.read(MAX_TOKEN_BYTES + 1)
        except OSError as exc:
            return None, f"cannot read: {exc.strerror or type(exc).__name__}"
        if len(data) > MAX_TOKEN_BYTES:
            return None, f"larger than {MAX_TOKEN_BYTES} bytes"
        token = data.strip(b" \t\r\n")
        if not token:
            return None, "empty"
        if any(byte < 0x20 or byte > 0x7E for byte in token):
            return None, "expected printable ASCII on one line"
        if data.endswith((b"\n", b"\r")):
            self._log.warning(
                "container_token_file_newline",
                path=str(self.path),
                hint="botocore refuses a token file that ends with a newline; "
                "write it without one (printf '%s' TOKEN > FILE)",
            )
        return _digest(token), None

    def _set(
        self, signature: tuple[int, ...] | None, digest: bytes | None, problem: str | None
    ) -> None:
        """Record the file's state; log only changes (a new token, or a new problem)."""
        changed = problem != self._problem or digest != self._digest
        self._signature, self._digest, self._problem = signature, digest, problem
        if not changed:
            return
        if problem is None:
            self._log.info("container_token_loaded", path=str(self.path))
        else:
            self._log.warning(
                "container_token_unusable",
                path=str(self.path),
                reason=problem,
                effect="every container credentials request is refused",
            )


class _Handler(LingeringHandler):
    server: _Server

    def respond(self) -> None:
        if self.request_version == "HTTP/0.9" or self.head.malformed:
            self.send_error(HTTPStatus.BAD_REQUEST)
            return
        answer = self.server.app.answer(
            self.command or "", self.path, self.headers.get_all("Authorization") or []
        )
        self._send(answer)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors of the HTTP layer as JSON, without echoing any part of the request."""
        self.close_connection = True
        if self.shed():
            return
        self.request_version = "HTTP/1.0"  # parse_request may fail before knowing it: no 0.9
        self.server.app.refused("bad_request", int(code))
        try:
            phrase = HTTPStatus(code).phrase.lower()
        except ValueError:
            phrase = "error"
        self._send(Answer(int(code), {"error": phrase}))

    def _send(self, answer: Answer) -> None:
        body = json.dumps(answer.body, sort_keys=True).encode() + b"\n"
        self.send_response(answer.status)
        self.send_header("Content-Type", JSON_CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


class _Server(LoopbackHTTPServer):
    app: CredentialsEndpoint
    handler = _Handler
    prefix = "container"


class CredentialsEndpoint:
    """Serves `GET /v1/credentials/<profile>` to holders of the token, on a loopback address.

    `known(name)`: is it configured; `current(name)`: what the daemon last wrote. Checks in an
    order that tells nobody without the token anything, not even which profiles exist: method
    (405), token (401/400), path and name (404/400), profile (404), credentials (503).
    """

    def __init__(  # noqa: PLR0913  a server built from injected parts
        self,
        listen: str,
        token_file: Path,
        *,
        known: Callable[[str], bool],
        current: Callable[[str], Credentials | None],
        log: Logger | None = None,
        clock: Clock | None = None,
        request_timeout: float = REQUEST_TIMEOUT,
        poll_interval: float = 0.5,
    ) -> None:
        if log is None:
            import structlog

            log = structlog.get_logger("credfresh.endpoint")
        self.host, port = parse_listen(listen)
        self.log: Logger = log
        self.token = TokenFile(Path(token_file), log)
        self.known = known
        self.current = current
        self.clock: Clock = clock or SystemClock()
        self.request_timeout = request_timeout
        #: Refusals and connection failures: one line per reason and LOG_INTERVAL.
        self.limited = RateLimitedLog(log, LOG_INTERVAL, self.clock.monotonic)
        self._runner = ServerThread(
            lambda bound: _Server(self.host, bound, self),
            port,
            name="credfresh-endpoint",
            poll_interval=poll_interval,
        )

    @property
    def port(self) -> int:
        """The bound port (the real one when asked for port 0); the requested one before start."""
        return self._runner.port

    @property
    def url(self) -> str:
        """The base URL: append a profile name for AWS_CONTAINER_CREDENTIALS_FULL_URI."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{PATH_PREFIX}"

    def start(self) -> None:
        """Bind (OSError if the address is taken or absent) and serve from a daemon thread."""
        if self._runner.running:
            return
        self.token.digest()  # logs at once if the token file is unusable
        self._runner.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting and close the socket; requests in flight finish on their threads."""
        self._runner.stop(timeout)

    def answer(self, method: str, path: str, authorization: Sequence[str]) -> Answer:
        """Decide one request; pure but for the token file, the lookups and the clock."""
        try:
            if method != "GET":
                raise _Refusal(405, "method not allowed", "method_not_allowed")
            self._authorize(authorization)
            name = profile_from_path(path)
            if not self.known(name):
                raise _Refusal(404, "unknown profile", "unknown_profile")
            creds = self.current(name)
            reason = endpoint_unavailable(creds, self.clock.now())
            if creds is None or reason is not None:
                self.limited.warning(
                    f"unavailable:{reason}:{name}",
                    "container_credentials_unavailable",
                    profile=name,
                    reason=reason,
                )
                return Answer(503, {"error": "no valid credentials", "reason": str(reason)})
            return Answer(200, credentials_body(creds))
        except _Refusal as refusal:
            if refusal.status != 405:
                self.refused(refusal.reason, refusal.status)
            headers = {"Allow": "GET"} if refusal.status == 405 else {}
            return Answer(refusal.status, {"error": refusal.message}, headers)
        except Exception as exc:
            self.log.warning("container_handler_failed", error=type(exc).__name__)
            return Answer(500, {"error": "internal error"})

    def refused(self, reason: str, status: int) -> None:
        """Log a refusal (rate-limited per reason); never with the request's content."""
        self.limited.warning(reason, "container_request_refused", reason=reason, status=status)

    def _authorize(self, values: Sequence[str]) -> None:
        """The header must equal the token file's content; compared as SHA-256 digests with
        hmac.compare_digest, so neither the content nor the length leaks through timing."""
        expected = self.token.digest()
        if expected is None:
            raise _Refusal(401, "unauthorized", "token_file_unusable")
        if not values:
            raise _Refusal(401, "unauthorized", "missing_token")
        if len(values) > 1:
            raise _Refusal(400, "more than one Authorization header", "malformed_token")
        # http.server decodes header bytes as latin-1: encoding back gives the bytes sent.
        given = values[0].encode("latin-1", errors="replace").strip(b" \t")
        if any(byte < 0x20 or byte > 0x7E for byte in given):
            raise _Refusal(400, "malformed Authorization header", "malformed_token")
        if not hmac.compare_digest(_digest(given), expected):
            raise _Refusal(401, "unauthorized", "wrong_token")
