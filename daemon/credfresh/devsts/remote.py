"""Steer a dev STS running in another process (`python -m credfresh.devsts`) over HTTP."""

from __future__ import annotations

import http.client
import json
from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

from credfresh.devsts.control import CONTROL_PREFIX
from credfresh.devsts.proxy import loopback_host
from credfresh.devsts.records import Counts, IssuedCredentials, RequestRecord
from credfresh.devsts.walkthrough import Walkthrough

_TIMEOUT: Final = 30.0


class ControlError(RuntimeError):
    """The control API refused a call; `status` and the server's message are kept."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"devsts control API answered {status}: {message}")
        self.status = status


class RemoteDevSTS:
    """The same controls as `Proxy`, for benchmarks and the demo that run devsts apart.

    Match rules are mappings only (`{"Action": "AssumeRole"}`): callables cannot travel.
    """

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError(f"expected http://127.0.0.1:PORT (got {url!r})")
        self.url = url.rstrip("/")
        self._host = loopback_host(parts.hostname)
        self._port = parts.port

    def call(self, method: str, name: str, payload: Mapping[str, Any] | None = None) -> Any:
        body = json.dumps(dict(payload or {})).encode() if method == "POST" else None
        connection = http.client.HTTPConnection(self._host, self._port, timeout=_TIMEOUT)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            connection.request(method, f"{CONTROL_PREFIX}{name}", body=body, headers=headers)
            response = connection.getresponse()
            data = json.loads(response.read() or b"null")
        finally:
            connection.close()
        if response.status != 200:
            message = data.get("error", data) if isinstance(data, dict) else data
            raise ControlError(response.status, str(message))
        return data

    def fail(  # noqa: PLR0913  the control API's keyword options
        self,
        code: str,
        *,
        times: int | None = None,
        match: Mapping[str, str | Sequence[str]] | None = None,
        probability: float = 1.0,
        status: int | None = None,
        message: str | None = None,
    ) -> dict[str, Any]:
        payload = {
            "code": code,
            "times": times,
            "match": dict(match) if match else None,
            "probability": probability,
            "status": status,
            "message": message,
        }
        result: dict[str, Any] = self.call("POST", "fail", payload)
        return result

    def respond_raw(  # noqa: PLR0913  the control API's keyword options
        self,
        status: int,
        body: str,
        content_type: str = "text/html",
        *,
        repeat: int = 1,
        times: int | None = None,
        match: Mapping[str, str | Sequence[str]] | None = None,
        probability: float = 1.0,
        truncate: int | None = None,
    ) -> dict[str, Any]:
        payload = {
            "status": status,
            "body": body,
            "repeat": repeat,
            "content_type": content_type,
            "times": times,
            "match": dict(match) if match else None,
            "probability": probability,
            "truncate": truncate,
        }
        result: dict[str, Any] = self.call("POST", "raw", payload)
        return result

    def drop_next(
        self,
        times: int | None = 1,
        *,
        match: Mapping[str, str | Sequence[str]] | None = None,
        probability: float = 1.0,
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "times": times,
            "match": dict(match) if match else None,
            "probability": probability,
        }
        result: dict[str, Any] = self.call("POST", "drop", payload)
        return result

    def refuse_for(self, seconds: float) -> None:
        self.call("POST", "refuse", {"seconds": seconds})

    def clear_faults(self) -> None:
        self.call("POST", "clear")

    def reset(self) -> None:
        self.call("POST", "reset")

    def seed(self, seed: int | None) -> None:
        self.call("POST", "seed", {"seed": seed})

    def configure(self, **settings: Any) -> dict[str, Any]:
        """Set knobs: lifetime, lifetimes, latency, drop, date_offset, enforce_expiry, ..."""
        result: dict[str, Any] = self.call("POST", "settings", settings)
        return result

    def settings(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("GET", "settings")
        return result

    def requests(
        self, *, action: str | None = None, role_arn: str | None = None
    ) -> list[RequestRecord]:
        query = {k: v for k, v in (("action", action), ("role_arn", role_arn)) if v}
        name = "requests" + (f"?{urlencode(query)}" if query else "")
        return [RequestRecord.from_dict(item) for item in self.call("GET", name)]

    def issued(self) -> list[IssuedCredentials]:
        return [IssuedCredentials.from_dict(item) for item in self.call("GET", "issued")]

    def counts(self) -> Counts:
        data = self.call("GET", "counts")
        return Counts(data["total"], data["by_action"], data["by_role"])

    def setup_walkthrough(self, *, prefix: str = "credfresh-demo") -> Walkthrough:
        """Create (or return the already created) walkthrough objects in the remote devsts."""
        return Walkthrough.from_dict(self.call("POST", "walkthrough", {"prefix": prefix}))

    def set_auth(self, enabled: bool) -> bool:
        result: dict[str, Any] = self.call("POST", "auth", {"enabled": enabled})
        return bool(result["auth"])
