"""moto's server, in-process on loopback, as the upstream that really evaluates IAM."""

from __future__ import annotations

import http.client
import json
import logging
from typing import Final

try:
    from moto.core.authorization import ActionAuthenticatorMixin
    from moto.moto_server import werkzeug_app
    from moto.server import ThreadedMotoServer
except ImportError as error:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "credfresh.devsts mode='moto' needs moto's server, an optional dependency: "
        "pip install 'credfresh[demo]' (or use mode='stub', which needs nothing)"
    ) from error

from credfresh.devsts.wire import UNSIGNED_ACTIONS, Incoming, Outgoing

log = logging.getLogger(__name__)

_STS_TARGET_PREFIX: Final = "AWSSecurityTokenServiceV20110615"
_TIMEOUT: Final = 30.0
_DROP_REQUEST: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "expect",
    }
)
_DROP_RESPONSE: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "date",
        "server",
        "access-control-allow-origin",
    }
)


def _teach_moto_unsigned_federation() -> None:
    """Let AssumeRoleWithWebIdentity/SAML through moto's auth check, as AWS does.

    With auth enforcement on, moto 5 demands an Authorization header on these unsigned
    calls and fails with a 500. moto exempts operations listed in PUBLIC_OPERATIONS (by
    X-Amz-Target) and routes unsigned calls by the target's prefix, so the proxy sends
    that header and this adds STS to both tables. Idempotent.
    """
    werkzeug_app.UNSIGNED_REQUESTS.setdefault(_STS_TARGET_PREFIX, ("sts", "us-east-1"))
    for action in sorted(UNSIGNED_ACTIONS):
        target = f"{_STS_TARGET_PREFIX}.{action}"
        if target not in ActionAuthenticatorMixin.PUBLIC_OPERATIONS:
            ActionAuthenticatorMixin.PUBLIC_OPERATIONS.append(target)


class MotoUpstream:
    """Forwards requests to moto unchanged: Host and the signature headers pass through.

    moto recomputes SigV4 from the headers it receives, Host included, so with auth
    enforcement on a signature made for the proxy's address verifies as long as the
    original Host header is forwarded. moto's state lives in this process's module
    globals: every moto-mode DevSTS in one process shares it, so start() leaves it alone
    (a test session's long-lived instance keeps its IAM objects) and only reset_state()
    wipes it, for everyone.
    """

    name = "moto"

    def __init__(self, host: str = "127.0.0.1") -> None:
        # Werkzeug logs one line per request at INFO; errors (moto crashes) still show.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        _teach_moto_unsigned_federation()
        self._server = ThreadedMotoServer(ip_address=host, port=0, verbose=False)
        self._address: tuple[str, int] | None = None
        self._auth_before: str | None = None

    def start(self) -> None:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self._address = (host, port)

    @property
    def url(self) -> str:
        host, port = self._require_address()
        return f"http://{host}:{port}"

    def _require_address(self) -> tuple[str, int]:
        if self._address is None:
            raise RuntimeError("moto is not started")
        return self._address

    def forward(self, request: Incoming) -> Outgoing:
        host, port = self._require_address()
        headers = [(k, v) for k, v in request.headers if k.lower() not in _DROP_REQUEST]
        action = request.action
        if (
            action in UNSIGNED_ACTIONS
            and request.header("Authorization") is None
            and request.header("X-Amz-Target") is None
        ):
            headers.append(("X-Amz-Target", f"{_STS_TARGET_PREFIX}.{action}"))
        connection = http.client.HTTPConnection(host, port, timeout=_TIMEOUT)
        try:
            connection.putrequest(
                request.method, request.target, skip_host=True, skip_accept_encoding=True
            )
            for name, value in headers:
                connection.putheader(name, value)
            connection.putheader("Content-Length", str(len(request.body)))
            connection.endheaders(request.body)
            response = connection.getresponse()
            body = response.read()
            kept = [(k, v) for k, v in response.getheaders() if k.lower() not in _DROP_RESPONSE]
            return Outgoing(response.status, body, kept, response.reason)
        finally:
            connection.close()

    def _post(self, path: str, body: bytes, content_type: str) -> bytes:
        host, port = self._require_address()
        connection = http.client.HTTPConnection(host, port, timeout=_TIMEOUT)
        try:
            connection.request("POST", path, body=body, headers={"Content-Type": content_type})
            response = connection.getresponse()
            data = response.read()
            if response.status != 200:
                raise RuntimeError(f"moto {path} answered {response.status}: {data[:200]!r}")
            return data
        finally:
            connection.close()

    def reset_state(self) -> None:
        """Forget all IAM and STS state in this process (moto keeps every session until then)."""
        self._post("/moto-api/reset", b"", "application/json")

    def set_auth(self, enabled: bool) -> None:
        """Switch moto's IAM enforcement: signatures, trust policies and user policies.

        This is moto's process-wide setting; the value it had before the first switch is
        restored by close().
        """
        answer = self._post("/moto-api/reset-auth", b"0" if enabled else b"inf", "text/plain")
        previous = str(json.loads(answer).get("PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT", "inf"))
        if self._auth_before is None:
            self._auth_before = previous

    @property
    def auth_enabled(self) -> bool:
        from moto import settings

        return float(settings.INITIAL_NO_AUTH_ACTION_COUNT) != float("inf")

    def close(self) -> None:
        if self._address is None:
            return
        try:
            if self._auth_before is not None:
                self._post("/moto-api/reset-auth", self._auth_before.encode(), "text/plain")
        except (OSError, RuntimeError):
            log.warning("could not restore moto's auth setting", exc_info=True)
        finally:
            self._server.stop()
            self._address = None
