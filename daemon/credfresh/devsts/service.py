"""DevSTS: moto or the stub behind the fault-injecting proxy, started and stopped as one."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from credfresh.devsts.proxy import Proxy, loopback_host
from credfresh.devsts.stub import DEFAULT_ACCOUNT_ID, StubSTS
from credfresh.devsts.walkthrough import Walkthrough, setup_walkthrough, stub_walkthrough
from credfresh.devsts.wire import Upstream

if TYPE_CHECKING:
    from credfresh.devsts.motoserver import MotoUpstream

Mode = Literal["moto", "stub"]


class DevSTS:
    """A development STS on loopback; `url` is the endpoint_url for boto3 STS (and IAM).

    mode="moto": moto's server in this process (real IAM evaluation, ~350 calls/s; its
    state is shared by every moto-mode DevSTS in the process and never reset implicitly).
    mode="stub": canned credentials, no moto needed, for benchmarks (~1,200 boto3 calls/s).
    Both sit behind the same Proxy (`.proxy`).
    """

    def __init__(  # noqa: PLR0913  every knob of a test STS is a keyword
        self,
        mode: Mode = "moto",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        lifetime: float | None = None,
        latency: float = 0.0,
        auth: bool = False,
        seed: int | None = None,
        record_limit: int = 50_000,
        account_id: str = DEFAULT_ACCOUNT_ID,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if mode not in ("moto", "stub"):
            raise ValueError(f"mode must be 'moto' or 'stub' (got {mode!r})")
        if auth and mode != "moto":
            raise ValueError("auth enforcement needs mode='moto': the stub checks no policies")
        self.mode: Mode = mode
        self._host = loopback_host(host)
        self._auth = auth
        self._moto: MotoUpstream | None = None
        self._stub: StubSTS | None = None
        upstream: Upstream
        if mode == "moto":
            from credfresh.devsts.motoserver import MotoUpstream

            self._moto = MotoUpstream(self._host)
            upstream = self._moto
        else:
            self._stub = StubSTS(account_id=account_id, clock=clock, remember=record_limit)
            upstream = self._stub
        self.account_id = account_id
        self.proxy = Proxy(
            upstream,
            host=self._host,
            port=port,
            lifetime=lifetime,
            latency=latency,
            seed=seed,
            record_limit=record_limit,
            clock=clock,
        )
        self.proxy.add_control("walkthrough", self._control_walkthrough)
        self.proxy.add_control("auth", self._control_auth)
        self.walkthrough: Walkthrough | None = None
        self._walkthrough_prefix: str | None = None
        self._started = False

    def start(self) -> DevSTS:
        if self._started:
            return self
        if self._moto is not None:
            self._moto.start()
        try:
            self.proxy.start()
            if self._auth:
                self.enable_auth()
        except BaseException:
            self.stop()
            raise
        self._started = True
        return self

    def stop(self) -> None:
        """Stop listening and, in moto mode, stop moto and restore its auth setting."""
        self.proxy.stop()
        self.proxy.upstream.close()
        self._started = False

    def __enter__(self) -> DevSTS:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The proxy's URL: what clients use as endpoint_url."""
        return self.proxy.url

    @property
    def upstream_url(self) -> str | None:
        """moto's own URL (bypassing faults and records), or None for the stub."""
        return self._moto.url if self._moto is not None else None

    def setup_walkthrough(
        self, *, prefix: str = "credfresh-demo", chain_session_name: str = "credfresh-chain"
    ) -> Walkthrough:
        """Create the walkthrough's user, key and roles (see Walkthrough) and remember them.

        In moto mode the IAM calls go straight to moto (not recorded, never faulted), with
        auth enforcement paused for their duration. The stub gets the same names.
        """
        if self._moto is None:
            found = stub_walkthrough(
                self.account_id, prefix=prefix, chain_session_name=chain_session_name
            )
            if self._stub is not None:
                self._stub.register_user(
                    found.access_key_id, found.user_arn, "AIDADEVSTSSTUBUSER01"
                )
        else:
            enforced = self._moto.auth_enabled
            if enforced:
                self._moto.set_auth(False)
            try:
                found = setup_walkthrough(
                    self._moto.url, prefix=prefix, chain_session_name=chain_session_name
                )
            finally:
                if enforced:
                    self._moto.set_auth(True)
        self.proxy.add_secret(
            f"secret access key of IAM user {found.user_name}", found.secret_access_key
        )
        self.walkthrough = found
        self._walkthrough_prefix = prefix
        return found

    def enable_auth(self) -> None:
        """Make moto check signatures, keys, trust and user policies (AccessDenied is real)."""
        self._require_moto().set_auth(True)

    def disable_auth(self) -> None:
        self._require_moto().set_auth(False)

    @property
    def auth_enabled(self) -> bool:
        return self._moto is not None and self._moto.auth_enabled

    def reset(self, *, moto_state: bool = False) -> None:
        """Clear faults, records and knobs; `moto_state` also wipes moto's IAM and sessions
        for the whole process (other moto-mode instances included)."""
        self.proxy.reset()
        if moto_state:
            self._require_moto().reset_state()
            self.walkthrough = None
            self._walkthrough_prefix = None

    def _require_moto(self) -> MotoUpstream:
        if self._moto is None:
            raise RuntimeError("this needs mode='moto'; the stub has no IAM")
        return self._moto

    def _control_walkthrough(self, data: Mapping[str, Any]) -> dict[str, Any]:
        prefix = data.get("prefix", "credfresh-demo")
        if not isinstance(prefix, str):
            raise ValueError("'prefix' must be a string")
        if self.walkthrough is not None and self._walkthrough_prefix == prefix:
            return self.walkthrough.to_dict()
        return self.setup_walkthrough(prefix=prefix).to_dict()

    def _control_auth(self, data: Mapping[str, Any]) -> dict[str, Any]:
        enabled = data.get("enabled")
        if not isinstance(enabled, bool):
            raise ValueError("'enabled' must be true or false")
        if enabled:
            self.enable_auth()
        else:
            self.disable_auth()
        return {"auth": self.auth_enabled}
