"""A canned STS that answers in microseconds, for benchmarks moto is too slow for."""

from __future__ import annotations

import base64
import collections
import hashlib
import itertools
import re
import secrets
import threading
import time
from collections.abc import Callable
from typing import Final
from xml.sax.saxutils import escape

from credfresh.devsts.stserrors import STS_NAMESPACE, error_answer, new_request_id
from credfresh.devsts.wire import Incoming, Outgoing, format_expiration

DEFAULT_ACCOUNT_ID: Final = "123456789012"
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::(\d{12}):role/(?:[\w+=,.@-]+/)*([\w+=,.@-]{1,64})$")
_SESSION_NAME = re.compile(r"^[\w+=,.@-]{2,64}$")
_MIN_DURATION: Final = 900
_MAX_DURATION: Final = 43200
_DEFAULT_DURATION: Final = 3600


def _error(code: str, message: str | None = None) -> Outgoing:
    return error_answer(code, message=message)


def _ok(action: str, result: str) -> Outgoing:
    request_id = new_request_id()
    body = (
        f'<{action}Response xmlns="{STS_NAMESPACE}"><{action}Result>{result}</{action}Result>'
        f"<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata>"
        f"</{action}Response>\n"
    )
    return Outgoing(
        200, body.encode(), [("Content-Type", "text/xml"), ("x-amzn-RequestId", request_id)]
    )


class StubSTS:
    """AssumeRole, AssumeRoleWithWebIdentity and GetCallerIdentity with fresh keys per call.

    It checks only what botocore does not (ARN and session-name shape, duration range), so
    the proxy's fault rules remain the way to get any other error. Every key is unique:
    a counter is part of the access key id.
    """

    name = "stub"

    def __init__(
        self,
        *,
        account_id: str = DEFAULT_ACCOUNT_ID,
        clock: Callable[[], float] = time.time,
        remember: int = 50_000,
    ) -> None:
        self.account_id = account_id
        self._clock = clock
        self._serial = itertools.count(1)
        self._lock = threading.Lock()
        self._remember = remember
        self._principals: collections.OrderedDict[str, tuple[str, str]] = collections.OrderedDict()

    def register_user(self, access_key_id: str, user_arn: str, user_id: str) -> None:
        """Make GetCallerIdentity name this IAM user for its long-term key."""
        self._remember_principal(access_key_id, user_arn, user_id)

    def forward(self, request: Incoming) -> Outgoing:
        action = request.action
        if action in ("AssumeRole", "AssumeRoleWithWebIdentity"):
            return self._assume(request, action)
        if action == "GetCallerIdentity":
            return self._caller_identity(request)
        return _error("InvalidAction", f"Could not find operation {action} for the stub STS")

    def close(self) -> None:
        """Nothing to release: the stub has no server of its own."""

    def _assume(self, request: Incoming, action: str) -> Outgoing:
        params = request.params
        role_arn = params.get("RoleArn", "")
        session = params.get("RoleSessionName", "")
        role = _ROLE_ARN.match(role_arn)
        if role is None:
            return _error("ValidationError", f"{role_arn!r} is not a valid role ARN")
        if not _SESSION_NAME.match(session):
            return _error(
                "ValidationError",
                "Value at 'roleSessionName' failed to satisfy constraint: "
                "Member must satisfy regular expression pattern: [\\w+=,.@-]{2,64}",
            )
        if action == "AssumeRoleWithWebIdentity" and len(params.get("WebIdentityToken", "")) < 4:
            return _error("ValidationError", "WebIdentityToken is required")
        try:
            duration = int(params.get("DurationSeconds", _DEFAULT_DURATION))
        except ValueError:
            return _error("ValidationError", "DurationSeconds must be an integer")
        if not _MIN_DURATION <= duration <= _MAX_DURATION:
            return _error(
                "ValidationError",
                f"Value '{duration}' at 'durationSeconds' failed to satisfy constraint: "
                f"Member must have value between {_MIN_DURATION} and {_MAX_DURATION}",
            )
        account, role_name = role.group(1), role.group(2)
        access_key_id, secret, token = self._new_keys()
        role_id = "AROA" + hashlib.sha256(role_arn.encode()).hexdigest()[:16].upper()
        assumed_arn = f"arn:aws:sts::{account}:assumed-role/{role_name}/{session}"
        self._remember_principal(access_key_id, assumed_arn, f"{role_id}:{session}")
        expiration = format_expiration(self._clock() + duration, fractional=False)
        web = ""
        if action == "AssumeRoleWithWebIdentity":
            web = (
                "<SubjectFromWebIdentityToken>system:serviceaccount:default:devsts"
                "</SubjectFromWebIdentityToken><Audience>sts.amazonaws.com</Audience>"
                "<Provider>oidc.example.com</Provider>"
            )
        result = (
            f"{web}<AssumedRoleUser><Arn>{escape(assumed_arn)}</Arn>"
            f"<AssumedRoleId>{escape(role_id)}:{escape(session)}</AssumedRoleId>"
            f"</AssumedRoleUser><Credentials><AccessKeyId>{access_key_id}</AccessKeyId>"
            f"<SecretAccessKey>{secret}</SecretAccessKey><SessionToken>{token}</SessionToken>"
            f"<Expiration>{expiration}</Expiration></Credentials>"
            "<PackedPolicySize>6</PackedPolicySize>"
        )
        return _ok(action, result)

    def _caller_identity(self, request: Incoming) -> Outgoing:
        key = request.signer.access_key_id or ""
        with self._lock:
            known = self._principals.get(key)
        if known is None:
            arn, user_id = f"arn:aws:iam::{self.account_id}:user/devsts", "AIDADEVSTSSTUBUSER01"
        else:
            arn, user_id = known
        account = arn.split(":")[4]
        result = (
            f"<Arn>{escape(arn)}</Arn><UserId>{escape(user_id)}</UserId>"
            f"<Account>{account}</Account>"
        )
        return _ok("GetCallerIdentity", result)

    def _new_keys(self) -> tuple[str, str, str]:
        serial = next(self._serial)
        suffix = base64.b32encode(secrets.token_bytes(5)).decode()
        access_key_id = f"ASIA{serial:08X}{suffix}"[:20]
        secret = base64.b64encode(secrets.token_bytes(30)).decode()
        token = "IQoJb3JpZ2luX2VjE" + base64.b64encode(secrets.token_bytes(300)).decode()
        return access_key_id, secret, token

    def _remember_principal(self, access_key_id: str, arn: str, user_id: str) -> None:
        with self._lock:
            self._principals[access_key_id] = (arn, user_id)
            while len(self._principals) > self._remember:
                self._principals.popitem(last=False)
