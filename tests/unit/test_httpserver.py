"""The health and metrics endpoint, exercised with a real HTTP client over loopback."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import urllib3
from prometheus_client.parser import text_string_to_metric_families

from credfresh.observe.metrics import Metrics
from credfresh.outputs.health import HttpServer, liveness, readiness
from support.recording import RecordingLogger

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
EXPIRIES: dict[str, datetime | None] = {
    "fresh": NOW + timedelta(hours=1),
    "stale": NOW - timedelta(minutes=1),
    "none": None,
}


class App:
    """The callables the daemon would pass, with switches for the tests."""

    def __init__(self) -> None:
        self.healthy = True
        self.expiries = dict(EXPIRIES)
        self.metrics = Metrics()
        self.metrics.set_profiles(len(self.expiries))
        self.metrics.refresh("fresh", "success", 0.1)

    def health(self) -> tuple[bool, dict[str, object]]:
        return self.healthy, {"healthy": self.healthy}

    def ready(self, profile: str | None) -> tuple[int, dict[str, object]]:
        return readiness(NOW, self.expiries, profile)


@pytest.fixture
def app() -> App:
    return App()


@pytest.fixture
def log() -> RecordingLogger:
    return RecordingLogger()


@pytest.fixture
def server(app: App, log: RecordingLogger) -> Iterator[HttpServer]:
    http = HttpServer(
        "127.0.0.1",
        0,
        health=app.health,
        ready=app.ready,
        metrics=app.metrics.render,
        request_timeout=0.5,
        logger=log,
        poll_interval=0.02,
    )
    http.start()
    yield http
    http.stop()


@pytest.fixture
def client() -> Iterator[urllib3.PoolManager]:
    pool = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=5))
    yield pool
    pool.clear()


def get(
    client: urllib3.PoolManager, server: HttpServer, path: str, method: str = "GET"
) -> urllib3.BaseHTTPResponse:
    return client.request(method, f"http://127.0.0.1:{server.port}{path}")


class TestEndpoints:
    def test_port_zero_binds_a_real_port(self, server: HttpServer) -> None:
        """Asking for port 0 binds a free port and reports it."""
        assert server.port > 0

    def test_healthz_follows_the_heartbeat(
        self, app: App, server: HttpServer, client: urllib3.PoolManager
    ) -> None:
        """200 while healthy, 503 once the health callable says the scheduler is stuck."""
        response = get(client, server, "/healthz")
        assert response.status == 200
        assert response.json() == {"healthy": True}
        app.healthy = False
        assert get(client, server, "/healthz").status == 503

    def test_readyz_for_all_profiles(
        self, app: App, server: HttpServer, client: urllib3.PoolManager
    ) -> None:
        """503 names the expired and missing profiles; 200 once every profile is fresh."""
        response = get(client, server, "/readyz")
        assert response.status == 503
        assert response.headers["Content-Type"] == "application/json"
        assert response.json()["failing"] == {"stale": "expired", "none": "missing"}
        app.expiries = {"fresh": NOW + timedelta(hours=1)}
        assert get(client, server, "/readyz").status == 200

    def test_readyz_for_one_profile(self, server: HttpServer, client: urllib3.PoolManager) -> None:
        """?profile= answers for that profile alone, and 404 for a name it does not know."""
        fresh = get(client, server, "/readyz?profile=fresh")
        assert fresh.status == 200
        assert fresh.json()["expires_at"] == "2025-03-01T13:00:00Z"
        stale = get(client, server, "/readyz?profile=stale")
        assert stale.status == 503
        assert stale.json()["reason"] == "expired"
        unknown = get(client, server, "/readyz?profile=nope%20x")
        assert unknown.status == 404
        assert unknown.json() == {"error": "unknown profile", "profile": "nope x"}

    def test_metrics_exposition(self, server: HttpServer, client: urllib3.PoolManager) -> None:
        """/metrics serves the text format with its content type, parseable, no `_created`."""
        response = get(client, server, "/metrics")
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = response.data.decode()
        names = {family.name for family in text_string_to_metric_families(text)}
        assert {"credfresh_profiles", "credfresh_refresh", "credfresh_alerts_firing"} <= names
        assert "_created" not in text

    def test_head_has_headers_and_no_body(
        self, server: HttpServer, client: urllib3.PoolManager
    ) -> None:
        """HEAD answers like GET without the body."""
        response = get(client, server, "/metrics", "HEAD")
        assert response.status == 200
        assert int(response.headers["Content-Length"]) > 0
        assert response.data == b""

    @pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
    def test_other_methods_are_not_allowed(
        self, server: HttpServer, client: urllib3.PoolManager, method: str
    ) -> None:
        """Anything but GET and HEAD gets 405 with an Allow header."""
        response = get(client, server, "/healthz", method)
        assert response.status == 405
        assert response.headers["Allow"] == "GET, HEAD"

    def test_unknown_path_is_404(self, server: HttpServer, client: urllib3.PoolManager) -> None:
        """Paths other than the three endpoints are 404."""
        assert get(client, server, "/").status == 404

    def test_failing_callable_is_a_500_not_a_traceback(
        self,
        app: App,
        server: HttpServer,
        client: urllib3.PoolManager,
        log: RecordingLogger,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A crashing check answers 500, logs its type, and writes nothing to stderr."""

        def broken() -> tuple[bool, dict[str, object]]:
            raise RuntimeError("boom")

        server.health = broken
        assert get(client, server, "/healthz").status == 500
        assert log.pairs() == [
            ("http_handler_failed", {"path": "/healthz", "error": "RuntimeError", "suppressed": 0})
        ]
        assert capsys.readouterr().err == ""

    def test_slow_client_blocks_nobody(
        self, server: HttpServer, client: urllib3.PoolManager
    ) -> None:
        """A client that connects and says nothing is cut off; others are served meanwhile."""
        silent = socket.create_connection(("127.0.0.1", server.port))
        try:
            start = time.perf_counter()
            assert get(client, server, "/healthz").status == 200
            assert time.perf_counter() - start < 0.4
            silent.settimeout(3)
            assert silent.recv(1024) == b""  # closed by the server after request_timeout
        finally:
            silent.close()

    def test_no_access_log_on_stderr(
        self, server: HttpServer, client: urllib3.PoolManager, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Requests, even bad ones, leave stderr silent."""
        get(client, server, "/healthz")
        get(client, server, "/nowhere")
        assert capsys.readouterr().err == ""

    def test_concurrent_scrapes(self, server: HttpServer) -> None:
        """Parallel requests are all answered (one thread per connection)."""
        statuses: list[int] = []
        pool = urllib3.PoolManager(maxsize=8, retries=False)

        def scrape() -> None:
            statuses.append(pool.request("GET", f"http://127.0.0.1:{server.port}/metrics").status)

        threads = [threading.Thread(target=scrape) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        pool.clear()
        assert statuses == [200] * 8

    def test_stop_releases_the_port(self, app: App) -> None:
        """After stop the port can be bound again at once."""
        http = HttpServer(
            "127.0.0.1", 0, health=app.health, ready=app.ready, metrics=app.metrics.render,
            poll_interval=0.02,
        )  # fmt: skip
        http.start()
        port = http.port
        http.stop()
        again = HttpServer(
            "127.0.0.1", port, health=app.health, ready=app.ready, metrics=app.metrics.render,
            poll_interval=0.02,
        )  # fmt: skip
        again.start()
        again.stop()


def ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback on this host")
class TestDualStack:
    def test_any_v6_address_accepts_ipv4_too(self, app: App, client: urllib3.PoolManager) -> None:
        """`::` serves both ::1 and 127.0.0.1 (IPV6_V6ONLY is turned off)."""
        http = HttpServer(
            "::", 0, health=app.health, ready=app.ready, metrics=app.metrics.render,
            poll_interval=0.02,
        )  # fmt: skip
        http.start()
        try:
            for host in ("[::1]", "127.0.0.1"):
                url = f"http://{host}:{http.port}/healthz"
                assert client.request("GET", url).status == 200
        finally:
            http.stop()


class TestPureChecks:
    def test_liveness_allows_two_intervals(self) -> None:
        """Healthy while the heartbeat is under two wake-up intervals old."""
        assert liveness(100.0, 45.0, 30.0)[0] is True
        assert liveness(100.0, 40.0, 30.0)[0] is False
        assert liveness(100.0, None, 30.0) == (
            False,
            {"healthy": False, "reason": "no heartbeat yet"},
        )

    def test_listen_strings_are_parsed(self, app: App) -> None:
        """`http.listen` forms give host and port; nothing binds before start()."""
        for listen, host, port in (
            ("[::]:9464", "::", 9464),
            ("127.0.0.1:9100", "127.0.0.1", 9100),
        ):
            http = HttpServer.from_listen(
                listen, health=app.health, ready=app.ready, metrics=app.metrics.render
            )
            assert (http.host, http.port) == (host, port)

    def test_readiness_with_no_profiles_is_ready(self) -> None:
        """An empty config has nothing to wait for."""
        assert readiness(NOW, {}) == (200, {"ready": True, "profiles": 0, "failing": {}})
