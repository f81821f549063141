"""A loopback HTTP proxy in front of moto or the stub: injects STS faults, records every call."""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import ipaddress
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from credfresh.devsts.control import ControlAPI, ControlHandler
from credfresh.devsts.faults import ANSWERING_KINDS, FaultBook, FaultRule, When, as_predicate
from credfresh.devsts.httpserver import Listener
from credfresh.devsts.records import Counts, IssuedCredentials, Recorder, RequestRecord
from credfresh.devsts.rolesanywhere import Refused, RolesAnywhereService
from credfresh.devsts.rolesanywhere import error_answer as ra_error
from credfresh.devsts.stserrors import error_answer, error_spec
from credfresh.devsts.wire import (
    ISSUING_ACTIONS,
    ExpirationStyle,
    Incoming,
    Outgoing,
    Reply,
    Upstream,
    find_credentials,
    recordable,
    rewrite_expiration,
)

log = logging.getLogger(__name__)


def loopback_host(host: str) -> str:
    """Accept only loopback IP literals (and `localhost`): the dev STS must never be reachable."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise ValueError(f"host must be a loopback IP address (got {host!r})") from None
    if not address.is_loopback:
        raise ValueError(f"host must be a loopback address such as 127.0.0.1 (got {host!r})")
    return str(address)


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


class Proxy:
    """The controls tests turn: faults, lifetimes, latency, drops, clock skew, and the logs.

    Knobs are plain attributes read once per request, so changing one affects the next
    request without locking. Order per request: record, latency, drop, fault rules,
    ExpiredToken check, then the upstream.
    """

    def __init__(  # noqa: PLR0913  every knob of a test STS is a keyword
        self,
        upstream: Upstream,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        lifetime: float | None = None,
        latency: float = 0.0,
        seed: int | None = None,
        record_limit: int = 50_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.upstream = upstream
        # Seconds issued credentials live (None: as the upstream says); per-role overrides.
        self.lifetime: float | None = lifetime
        self.lifetimes: dict[str, float] = {}
        # Seconds to wait before answering each request, in that request's own thread.
        self.latency: float = latency
        # Close every connection without an answer.
        self.drop: bool = False
        # Seconds added to the Date header of every answer (clock-skew tests).
        self.date_offset: float = 0.0
        # Answer ExpiredToken to requests signed with an issued key past its expiry.
        self.enforce_expiry: bool = True
        # "keep" the upstream's expiration format, or write whole "seconds" as STS does.
        self.expiration_style: ExpirationStyle = "keep"
        self.recorder = Recorder(record_limit)
        self.faults = FaultBook(seed)
        self.clock = clock
        self._defaults = (lifetime, latency)
        self._address = (loopback_host(host), port)
        self.control_api = ControlAPI(self)
        self.roles_anywhere = RolesAnywhereService(
            lambda request: self._issued(request, self.upstream.forward(request)), clock
        )
        self.control_api.add("rolesanywhere", self.roles_anywhere.control)
        self._lock = threading.Lock()
        self._listener: Listener | None = None
        self._refusing = False
        self._refuse_timer: threading.Timer | None = None
        self._started = False

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Proxy:
        with self._lock:
            if self._started:
                return self
            self._listener = Listener(self, self._address)
            self._address = self._listener.address
            self._started = True
        return self

    def stop(self) -> None:
        with self._lock:
            if self._refuse_timer is not None:
                self._refuse_timer.cancel()
                self._refuse_timer = None
            listener, self._listener = self._listener, None
            self._started = False
            self._refusing = False
        if listener is not None:
            listener.close()

    @property
    def host(self) -> str:
        return self._address[0]

    @property
    def port(self) -> int:
        if not self._started:
            raise RuntimeError("the proxy is not started: call start() first")
        return self._address[1]

    @property
    def url(self) -> str:
        return _url(self.host, self.port)

    @property
    def refuse(self) -> bool:
        """True while the port is closed, so connections are refused as by a dead endpoint."""
        return self._refusing

    @refuse.setter
    def refuse(self, value: bool) -> None:
        with self._lock:
            if not self._started:
                raise RuntimeError("the proxy is not started: call start() first")
            if value == self._refusing:
                return
            if value:
                listener, self._listener = self._listener, None
                if listener is not None:
                    listener.close()
            else:
                self._listener = Listener(self, self._address)
            self._refusing = value

    def refuse_for(self, seconds: float) -> None:
        """Refuse connections for a while, then listen again on the same port."""
        self.refuse = True
        timer = threading.Timer(seconds, self._end_refusal)
        timer.daemon = True
        with self._lock:
            if self._refuse_timer is not None:
                self._refuse_timer.cancel()
            self._refuse_timer = timer
        timer.start()

    def _end_refusal(self) -> None:
        """Timer callback: a stop() racing with it is fine, the proxy is then just stopped."""
        with contextlib.suppress(RuntimeError):
            self.refuse = False

    # -- fault injection ---------------------------------------------------------------

    def fail(  # noqa: PLR0913  a fault's keyword options
        self,
        code: str,
        *,
        times: int | None = None,
        when: When = None,
        probability: float = 1.0,
        status: int | None = None,
        message: str | None = None,
    ) -> FaultRule:
        """Answer matching requests with an STS error (XML and status as AWS sends them).

        `times=None` means every matching request until cleared; `when` is a predicate on
        the RequestRecord or a mapping such as `{"Action": "AssumeRole"}`.
        """
        spec = error_spec(code, status=status, message=message)
        return self.faults.add(
            FaultRule(
                kind="error",
                status=spec.status,
                code=code,
                message=spec.message,
                times=times,
                probability=probability,
                when=as_predicate(when),
                description=f"{code} {spec.status}",
            )
        )

    def respond_raw(  # noqa: PLR0913  a fault's keyword options
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
    ) -> FaultRule:
        """Answer with exactly these bytes: invalid XML, an HTML page, a 10 MB body.

        `truncate=N` announces the full Content-Length but sends only N bytes, then closes.
        """
        data = body.encode() if isinstance(body, str) else body
        if not 100 <= status <= 599:
            raise ValueError(f"status must be 100..599 (got {status})")
        return self.faults.add(
            FaultRule(
                kind="raw",
                status=status,
                body=data,
                content_type=content_type,
                headers=tuple((headers or {}).items()),
                truncate=truncate,
                times=times,
                probability=probability,
                when=as_predicate(when),
                description=f"raw {status} {content_type} {len(data)} bytes",
            )
        )

    def drop_next(
        self, times: int | None = 1, *, when: When = None, probability: float = 1.0
    ) -> FaultRule:
        """Close matching connections without an answer (`proxy.drop = True` drops all)."""
        return self.faults.add(
            FaultRule(
                kind="drop",
                times=times,
                probability=probability,
                when=as_predicate(when),
                description="drop",
            )
        )

    def rewrite_answer(
        self,
        pattern: bytes | str,
        replacement: bytes | str,
        *,
        times: int | None = None,
        when: When = None,
        probability: float = 1.0,
    ) -> FaultRule:
        """Forward, then `re.sub(pattern, replacement)` on the answer body (issued keys stay
        recorded): e.g. a newline into `<AssumedRoleUser><Arn>`.
        """
        find = pattern.encode() if isinstance(pattern, str) else pattern
        put = replacement.encode() if isinstance(replacement, str) else replacement
        try:
            re.compile(find)
        except re.error as error:
            raise ValueError(f"pattern is not a regular expression: {error}") from None
        return self.faults.add(
            FaultRule(
                kind="rewrite",
                pattern=find,
                replacement=put,
                times=times,
                probability=probability,
                when=as_predicate(when),
                description=f"rewrite {find!r}",
            )
        )

    def trickle(
        self,
        interval: float = 1.0,
        *,
        times: int | None = None,
        when: When = None,
        probability: float = 1.0,
    ) -> FaultRule:
        """Forward, then send the answer body one byte every `interval` seconds."""
        return self.faults.add(
            FaultRule(
                kind="trickle",
                interval=interval,
                times=times,
                probability=probability,
                when=as_predicate(when),
                description=f"trickle 1 byte per {interval:g} s",
            )
        )

    def remove_fault(self, rule: FaultRule) -> None:
        self.faults.remove(rule)

    def clear_faults(self) -> None:
        self.faults.clear()

    def seed(self, seed: int | None) -> None:
        """Reseed the random source behind `probability`, for a repeatable sequence."""
        self.faults.seed(seed)

    # -- what was seen ------------------------------------------------------------------

    def requests(
        self, *, action: str | None = None, role_arn: str | None = None
    ) -> list[RequestRecord]:
        return self.recorder.requests(action=action, role_arn=role_arn)

    def issued(self) -> list[IssuedCredentials]:
        return self.recorder.issued()

    def issued_for(self, access_key_id: str) -> IssuedCredentials | None:
        return self.recorder.issued_for(access_key_id)

    def counts(self) -> Counts:
        return self.recorder.counts()

    @property
    def calls(self) -> int:
        return self.recorder.counts().total

    @property
    def calls_by_action(self) -> dict[str, int]:
        return self.recorder.counts().by_action

    @property
    def calls_by_role(self) -> dict[str, int]:
        return self.recorder.counts().by_role

    def add_secret(self, label: str, value: str) -> None:
        self.recorder.add_secret(label, value)

    def find_leaks(self, text: str) -> list[str]:
        """Which issued secrets or session tokens (or registered secrets) appear in `text`."""
        return self.recorder.find_leaks(text)

    def clear_records(self) -> None:
        self.recorder.clear()

    def reset(self) -> None:
        """Back to a clean slate between tests: no faults, no records, knobs as constructed."""
        self.clear_faults()
        self.clear_records()
        self.lifetime, self.latency = self._defaults
        self.lifetimes = {}
        self.drop = False
        self.date_offset = 0.0
        self.enforce_expiry = True
        self.expiration_style = "keep"
        if self._started and self._refusing:
            self.refuse = False

    def settings(self) -> dict[str, Any]:
        return {
            "mode": self.upstream.name,
            "lifetime": self.lifetime,
            "lifetimes": dict(self.lifetimes),
            "latency": self.latency,
            "drop": self.drop,
            "date_offset": self.date_offset,
            "enforce_expiry": self.enforce_expiry,
            "expiration_style": self.expiration_style,
            "refuse": self._refusing,
        }

    # -- answering ----------------------------------------------------------------------

    def answer(self, request: Incoming) -> Reply:  # noqa: PLR0911  one answer per fault kind
        """Decide and build the answer to one proxied request (runs in its handler thread)."""
        signer = request.signer
        path = urlsplit(request.target).path
        roles_anywhere = request.method == "POST" and path == "/sessions"
        record = RequestRecord(
            time=self.clock(),
            method=request.method,
            path=path,
            action="CreateSession" if roles_anywhere else request.action,
            params=recordable(request.params),
            access_key_id=signer.access_key_id,
            service=signer.service,
            region=signer.region,
        )
        self.recorder.arrived(record)
        latency = self.latency
        if latency > 0:
            time.sleep(latency)
        if self.drop:
            self.recorder.finished(record, None, "dropped")
            return Reply(None)
        rule = self.faults.pick(record)
        if rule is not None and rule.kind in ANSWERING_KINDS:
            return self._inject(rule, record, json_errors=roles_anywhere)
        if roles_anywhere:
            outgoing = self.roles_anywhere.answer(request)
            self.recorder.finished(record, outgoing.status, "rolesanywhere")
            return Reply(outgoing)
        if self.enforce_expiry and signer.access_key_id:
            issued = self.recorder.issued_for(signer.access_key_id)
            if issued is not None and self.clock() >= issued.expires_at:
                self.recorder.finished(record, 403, "expired")
                return Reply(error_answer("ExpiredToken"))
        try:
            outgoing = self.upstream.forward(request)
        except (OSError, http.client.HTTPException) as error:
            log.warning("upstream failed: %s", error)
            self.recorder.finished(record, 502, "upstream-failed")
            return Reply(
                Outgoing(502, b"devsts: upstream failed\n", [("Content-Type", "text/plain")])
            )
        except Exception:
            # A bug in the stub or the proxy: answer as STS does, keep the traceback in logs.
            log.exception("upstream raised")
            self.recorder.finished(record, 500, "upstream-failed")
            return Reply(error_answer("InternalFailure"))
        outgoing = self._issued(request, outgoing)
        outcome = "stub" if self.upstream.name == "stub" else "forwarded"
        if rule is not None and rule.kind == "rewrite":
            body = re.sub(rule.pattern, rule.replacement, outgoing.body)
            outgoing = dataclasses.replace(outgoing, body=body)
            outcome = "rewritten"
        if rule is not None and rule.kind == "trickle":
            self.recorder.finished(record, outgoing.status, "trickled")
            return Reply(outgoing, trickle=rule.interval)
        self.recorder.finished(record, outgoing.status, outcome)
        return Reply(outgoing)

    def _inject(self, rule: FaultRule, record: RequestRecord, *, json_errors: bool) -> Reply:
        if rule.kind == "drop":
            self.recorder.finished(record, None, "dropped")
            return Reply(None)
        if rule.kind == "raw":
            self.recorder.finished(record, rule.status, "raw")
            headers = [("Content-Type", rule.content_type), *rule.headers]
            return Reply(Outgoing(rule.status, rule.body, headers), rule.truncate)
        code = rule.code or "InternalFailure"
        self.recorder.finished(record, rule.status, f"error:{code}")
        if json_errors:
            status = rule.status or error_spec(code).status
            return Reply(ra_error(Refused(code, status, rule.message or code)))
        return Reply(error_answer(code, status=rule.status, message=rule.message))

    def _issued(self, request: Incoming, outgoing: Outgoing) -> Outgoing:
        """Shorten and record the credentials in a successful AssumeRole-style answer."""
        action = request.action
        if outgoing.status != 200 or action not in ISSUING_ACTIONS:
            return outgoing
        found = find_credentials(outgoing.body)
        if found is None:
            return outgoing
        role_arn = request.params.get("RoleArn")
        lifetime = self.lifetime
        if role_arn is not None:
            lifetime = self.lifetimes.get(role_arn, lifetime)
        expiration_text = found.expiration_text
        now = self.clock()
        if lifetime is not None:
            body, expiration_text = rewrite_expiration(
                outgoing.body, now + lifetime, self.expiration_style
            )
            outgoing = dataclasses.replace(outgoing, body=body)
        self.recorder.issue(
            IssuedCredentials(
                access_key_id=found.access_key_id,
                secret_access_key=found.secret_access_key,
                session_token=found.session_token,
                expiration_text=expiration_text,
                action=action,
                issued_at=now,
                role_arn=role_arn,
                principal_arn=found.principal_arn,
                source_access_key_id=request.signer.access_key_id,
            )
        )
        return outgoing

    # -- control API --------------------------------------------------------------------

    def add_control(self, name: str, handler: ControlHandler) -> None:
        """Serve `POST /_devsts/<name>` with `handler(json_body)`; its result is sent as JSON."""
        self.control_api.add(name, handler)
