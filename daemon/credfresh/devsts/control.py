"""The control API under /_devsts/: lets another process steer a running dev STS."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol
from urllib.parse import parse_qsl, urlsplit

from credfresh.devsts.faults import FaultBook, FaultRule, When
from credfresh.devsts.records import Counts, IssuedCredentials, RequestRecord
from credfresh.devsts.wire import ExpirationStyle

log = logging.getLogger(__name__)

CONTROL_PREFIX: Final = "/_devsts/"
MAX_RAW_BODY: Final = 64 * 1024 * 1024
#: The fields every fault rule takes: how often, on which requests, how likely.
_MATCHING: Final = frozenset({"times", "match", "probability"})

ControlHandler = Callable[[Mapping[str, Any]], Any]
# Run before the reply goes out, on a connection that survives it (e.g. closing the port).
ConnectionEffect = Callable[[], None]


class Steered(Protocol):
    """What the control API steers: the proxy (a Protocol here, so proxy.py imports us alone)."""

    lifetime: float | None
    lifetimes: dict[str, float]
    latency: float
    drop: bool
    date_offset: float
    enforce_expiry: bool
    expiration_style: ExpirationStyle
    faults: FaultBook

    @property
    def url(self) -> str: ...

    def settings(self) -> dict[str, Any]: ...

    def requests(
        self, *, action: str | None = None, role_arn: str | None = None
    ) -> list[RequestRecord]: ...

    def issued(self) -> list[IssuedCredentials]: ...

    def counts(self) -> Counts: ...

    def fail(  # noqa: PLR0913  fault options mirror the proxy's
        self,
        code: str,
        *,
        times: int | None = None,
        when: When = None,
        probability: float = 1.0,
        status: int | None = None,
        message: str | None = None,
    ) -> FaultRule: ...

    def respond_raw(  # noqa: PLR0913  fault options mirror the proxy's
        self,
        status: int,
        body: bytes | str,
        content_type: str = "text/html",
        *,
        times: int | None = None,
        when: When = None,
        probability: float = 1.0,
        headers: Mapping[str, str] | None = None,
        truncate: int | None = None,
    ) -> FaultRule: ...

    def rewrite_answer(
        self,
        pattern: bytes | str,
        replacement: bytes | str,
        *,
        times: int | None = None,
        when: When = None,
        probability: float = 1.0,
    ) -> FaultRule: ...

    def trickle(
        self,
        interval: float = 1.0,
        *,
        times: int | None = None,
        when: When = None,
        probability: float = 1.0,
    ) -> FaultRule: ...

    def drop_next(
        self, times: int | None = 1, *, when: When = None, probability: float = 1.0
    ) -> FaultRule: ...

    def refuse_for(self, seconds: float) -> None: ...

    def clear_faults(self) -> None: ...

    def reset(self) -> None: ...

    def seed(self, seed: int | None) -> None: ...


class BadRequest(Exception):
    """A control-API call with missing or ill-typed fields; answered with 400."""


class ControlParams:
    """Typed access to a control call's JSON body, with errors that name the field."""

    def __init__(self, data: Mapping[str, Any], allowed: frozenset[str]) -> None:
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise BadRequest(f"unknown field(s) {unknown}; allowed: {sorted(allowed)}")
        self._data = data

    def has(self, key: str) -> bool:
        return key in self._data

    def number(self, key: str, default: float | None = None) -> float | None:
        value = self._data.get(key, default)
        if value is None:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise BadRequest(f"{key!r} must be a number (got {value!r})")
        return float(value)

    def number_or(self, key: str, default: float) -> float:
        value = self.number(key)
        return default if value is None else value

    def integer(self, key: str, default: int | None = None) -> int | None:
        value = self._data.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadRequest(f"{key!r} must be an integer (got {value!r})")
        return value

    def text(self, key: str, default: str | None = None) -> str | None:
        value = self._data.get(key, default)
        if value is None or isinstance(value, str):
            return value
        raise BadRequest(f"{key!r} must be a string (got {value!r})")

    def flag(self, key: str, default: bool) -> bool:
        value = self._data.get(key, default)
        if not isinstance(value, bool):
            raise BadRequest(f"{key!r} must be true or false (got {value!r})")
        return value

    def mapping(self, key: str) -> dict[str, Any] | None:
        value = self._data.get(key)
        if value is None or isinstance(value, dict):
            return value
        raise BadRequest(f"{key!r} must be an object (got {value!r})")


class ControlAPI:
    """JSON endpoints: GET health, settings, requests, issued, counts, faults; POST fail,
    raw, rewrite, trickle, drop, refuse, settings, clear, reset, seed, plus extensions
    (walkthrough, auth).

    Never recorded, delayed or faulted, so a test can always reach it.
    """

    def __init__(self, proxy: Steered) -> None:
        self._proxy = proxy
        self._extensions: dict[str, ControlHandler] = {}

    def add(self, name: str, handler: ControlHandler) -> None:
        self._extensions[name] = handler

    def dispatch(  # noqa: PLR0911  one answer per route
        self, method: str, target: str, body: bytes
    ) -> tuple[int, Any, ConnectionEffect | None]:
        """Answer a control-API call: (status, JSON payload, effect to apply before replying)."""
        parts = urlsplit(target)
        name = parts.path[len(CONTROL_PREFIX) :].strip("/")
        query = dict(parse_qsl(parts.query))
        try:
            data: Any = json.loads(body) if body.strip() else {}
        except ValueError as error:
            return 400, {"error": f"body is not JSON: {error}"}, None
        if not isinstance(data, dict):
            return 400, {"error": "body must be a JSON object"}, None
        try:
            if method == "GET":
                return 200, self._get(name, query), None
            if method == "POST":
                return self._post(name, data)
        except BadRequest as error:
            return 400, {"error": str(error)}, None
        except (ValueError, RuntimeError) as error:
            return 400, {"error": str(error)}, None
        return 405, {"error": f"{method} is not supported on the control API"}, None

    def _get(self, name: str, query: Mapping[str, str]) -> Any:
        if name in ("health", "settings"):
            return {**self._proxy.settings(), "url": self._proxy.url}
        if name == "requests":
            records = self._proxy.requests(
                action=query.get("action"), role_arn=query.get("role_arn")
            )
            return [record.to_dict() for record in records]
        if name == "issued":
            return [creds.to_dict() for creds in self._proxy.issued()]
        if name == "counts":
            return self._proxy.counts().to_dict()
        if name == "faults":
            return [rule.to_dict() for rule in self._proxy.faults.rules()]
        raise BadRequest(f"unknown control endpoint GET {CONTROL_PREFIX}{name}")

    def _post(self, name: str, data: Mapping[str, Any]) -> tuple[int, Any, ConnectionEffect | None]:  # noqa: PLR0911  one answer per route
        rules = {
            "fail": self._fail,
            "raw": self._raw,
            "rewrite": self._rewrite,
            "trickle": self._trickle,
            "drop": self._drop,
        }
        if name in rules:
            return 200, rules[name](data).to_dict(), None
        if name == "refuse":
            params = ControlParams(data, frozenset({"seconds"}))
            seconds = params.number("seconds")
            if seconds is None or not 0 < seconds <= 600:
                raise BadRequest("'seconds' is required, 0 < seconds <= 600")
            return 200, {"refusing_for": seconds}, lambda: self._proxy.refuse_for(seconds)
        if name == "settings":
            return 200, self._apply_settings(data), None
        if name == "clear":
            ControlParams(data, frozenset())
            self._proxy.clear_faults()
            return 200, {"faults": 0}, None
        if name == "reset":
            ControlParams(data, frozenset())
            self._proxy.reset()
            return 200, self._proxy.settings(), None
        if name == "seed":
            params = ControlParams(data, frozenset({"seed"}))
            self._proxy.seed(params.integer("seed"))
            return 200, {"seed": params.integer("seed")}, None
        return self._extension(name, data)

    def _extension(
        self, name: str, data: Mapping[str, Any]
    ) -> tuple[int, Any, ConnectionEffect | None]:
        handler = self._extensions.get(name)
        if handler is None:
            raise BadRequest(f"unknown control endpoint POST {CONTROL_PREFIX}{name}")
        try:
            return 200, handler(data), None
        except (ValueError, RuntimeError):
            raise
        except Exception as error:
            log.exception("control endpoint %s failed", name)
            return 500, {"error": f"{type(error).__name__}: {error}"}, None

    def _fail(self, data: Mapping[str, Any]) -> FaultRule:
        params = ControlParams(data, frozenset({"code", "status", "message", *_MATCHING}))
        code = params.text("code")
        if not code:
            raise BadRequest('\'code\' is required, e.g. {"code": "Throttling"}')
        return self._proxy.fail(
            code,
            times=params.integer("times"),
            when=params.mapping("match"),
            probability=params.number_or("probability", 1.0),
            status=params.integer("status"),
            message=params.text("message"),
        )

    def _raw(self, data: Mapping[str, Any]) -> FaultRule:
        allowed = {"status", "body", "repeat", "content_type", "headers", "truncate"}
        params = ControlParams(data, frozenset(allowed | _MATCHING))
        status = params.integer("status")
        if status is None:
            raise BadRequest("'status' is required")
        repeat = params.integer("repeat", 1) or 0
        if not 0 <= repeat <= MAX_RAW_BODY:
            raise BadRequest(f"'repeat' must be 0..{MAX_RAW_BODY} (got {repeat})")
        body = (params.text("body", "") or "").encode() * repeat
        if len(body) > MAX_RAW_BODY:
            raise BadRequest(f"body too large: {len(body)} > {MAX_RAW_BODY} bytes")
        return self._proxy.respond_raw(
            status,
            body,
            params.text("content_type", "text/html") or "text/html",
            times=params.integer("times"),
            when=params.mapping("match"),
            probability=params.number_or("probability", 1.0),
            headers={str(k): str(v) for k, v in (params.mapping("headers") or {}).items()},
            truncate=params.integer("truncate"),
        )

    def _rewrite(self, data: Mapping[str, Any]) -> FaultRule:
        params = ControlParams(data, frozenset({"pattern", "replacement", *_MATCHING}))
        pattern = params.text("pattern")
        if not pattern:
            raise BadRequest('\'pattern\' is required, e.g. {"pattern": "</Arn>"}')
        return self._proxy.rewrite_answer(
            pattern,
            params.text("replacement", "") or "",
            times=params.integer("times"),
            when=params.mapping("match"),
            probability=params.number_or("probability", 1.0),
        )

    def _trickle(self, data: Mapping[str, Any]) -> FaultRule:
        params = ControlParams(data, frozenset({"interval", *_MATCHING}))
        return self._proxy.trickle(
            params.number_or("interval", 1.0),
            times=params.integer("times"),
            when=params.mapping("match"),
            probability=params.number_or("probability", 1.0),
        )

    def _drop(self, data: Mapping[str, Any]) -> FaultRule:
        params = ControlParams(data, frozenset(_MATCHING))
        return self._proxy.drop_next(
            params.integer("times", 1),
            when=params.mapping("match"),
            probability=params.number_or("probability", 1.0),
        )

    def _apply_settings(self, data: Mapping[str, Any]) -> dict[str, Any]:
        allowed = frozenset(
            {
                "lifetime",
                "lifetimes",
                "latency",
                "drop",
                "date_offset",
                "enforce_expiry",
                "expiration_style",
            }
        )
        params = ControlParams(data, allowed)
        if params.has("lifetime"):
            self._proxy.lifetime = params.number("lifetime")
        if params.has("lifetimes"):
            lifetimes = params.mapping("lifetimes") or {}
            checked = ControlParams(lifetimes, frozenset(lifetimes))
            self._proxy.lifetimes = {arn: checked.number_or(arn, 0.0) for arn in lifetimes}
        if params.has("latency"):
            self._proxy.latency = params.number_or("latency", 0.0)
        if params.has("drop"):
            self._proxy.drop = params.flag("drop", False)
        if params.has("date_offset"):
            self._proxy.date_offset = params.number_or("date_offset", 0.0)
        if params.has("enforce_expiry"):
            self._proxy.enforce_expiry = params.flag("enforce_expiry", True)
        if params.has("expiration_style"):
            style = params.text("expiration_style")
            if style == "keep":
                self._proxy.expiration_style = "keep"
            elif style == "seconds":
                self._proxy.expiration_style = "seconds"
            else:
                raise BadRequest(f"'expiration_style' must be 'keep' or 'seconds' (got {style!r})")
        return self._proxy.settings()
