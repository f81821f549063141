"""`credfresh console-url` against a loopback stand-in for the AWS federation endpoint."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import secrets
import socket
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import urllib3
import yaml

from conftest import SECRETS
from credfresh.cli import main as cli_main
from credfresh.commands.console_url import (
    CONSOLE_URLS,
    FEDERATION_ENV,
    FEDERATION_URLS,
    connection_pool,
    federation_url,
    partition_of,
    proxy_for,
    session_seconds,
)
from credfresh.credentials import Credentials
from credfresh.credfile import store as credfile
from credfresh.errors import ConsoleError

OWNER = "console-test"


def fake_credentials(principal: str, expires_in: timedelta = timedelta(hours=1)) -> Credentials:
    """Random credentials, registered with the secrets guard."""
    now = datetime.now(UTC)
    creds = Credentials(
        access_key_id="ASIA" + secrets.token_hex(8).upper(),
        secret_access_key=secrets.token_urlsafe(30),
        session_token=secrets.token_urlsafe(120),
        expiration=now + expires_in,
        issued=now - timedelta(minutes=1),
        principal_arn=principal,
    )
    SECRETS[creds.secret_access_key] = "a fake secret access key"
    SECRETS[creds.session_token] = "a fake session token"
    return creds


class LoopbackServer:
    """An HTTP server on a free loopback port, served from a daemon thread."""

    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    def serve(self) -> Iterator[Any]:
        self.thread.start()
        yield self
        self.server.shutdown()
        self.server.server_close()


class Federation(LoopbackServer):
    """The stand-in: checks getSigninToken's Session against the expected credentials."""

    def __init__(self) -> None:
        self.expected: Credentials | None = None
        self.requests: list[dict[str, str]] = []
        self.status = 200
        self.body: bytes | None = None
        self.refuse_duration = False
        self.signin_token = secrets.token_urlsafe(64)
        super().__init__()

    @property
    def url(self) -> str:
        return f"{self.base_url}/federation"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                """Silent."""

            def do_GET(self) -> None:
                parts = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(parts.query, strict_parsing=True))
                stand_in.requests.append({"path": parts.path, **query})
                status, body = stand_in.answer(parts.path, query)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler

    def answer(self, path: str, query: dict[str, str]) -> tuple[int, bytes]:
        if self.status != 200:
            return self.status, b'{"error": "stand-in says no"}'
        if self.body is not None:
            return 200, self.body
        if path != "/federation" or query.get("Action") != "getSigninToken":
            return 400, b"{}"
        if self.refuse_duration and "SessionDuration" in query:
            return 400, b"Invalid credentials parameter"
        creds = self.expected
        session = json.loads(query.get("Session", "{}"))
        if creds is None or session != {
            "sessionId": creds.access_key_id,
            "sessionKey": creds.secret_access_key,
            "sessionToken": creds.session_token,
        }:
            return 403, b'{"error": "session does not match"}'
        return 200, json.dumps({"SigninToken": self.signin_token}).encode()


@pytest.fixture
def federation() -> Iterator[Federation]:
    yield from Federation().serve()


class RawProxy:
    """A loopback listener that records every byte it is sent and refuses each request (403).

    Standing in for a proxy: what it received is exactly what a real proxy would have seen.
    """

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.received: list[bytes] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                data = b""
                try:
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                except OSError:
                    pass
                # Recorded before the answer: the client may exit, and the test look, at once.
                self.received.append(data)
                with contextlib.suppress(OSError):
                    conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")

    def requests(self) -> list[dict[str, str]]:
        """Request line and Proxy-Authorization of each request received."""
        out = []
        for data in self.received:
            lines = data.decode("latin-1").split("\r\n")
            auth = [
                v
                for k, _, v in (h.partition(": ") for h in lines[1:])
                if k.lower() == "proxy-authorization"
            ]
            out.append({"line": lines[0], "auth": auth[0] if auth else ""})
        return out

    def serve(self) -> Iterator[RawProxy]:
        self.thread.start()
        yield self
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def raw_proxy() -> Iterator[RawProxy]:
    yield from RawProxy().serve()


class Setup:
    """A config with an aws and an aws-cn profile, their credentials file, and the env."""

    def __init__(self, root: Path, federation: Federation) -> None:
        self.config = root / "credfresh.yaml"
        self.credentials_file = root / "aws" / "credentials"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "credentials_file": str(self.credentials_file),
                    "owner": OWNER,
                    "state_file": str(root / "state.json"),
                    "profiles": {
                        "app": {"role_arn": "arn:aws:iam::123456789012:role/app"},
                        "cn": {"role_arn": "arn:aws-cn:iam::123456789012:role/app"},
                        "gov": {"role_arn": "arn:aws-us-gov:iam::123456789012:role/app"},
                        "absent": {"role_arn": "arn:aws:iam::123456789012:role/absent"},
                    },
                }
            )
        )
        self.creds = {
            "app": fake_credentials("arn:aws:sts::123456789012:assumed-role/app/s"),
            "cn": fake_credentials("arn:aws-cn:sts::123456789012:assumed-role/app/s"),
            "gov": fake_credentials(""),
        }
        credfile.write_profiles(self.credentials_file, OWNER, self.creds)
        self.env = {"HOME": str(root), FEDERATION_ENV: federation.url}
        self.federation = federation

    def run(self, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = cli_main(
            ["console-url", *args, "-c", str(self.config)],
            stdout=out,
            stderr=err,
            environ=self.env if env is None else env,
        )
        for text in (out.getvalue(), err.getvalue()):
            for creds in self.creds.values():
                assert creds.secret_access_key not in text
                assert creds.session_token not in text
        assert self.federation.signin_token not in err.getvalue()
        return code, out.getvalue(), err.getvalue()


@pytest.fixture
def setup(tmp_path: Path, federation: Federation) -> Setup:
    return Setup(tmp_path, federation)


def query_of(url: str) -> tuple[str, dict[str, str]]:
    parts = urllib.parse.urlsplit(url.strip())
    base = f"{parts.scheme}://{parts.netloc}{parts.path}"
    return base, dict(urllib.parse.parse_qsl(parts.query, strict_parsing=True))


class TestSignIn:
    def test_prints_the_login_url(self, setup: Setup, federation: Federation) -> None:
        """The Session sent is the profile's credentials; stdout holds only the login URL."""
        federation.expected = setup.creds["app"]
        code, out, err = setup.run("app")
        assert (code, err) == (0, "")
        assert out.count("\n") == 1
        base, query = query_of(out)
        assert base == federation.url
        assert query == {
            "Action": "login",
            "Issuer": "credfresh",
            "Destination": "https://console.aws.amazon.com/",
            "SigninToken": federation.signin_token,
        }
        [sent] = federation.requests
        assert sent["Action"] == "getSigninToken"
        assert sent["SessionDuration"] == "3600"
        assert set(json.loads(sent["Session"])) == {"sessionId", "sessionKey", "sessionToken"}

    def test_options(self, setup: Setup, federation: Federation) -> None:
        """--destination, --issuer and --duration reach the two requests."""
        federation.expected = setup.creds["app"]
        code, out, _ = setup.run(
            "app",
            "--destination",
            "https://console.aws.amazon.com/s3/home?region=eu-west-1",
            "--issuer",
            "https://sso.example.com/",
            "--duration",
            "12h",
        )
        assert code == 0
        _, query = query_of(out)
        assert query["Destination"] == "https://console.aws.amazon.com/s3/home?region=eu-west-1"
        assert query["Issuer"] == "https://sso.example.com/"
        assert federation.requests[0]["SessionDuration"] == "43200"

    def test_options_from_the_environment(self, setup: Setup, federation: Federation) -> None:
        """Every option can come from CREDFRESH_<OPTION>, like the other commands."""
        federation.expected = setup.creds["app"]
        env = {**setup.env, "CREDFRESH_ISSUER": "ops", "CREDFRESH_DURATION": "15m"}
        code, out, _ = setup.run("app", env=env)
        assert code == 0
        assert query_of(out)[1]["Issuer"] == "ops"
        assert federation.requests[0]["SessionDuration"] == "900"

    @pytest.mark.parametrize(
        ("profile", "console"),
        [("cn", "https://console.amazonaws.cn/"), ("gov", "https://console.amazonaws-us-gov.com/")],
    )
    def test_partition_default_destination(
        self, setup: Setup, federation: Federation, profile: str, console: str
    ) -> None:
        """The default destination follows the partition (principal ARN, else role ARN)."""
        federation.expected = setup.creds[profile]
        code, out, _ = setup.run(profile)
        assert code == 0
        assert query_of(out)[1]["Destination"] == console

    def test_role_chaining_retries_without_session_duration(
        self, setup: Setup, federation: Federation
    ) -> None:
        """A 400 to SessionDuration (a chained role session) is retried once without it."""
        federation.expected = setup.creds["app"]
        federation.refuse_duration = True
        code, out, err = setup.run("app")
        assert code == 0
        assert query_of(out)[1]["SigninToken"] == federation.signin_token
        assert [("SessionDuration" in r) for r in federation.requests] == [True, False]
        assert "refused SessionDuration" in err


class TestFailures:
    @pytest.mark.parametrize("duration", ["10m", "13h", "abc", "90.5s", "0"])
    def test_bad_duration_is_a_usage_error(
        self, setup: Setup, federation: Federation, duration: str
    ) -> None:
        """Durations outside 15m..12h, or not whole seconds, exit 2 before any request."""
        code, out, err = setup.run("app", "--duration", duration)
        assert (code, out) == (2, "")
        assert "--duration" in err
        assert federation.requests == []

    def test_missing_credentials_exit_1(self, setup: Setup, federation: Federation) -> None:
        """A configured profile with nothing in the file exits 1 and says so."""
        code, out, err = setup.run("absent")
        assert (code, out) == (1, "")
        assert "has no credentials" in err
        assert federation.requests == []

    def test_expired_credentials_exit_1(self, setup: Setup, federation: Federation) -> None:
        """Expired credentials are not sent anywhere: exit 1."""
        expired = fake_credentials("", expires_in=timedelta(seconds=-5))
        credfile.write_profiles(setup.credentials_file, OWNER, {"app": expired})
        code, out, err = setup.run("app")
        assert (code, out) == (1, "")
        assert "expired at" in err
        assert federation.requests == []

    def test_unknown_profile_exit_2(self, setup: Setup) -> None:
        """A profile the config does not name is a usage error."""
        code, _, err = setup.run("nope")
        assert code == 2
        assert "not in" in err

    def test_broken_config_exit_2(self, setup: Setup) -> None:
        """An unreadable config is exit 2."""
        setup.config.write_text("profiles: [")
        assert setup.run("app")[0] == 2

    @pytest.mark.parametrize("status", [403, 500])
    def test_federation_error_exit_1(
        self, setup: Setup, federation: Federation, status: int
    ) -> None:
        """An error answer exits 1 with the status only; nothing on stdout."""
        federation.expected = setup.creds["app"]
        federation.status = status
        code, out, err = setup.run("app")
        assert (code, out) == (1, "")
        assert f"HTTP {status}" in err
        assert len(federation.requests) == 1

    @pytest.mark.parametrize("body", [b"not json", b"{}", b'{"SigninToken": ""}', b"[1]"])
    def test_answer_without_token_exit_1(
        self, setup: Setup, federation: Federation, body: bytes
    ) -> None:
        """A 200 without a usable SigninToken exits 1."""
        federation.expected = setup.creds["app"]
        federation.body = body
        code, out, err = setup.run("app")
        assert (code, out) == (1, "")
        assert "without a SigninToken" in err

    def test_unreachable_endpoint_names_no_url(self, setup: Setup) -> None:
        """A refused connection exits 1; the error names the failure type, never the URL."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        env = {**setup.env, FEDERATION_ENV: f"http://127.0.0.1:{port}/federation"}
        code, out, err = setup.run("app", env=env)
        assert (code, out) == (1, "")
        assert "could not be reached" in err
        assert "Session" not in err
        assert "127.0.0.1" not in err

    @pytest.mark.parametrize(
        "value",
        [
            "http://example.com/federation",
            "http://10.0.0.1/federation",
            "ftp://127.0.0.1/federation",
            "https://",
            "http://127.0.0.1/federation?x=1",
        ],
    )
    def test_unsafe_federation_override_exit_2(self, setup: Setup, value: str) -> None:
        """Credentials never go over plain http beyond loopback: such an override is exit 2."""
        code, out, err = setup.run("app", env={**setup.env, FEDERATION_ENV: value})
        assert (code, out) == (2, "")
        assert FEDERATION_ENV in err

    def test_non_https_destination_exit_2(self, setup: Setup, federation: Federation) -> None:
        """A destination that is not an https URL is a usage error."""
        code, _, err = setup.run("app", "--destination", "http://console.aws.amazon.com/")
        assert code == 2
        assert "--destination" in err
        assert federation.requests == []


class TestProxy:
    """The sign-in request goes through the environment's proxy, as botocore's STS calls do."""

    def test_https_through_a_connect_tunnel_with_its_credentials(
        self, setup: Setup, raw_proxy: RawProxy
    ) -> None:
        """An https endpoint is reached with CONNECT and the proxy's basic auth: the proxy
        sees the host name and nothing of the credentials."""
        proxy_password = secrets.token_urlsafe(12)
        proxy_url = raw_proxy.base_url.replace("//", f"//ops:{proxy_password}%40x@")
        env = {
            **setup.env,
            FEDERATION_ENV: "https://signin.federation.test/federation",
            "HTTPS_PROXY": proxy_url,
        }
        code, out, err = setup.run("app", env=env)
        assert (code, out) == (1, ""), "the stand-in proxy refuses the tunnel"
        assert "federation_unreachable" in err
        expected_auth = base64.b64encode(f"ops:{proxy_password}@x".encode()).decode()
        assert raw_proxy.requests() == [
            {
                "line": "CONNECT signin.federation.test:443 HTTP/1.0",
                "auth": f"Basic {expected_auth}",
            }
        ]
        assert_no_credentials(setup, raw_proxy)
        assert proxy_password not in out + err

    def test_lowercase_wins(self, setup: Setup, raw_proxy: RawProxy) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
        env = {
            **setup.env,
            FEDERATION_ENV: "https://signin.federation.test/federation",
            "HTTPS_PROXY": closed,
            "https_proxy": raw_proxy.base_url,
        }
        assert setup.run("app", env=env)[0] == 1
        assert len(raw_proxy.requests()) == 1

    @pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "ALL"])
    def test_loopback_federation_is_never_proxied(
        self, setup: Setup, federation: Federation, raw_proxy: RawProxy, variable: str
    ) -> None:
        """A loopback stand-in over plain http is reached directly: not a byte reaches the
        proxy, whatever proxy variable is set."""
        federation.expected = setup.creds["app"]
        names = ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy"] if variable == "ALL" else [variable]
        env = {**setup.env, **dict.fromkeys(names, raw_proxy.base_url)}
        code, out, err = setup.run("app", env=env)
        assert code == 0, err
        assert federation.signin_token in out
        assert raw_proxy.received == []

    def test_plain_http_through_a_proxy_is_refused_before_connecting(
        self, raw_proxy: RawProxy
    ) -> None:
        """Plain http to a host the proxy would be used for: refused before any connection
        (to the proxy or anywhere else)."""
        environ = {"HTTP_PROXY": raw_proxy.base_url, "HTTPS_PROXY": raw_proxy.base_url}
        with pytest.raises(ConsoleError) as caught:
            connection_pool("http://198.51.100.7/federation", environ)
        assert caught.value.code == "proxy_plain_http"
        assert raw_proxy.received == []
        tunnelled = connection_pool("https://198.51.100.7/federation", environ)
        assert isinstance(tunnelled, urllib3.ProxyManager)
        direct = connection_pool("http://127.0.0.1:9/federation", environ)
        assert type(direct) is urllib3.PoolManager
        assert raw_proxy.received == [], "building a pool connects nowhere"

    @pytest.mark.parametrize(
        "url",
        [
            "http://127.0.0.1:8080/federation",
            "http://127.1.2.3/federation",
            "http://[::1]:8080/federation",
            "http://[::ffff:127.0.0.1]/federation",
            "http://localhost:8080/federation",
            "https://LOCALHOST./federation",
            "http://stand-in.localhost/federation",
        ],
    )
    def test_loopback_hosts_bypass_every_proxy(self, url: str) -> None:
        environ = {"HTTP_PROXY": "http://p:3128", "HTTPS_PROXY": "http://p:3128"}
        assert proxy_for(url, environ) is None

    def test_unusable_proxy_exit_1_without_its_value(
        self, setup: Setup, federation: Federation
    ) -> None:
        federation.expected = setup.creds["app"]
        env = {
            **setup.env,
            FEDERATION_ENV: "https://signin.federation.test/federation",
            "HTTPS_PROXY": "socks5://ops:hunter2@127.0.0.1:1080",
        }
        code, out, err = setup.run("app", env=env)
        assert (code, out) == (1, "")
        assert "proxy_invalid" in err
        assert "hunter2" not in err
        assert federation.requests == []

    @pytest.mark.parametrize(
        ("environ", "expected"),
        [
            ({}, None),
            ({"HTTPS_PROXY": "http://p", "NO_PROXY": "signin.aws.amazon.com"}, None),
            ({"HTTPS_PROXY": "http://p", "NO_PROXY": "localhost,127.0.0.1"}, "http://p"),
            ({"HTTPS_PROXY": "http://p:3128"}, "http://p:3128"),
            ({"https_proxy": "p:3128"}, "http://p:3128"),
            ({"HTTPS_PROXY": "http://a", "https_proxy": "http://b"}, "http://b"),
            ({"HTTP_PROXY": "http://p"}, None),
            ({"HTTPS_PROXY": "http://p", "NO_PROXY": "amazon.com"}, None),
            ({"HTTPS_PROXY": "http://p", "no_proxy": ".aws.amazon.com"}, None),
            ({"HTTPS_PROXY": "http://p", "NO_PROXY": "*"}, None),
            ({"HTTPS_PROXY": "http://p", "NO_PROXY": "zon.com,example.com"}, "http://p"),
            ({"HTTPS_PROXY": ""}, None),
        ],
    )
    def test_proxy_for(self, environ: dict[str, str], expected: str | None) -> None:
        assert proxy_for("https://signin.aws.amazon.com/federation", environ) == expected


def assert_no_credentials(setup: Setup, proxy: RawProxy) -> None:
    seen = b"".join(proxy.received).decode("latin-1")
    for creds in setup.creds.values():
        for secret in (creds.access_key_id, creds.secret_access_key, creds.session_token):
            assert urllib.parse.quote(secret) not in seen
            assert secret not in seen


class TestPieces:
    def test_partitions(self) -> None:
        """The first ARN naming a known partition wins; anything else is `aws`."""
        assert partition_of("", "arn:aws-cn:iam::1:role/x") == "aws-cn"
        assert partition_of("arn:aws-us-gov:sts::1:assumed-role/x/y", "arn:aws:iam::1:role/x") == (
            "aws-us-gov"
        )
        assert partition_of("arn:aws-iso:iam::1:role/x") == "aws"
        assert partition_of() == "aws"

    def test_default_endpoints(self) -> None:
        """Without the override each partition uses its own sign-in host and console."""
        assert federation_url("aws", {}) == "https://signin.aws.amazon.com/federation"
        assert federation_url("aws-cn", {}) == "https://signin.amazonaws.cn/federation"
        assert federation_url("aws-us-gov", {}) == "https://signin.amazonaws-us-gov.com/federation"
        assert set(CONSOLE_URLS) == set(FEDERATION_URLS)
        assert federation_url("aws", {FEDERATION_ENV: "https://proxy.example/f"}) == (
            "https://proxy.example/f"
        )
        assert federation_url("aws", {FEDERATION_ENV: "http://[::1]:8080/f"}) == (
            "http://[::1]:8080/f"
        )

    def test_session_seconds(self) -> None:
        """Durations parse with the config's syntax and must lie in 900..43200."""
        assert session_seconds("1h") == 3600
        assert session_seconds("15m") == 900
        assert session_seconds(43200) == 43200
        with pytest.raises(ValueError, match="15m to 12h"):
            session_seconds("899s")

    def test_imports_neither_boto3_nor_pydantic(self) -> None:
        """console-url stays a fast command: importing it loads no boto3 or pydantic."""
        code = (
            "import sys, credfresh.commands.console_url, credfresh.cli\n"
            "bad = [m for m in ('boto3', 'botocore', 'pydantic') if m in sys.modules]\n"
            "sys.exit(repr(bad) if bad else 0)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=15, check=False
        )
        assert done.returncode == 0, done.stderr
