"""The container credentials endpoint: botocore compatibility, authorization and hardening."""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import types
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.credentials import ContainerProvider
from botocore.utils import ContainerMetadataFetcher

from conftest import SECRETS
from credfresh.credentials import Credentials, account_id
from credfresh.outputs import container as endpoint_module
from credfresh.outputs.container import (
    CredentialsEndpoint,
    credentials_body,
    parse_listen,
)
from credfresh.outputs.http import MAX_HEAD_BYTES
from support.recording import RecordingLogger

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
ROLE = "arn:aws:sts::123456789012:assumed-role/app/credfresh-app"


def fake_credentials(
    expires_in: timedelta = timedelta(hours=1), now: datetime = NOW
) -> Credentials:
    """Random credentials, registered with the secrets guard so no test may print them."""
    creds = Credentials(
        access_key_id="ASIA" + secrets.token_hex(8).upper(),
        secret_access_key=secrets.token_urlsafe(30),
        session_token=secrets.token_urlsafe(120),
        expiration=now + expires_in,
        issued=now,
        principal_arn=ROLE,
    )
    SECRETS[creds.secret_access_key] = "a fake secret access key"
    SECRETS[creds.session_token] = "a fake session token"
    return creds


class Profiles:
    """The daemon's side: which profiles exist and what the file holds, with a call record."""

    def __init__(self) -> None:
        self.creds: dict[str, Credentials | None] = {"app": fake_credentials()}
        self.asked: list[str] = []
        self.now = NOW

    def known(self, name: str) -> bool:
        self.asked.append(name)
        return name in self.creds

    def current(self, name: str) -> Credentials | None:
        return self.creds.get(name)


@pytest.fixture
def token(tmp_path: Path) -> str:
    value = secrets.token_urlsafe(32)
    SECRETS[value] = "the endpoint token"
    (tmp_path / "token").write_text(value)
    (tmp_path / "token").chmod(0o600)
    return value


@pytest.fixture
def token_file(tmp_path: Path, token: str) -> Path:
    return tmp_path / "token"


@pytest.fixture
def profiles() -> Profiles:
    return Profiles()


@pytest.fixture
def log() -> RecordingLogger:
    return RecordingLogger()


def make_endpoint(
    token_file: Path, profiles: Profiles, log: RecordingLogger, listen: str = "127.0.0.1:0"
) -> CredentialsEndpoint:
    return CredentialsEndpoint(
        listen,
        token_file,
        known=profiles.known,
        current=profiles.current,
        log=log,
        clock=types.SimpleNamespace(now=lambda: profiles.now, monotonic=time.monotonic),
        request_timeout=0.5,
        poll_interval=0.02,
    )


@pytest.fixture
def server(
    token_file: Path, profiles: Profiles, log: RecordingLogger, token: str
) -> Iterator[CredentialsEndpoint]:
    endpoint = make_endpoint(token_file, profiles, log)
    endpoint.start()
    yield endpoint
    endpoint.stop()
    assert token not in log.text()


def exchange(server: CredentialsEndpoint, data: bytes, timeout: float = 3.0) -> bytes:
    """Send raw bytes and read until the server closes: no client-side path normalization."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


class Reply:
    """A parsed raw HTTP response."""

    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:])
        }

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    server: CredentialsEndpoint,
    path: str,
    token: str | None = None,
    *,
    method: str = "GET",
    extra: str = "",
) -> Reply:
    auth = f"Authorization: {token}\r\n" if token is not None else ""
    data = f"{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}{extra}\r\n".encode("latin-1")
    return Reply(exchange(server, data))


class TestListen:
    @pytest.mark.parametrize(
        ("listen", "host", "port"),
        [
            ("127.0.0.1:9911", "127.0.0.1", 9911),
            ("[::1]:9911", "::1", 9911),
            ("[0:0::1]:9911", "::1", 9911),
            ("169.254.170.23:80", "169.254.170.23", 80),
            ("[fd00:ec2::23]:80", "fd00:ec2::23", 80),
            ("127.0.0.1:0", "127.0.0.1", 0),
        ],
    )
    def test_allowed_addresses(self, listen: str, host: str, port: int) -> None:
        """The four addresses botocore accepts over http parse (and normalize); none is bound."""
        assert parse_listen(listen) == (host, port)

    @pytest.mark.parametrize(
        "listen",
        [
            "0.0.0.0:9911",
            "[::]:9911",
            "10.0.0.1:9911",
            "127.0.0.2:9911",
            "169.254.170.2:80",
            "[::ffff:127.0.0.1]:9911",
            "localhost:9911",
            "127.0.0.1",
            "127.0.0.1:99999",
            "::1:9911",
            " 127.0.0.1:9911",
        ],
    )
    def test_other_addresses_refused_at_construction(
        self, listen: str, token_file: Path, profiles: Profiles, log: RecordingLogger
    ) -> None:
        """Any other bind address is a ValueError even when the schema was bypassed."""
        with pytest.raises(ValueError, match="container endpoint listen"):
            make_endpoint(token_file, profiles, log, listen)

    def test_link_local_address_constructs_without_binding(
        self, token_file: Path, profiles: Profiles, log: RecordingLogger
    ) -> None:
        """169.254.170.23 is accepted by validation; nothing binds until start()."""
        endpoint = make_endpoint(token_file, profiles, log, "169.254.170.23:80")
        assert endpoint.url == "http://169.254.170.23:80/v1/credentials/"

    def test_ipv6_loopback(self, token_file: Path, token: str, profiles: Profiles) -> None:
        """[::1] binds an IPv6 socket and serves like IPv4."""
        if not socket.has_ipv6:
            pytest.skip("no IPv6")
        endpoint = make_endpoint(token_file, profiles, RecordingLogger(), "[::1]:0")
        try:
            endpoint.start()
        except OSError:
            pytest.skip("no IPv6 loopback here")
        try:
            with socket.create_connection(("::1", endpoint.port), timeout=3) as sock:
                sock.sendall(
                    f"GET /v1/credentials/app HTTP/1.1\r\nAuthorization: {token}\r\n\r\n".encode()
                )
                data = sock.recv(65536)
            assert data.startswith(b"HTTP/1.0 200")
            assert endpoint.url.startswith("http://[::1]:")
        finally:
            endpoint.stop()


class TestBody:
    def test_account_id_from_principal(self) -> None:
        """The account comes from the principal ARN, and only from a well-formed one."""
        assert account_id(ROLE) == "123456789012"
        assert account_id("arn:aws-cn:iam::210987654321:role/x") == "210987654321"
        assert account_id("") is None
        assert account_id("arn:aws:sts::12345:assumed-role/x") is None

    def test_body_fields(self) -> None:
        """botocore's field names: Token (not SessionToken), Expiration in ISO 8601 Z."""
        creds = fake_credentials()
        body = credentials_body(creds)
        assert body == {
            "AccessKeyId": creds.access_key_id,
            "SecretAccessKey": creds.secret_access_key,
            "Token": creds.session_token,
            "Expiration": "2025-03-01T13:00:00Z",
            "AccountId": "123456789012",
        }

    def test_no_account_without_principal(self) -> None:
        """Without a principal ARN the optional AccountId is left out."""
        creds = fake_credentials()
        bare = Credentials(
            creds.access_key_id, creds.secret_access_key, creds.session_token, NOW, NOW
        )
        assert "AccountId" not in credentials_body(bare)


class TestBotocore:
    def test_container_provider_gets_the_credentials(
        self, server: CredentialsEndpoint, token_file: Path, profiles: Profiles
    ) -> None:
        """botocore's own ContainerProvider, with the token file, loads the profile's keys."""
        profiles.now = datetime.now(UTC)
        profiles.creds["app"] = expected = fake_credentials(now=profiles.now)
        environ = {
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": server.url + "app",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(token_file),
        }
        provider = ContainerProvider(
            environ=environ,
            fetcher=ContainerMetadataFetcher(sleep=lambda _: None),  # type: ignore[arg-type]
        )
        creds = provider.load()
        frozen = creds.get_frozen_credentials()
        assert frozen.access_key == expected.access_key_id
        assert frozen.secret_key == expected.secret_access_key
        assert frozen.token == expected.session_token
        assert creds.account_id == "123456789012"

    def test_boto3_client_in_a_fresh_process(
        self, server: CredentialsEndpoint, token_file: Path, profiles: Profiles, tmp_path: Path
    ) -> None:
        """A boto3 client configured only by the two environment variables finds the keys."""
        profiles.now = datetime.now(UTC)
        profiles.creds["app"] = expected = fake_credentials(now=profiles.now)
        env = {
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
            "HOME": str(tmp_path),
            "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": server.url + "app",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(token_file),
        }
        script = (
            "import boto3, json\n"
            "session = boto3.Session()\n"
            "client = session.client('sts', region_name='us-east-1')\n"
            "creds = session.get_credentials()\n"
            "print(json.dumps({'key': creds.get_frozen_credentials().access_key,"
            " 'method': creds.method}))\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", script],
            env=env,
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads(done.stdout) == {
            "key": expected.access_key_id,
            "method": "container-role",
        }


class TestAuthorization:
    def test_right_token_gets_credentials(
        self, server: CredentialsEndpoint, token: str, profiles: Profiles
    ) -> None:
        """The exact token gets 200 JSON with no-store caching."""
        reply = request(server, "/v1/credentials/app", token)
        assert reply.status == 200
        assert reply.headers["content-type"] == "application/json"
        assert reply.headers["cache-control"] == "no-store"
        creds = profiles.creds["app"]
        assert creds is not None
        assert reply.json()["AccessKeyId"] == creds.access_key_id

    @pytest.mark.parametrize("kind", ["missing", "wrong", "last_byte", "prefix", "longer"])
    def test_wrong_tokens_are_401(
        self, server: CredentialsEndpoint, token: str, profiles: Profiles, kind: str
    ) -> None:
        """No token, another token, one differing in its last byte, a prefix or an extension:
        401 without credentials."""
        given = {
            "missing": None,
            "wrong": secrets.token_urlsafe(32),
            "last_byte": token[:-1] + ("A" if token[-1] != "A" else "B"),
            "prefix": token[:-1],
            "longer": token + "x",
        }[kind]
        reply = request(server, "/v1/credentials/app", given)
        assert reply.status == 401
        assert reply.json() == {"error": "unauthorized"}
        creds = profiles.creds["app"]
        assert creds is not None
        assert creds.secret_access_key.encode() not in reply.body

    def test_comparison_is_constant_time(
        self, server: CredentialsEndpoint, token: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The token check goes through hmac.compare_digest on bytes."""
        calls: list[tuple[object, object]] = []
        real = hmac.compare_digest

        def spy(a: bytes, b: bytes) -> bool:
            calls.append((a, b))
            return real(a, b)

        monkeypatch.setattr(hmac, "compare_digest", spy)
        assert request(server, "/v1/credentials/app", token).status == 200
        assert request(server, "/v1/credentials/app", token[:-1] + "#").status == 401
        assert len(calls) == 2
        assert all(isinstance(a, bytes) and isinstance(b, bytes) for a, b in calls)

    def test_unknown_profile_needs_the_token_too(self, server: CredentialsEndpoint) -> None:
        """Without the token nobody learns which profiles exist: 401 before 404."""
        assert request(server, "/v1/credentials/nope").status == 401
        assert request(server, "/nowhere").status == 401

    def test_folded_header_with_crlf_is_refused(
        self, server: CredentialsEndpoint, token: str
    ) -> None:
        """A token continued on a folded line (CR/LF inside the value) is refused with 400."""
        half = len(token) // 2
        data = (
            f"GET /v1/credentials/app HTTP/1.1\r\nAuthorization: {token[:half]}\r\n"
            f" {token[half:]}\r\n\r\n"
        ).encode()
        reply = Reply(exchange(server, data))
        assert reply.status == 400
        assert b"AccessKeyId" not in reply.body

    def test_bare_cr_in_token_is_refused(self, server: CredentialsEndpoint, token: str) -> None:
        """A bare CR after the token (which http.client would split into two headers) is 400."""
        data = f"GET /v1/credentials/app HTTP/1.1\r\nAuthorization: {token}\rX: y\r\n\r\n"
        reply = Reply(exchange(server, data.encode()))
        assert reply.status == 400
        assert b"AccessKeyId" not in reply.body

    def test_control_characters_are_refused(self, server: CredentialsEndpoint, token: str) -> None:
        """A NUL or other control byte in the header is a 400."""
        assert request(server, "/v1/credentials/app", token + "\x00").status == 400
        assert request(server, "/v1/credentials/app", token[:3] + "\x01" + token[3:]).status == 400

    def test_two_authorization_headers_are_refused(
        self, server: CredentialsEndpoint, token: str
    ) -> None:
        """Two Authorization headers are ambiguous even when one holds the token: 400."""
        reply = request(server, "/v1/credentials/app", token, extra="Authorization: other\r\n")
        assert reply.status == 400

    def test_token_file_change_is_picked_up(
        self, server: CredentialsEndpoint, token: str, token_file: Path, log: RecordingLogger
    ) -> None:
        """A rewritten token file takes effect on the next request: old token 401, new 200."""
        assert request(server, "/v1/credentials/app", token).status == 200
        new = secrets.token_urlsafe(32)
        SECRETS[new] = "the endpoint token"
        replacement = token_file.with_name("token.new")
        replacement.write_text(new)
        replacement.replace(token_file)
        assert request(server, "/v1/credentials/app", token).status == 401
        assert request(server, "/v1/credentials/app", new).status == 200
        assert log.events().count("container_token_loaded") == 2
        assert new not in log.text()

    @pytest.mark.parametrize("state", ["missing", "empty", "blank", "huge", "binary"])
    def test_unusable_token_file_refuses_everyone(
        self,
        server: CredentialsEndpoint,
        token: str,
        token_file: Path,
        log: RecordingLogger,
        state: str,
    ) -> None:
        """A missing, empty, oversized or binary token file refuses every request, logged once."""
        if state == "missing":
            token_file.unlink()
        else:
            content = {
                "empty": b"",
                "blank": b" \n",
                "huge": b"a" * (endpoint_module.MAX_TOKEN_BYTES + 1),
                "binary": b"\x00\xff" + token.encode(),
            }[state]
            token_file.write_bytes(content)
        for _ in range(3):
            assert request(server, "/v1/credentials/app", token).status == 401
            assert request(server, "/v1/credentials/app", "").status == 401
        unusable = [line for line in log.lines if line[1] == "container_token_unusable"]
        assert len(unusable) == 1
        assert unusable[0][0] == "warning"

    def test_trailing_newline_is_tolerated_with_a_warning(
        self, server: CredentialsEndpoint, token: str, token_file: Path, log: RecordingLogger
    ) -> None:
        """`echo token > file` still works here, with a warning that botocore would refuse it."""
        token_file.write_text(token + "\n")
        assert request(server, "/v1/credentials/app", token).status == 200
        assert "container_token_file_newline" in log.events()

    def test_refusals_are_logged_without_secrets_and_rate_limited(
        self, server: CredentialsEndpoint, token: str, log: RecordingLogger
    ) -> None:
        """Wrong tokens log one line per interval with the reason, never the token sent."""
        wrong = secrets.token_urlsafe(32)
        for _ in range(5):
            request(server, "/v1/credentials/app", wrong)
        refused = [fields for _, event, fields in log.lines if event == "container_request_refused"]
        assert refused == [{"suppressed": 0, "reason": "wrong_token", "status": 401}]
        assert wrong not in log.text()
        assert token not in log.text()


class TestProfiles:
    def test_unknown_profile_is_404(self, server: CredentialsEndpoint, token: str) -> None:
        """A valid name the config does not have is 404."""
        reply = request(server, "/v1/credentials/nope", token)
        assert reply.status == 404
        assert reply.json() == {"error": "unknown profile"}

    @pytest.mark.parametrize(
        "case",
        [(None, "missing"), (fake_credentials(timedelta(seconds=-1)), "expired")],
        ids=["missing", "expired"],
    )
    def test_no_valid_credentials_is_503(
        self,
        server: CredentialsEndpoint,
        token: str,
        profiles: Profiles,
        log: RecordingLogger,
        case: tuple[Credentials | None, str],
    ) -> None:
        """A known profile without unexpired credentials is 503 with the reason, logged once."""
        profiles.creds["app"], reason = case
        for _ in range(3):
            reply = request(server, "/v1/credentials/app", token)
            assert reply.status == 503
            assert reply.json() == {"error": "no valid credentials", "reason": reason}
        assert log.events().count("container_credentials_unavailable") == 1

    def test_expiry_is_checked_against_the_clock(
        self, server: CredentialsEndpoint, token: str, profiles: Profiles
    ) -> None:
        """Credentials stop being served the moment the injected clock passes their expiry."""
        assert request(server, "/v1/credentials/app", token).status == 200
        profiles.now = NOW + timedelta(hours=1)
        assert request(server, "/v1/credentials/app", token).status == 503

    def test_names_with_query_and_escapes(
        self, server: CredentialsEndpoint, token: str, profiles: Profiles
    ) -> None:
        """A query string is ignored; percent-escapes of allowed characters decode."""
        profiles.creds["team/db-ro@x"] = fake_credentials()
        assert request(server, "/v1/credentials/app?x=1", token).status == 200
        assert request(server, "/v1/credentials/ap%70", token).status == 200
        assert request(server, "/v1/credentials/team/db-ro%40x", token).status == 200
        assert request(server, "/v1/credentials/team%2Fdb-ro@x", token).status == 200

    @pytest.mark.parametrize(
        ("path", "status"),
        [
            ("/v1/credentials/../x", 400),
            ("/v1/credentials/..", 400),
            ("/v1/credentials/%2e%2e", 400),
            ("/v1/credentials/%2E%2E%2Fetc%2Fpasswd", 400),
            ("/v1/credentials/..%2f..%2fetc%2fpasswd", 400),
            ("/v1/credentials/./app", 400),
            ("/v1/credentials/app/", 400),
            ("/v1/credentials/", 400),
            ("/v1/credentials/%00", 400),
            ("/v1/credentials/app%00", 400),
            ("/v1/credentials/app%0d%0aX:%20y", 400),
            ("/v1/credentials/%C3%A9", 400),
            ("/v1/credentials/%ff", 400),
            ("/v1/credentials/%zz", 400),
            ("/v1/credentials/a%20b", 400),
            ("/v1/credentials/" + "a" * 129, 400),
            ("/v1/../v1/credentials/app", 404),
            ("/v1/credentials", 404),
            ("/etc/passwd", 404),
            ("/", 404),
            ("http://127.0.0.1/v1/credentials/app", 404),
        ],
    )
    def test_odd_paths_never_reach_a_lookup(
        self, server: CredentialsEndpoint, token: str, profiles: Profiles, path: str, status: int
    ) -> None:
        """Traversal, NUL, CR/LF, non-ASCII and malformed escapes are 400/404 before any lookup."""
        reply = request(server, path, token)
        assert reply.status == status
        assert profiles.asked == []
        assert b"AccessKeyId" not in reply.body

    def test_raw_non_ascii_bytes_in_path(
        self, server: CredentialsEndpoint, token: str, profiles: Profiles
    ) -> None:
        """Raw UTF-8 bytes in the request line are not a profile name: 400."""
        data = b"GET /v1/credentials/\xc3\xa9 HTTP/1.1\r\nAuthorization: " + token.encode()
        reply = Reply(exchange(server, data + b"\r\n\r\n"))
        assert reply.status == 400
        assert profiles.asked == []

    @pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "FOO"])
    def test_other_methods_are_405(
        self, server: CredentialsEndpoint, token: str, method: str
    ) -> None:
        """Anything but GET is 405 with Allow: GET, even with the right token."""
        reply = request(server, "/v1/credentials/app", token, method=method)
        assert reply.status == 405
        assert reply.headers["allow"] == "GET"
        assert b"AccessKeyId" not in reply.body

    def test_failing_lookup_is_a_500_not_a_traceback(
        self,
        server: CredentialsEndpoint,
        token: str,
        profiles: Profiles,
        log: RecordingLogger,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A crashing lookup answers 500, logs its type, and writes nothing to stderr."""

        def broken(name: str) -> Credentials | None:
            raise RuntimeError("boom")

        server.current = broken
        assert request(server, "/v1/credentials/app", token).status == 500
        assert ("warning", "container_handler_failed", {"error": "RuntimeError"}) in log.lines
        assert capsys.readouterr().err == ""


def send_in_background(
    server: CredentialsEndpoint, data: bytes
) -> tuple[socket.socket, threading.Thread]:
    """Send `data` from a thread (ignoring the reset a refusing server causes)."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)

    def push() -> None:
        with contextlib.suppress(OSError):
            sock.sendall(data)

    thread = threading.Thread(target=push, daemon=True)
    thread.start()
    return sock, thread


def read_reply(sock: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


class TestHardening:
    def test_one_megabyte_token_is_refused_early(
        self, server: CredentialsEndpoint, token: str
    ) -> None:
        """A 1 MB Authorization header is cut off at the head budget with 431 (or a reset)."""
        start = time.perf_counter()
        data = b"GET /v1/credentials/app HTTP/1.1\r\nAuthorization: " + b"a" * (1 << 20)
        sock, thread = send_in_background(server, data + b"\r\n\r\n")
        with sock:
            reply = read_reply(sock)
        thread.join(5)
        assert reply == b"" or reply.startswith(b"HTTP/1.0 431 ")
        assert time.perf_counter() - start < 3
        assert request(server, "/v1/credentials/app", token).status == 200

    def test_unfinished_oversized_head_is_answered_at_once(
        self, server: CredentialsEndpoint
    ) -> None:
        """A head over budget that never ends is refused at the budget, not after the timeout:
        the server stops reading instead of waiting for the rest."""
        server.request_timeout = 3.0
        start = time.perf_counter()
        data = b"GET /v1/credentials/app HTTP/1.1\r\nX: " + b"a" * (MAX_HEAD_BYTES + 1000)
        sock, thread = send_in_background(server, data)
        with sock:
            first = sock.recv(12)
        thread.join(5)
        assert first == b"HTTP/1.0 431"
        assert time.perf_counter() - start < 2

    def test_many_small_headers_are_431(self, server: CredentialsEndpoint, token: str) -> None:
        """More than 100 headers is refused like an oversized head."""
        extra = "".join(f"X-{i}: y\r\n" for i in range(150))
        assert request(server, "/v1/credentials/app", token, extra=extra).status == 431

    def test_long_request_line_is_414(self, server: CredentialsEndpoint, token: str) -> None:
        """A request line over 8 KiB is 414 before any header is read."""
        path = "/v1/credentials/" + "a" * 9000
        assert request(server, path, token).status == 414

    @pytest.mark.parametrize(
        "data",
        [
            b"GET /v1/credentials/app\r\n\r\n",
            b"GARBAGE\r\n\r\n",
            b"GET /v1/credentials/app HTTP/9.9\r\n\r\n",
            b"GET /v1/credentials/app HTTP/x\r\n\r\n",
        ],
    )
    def test_malformed_request_lines(self, server: CredentialsEndpoint, data: bytes) -> None:
        """HTTP/0.9, junk and bad versions get an HTTP/1.0 error in JSON, never credentials."""
        reply = Reply(exchange(server, data))
        assert reply.status in (400, 505)
        assert reply.headers["content-type"] == "application/json"
        assert b"AccessKeyId" not in reply.body

    def test_silent_client_blocks_nobody(self, server: CredentialsEndpoint, token: str) -> None:
        """A client that connects and never finishes its request is served by nobody and holds
        up nobody: others are answered meanwhile, and it is cut off after the timeout."""
        server.request_timeout = 2.0
        silent = socket.create_connection(("127.0.0.1", server.port))
        silent.sendall(b"GET /v1/credentials/app HTTP/1.1\r\n")
        try:
            start = time.perf_counter()
            assert request(server, "/v1/credentials/app", token).status == 200
            assert time.perf_counter() - start < 1.0
            silent.settimeout(5)
            assert silent.recv(1024) == b""
        finally:
            silent.close()

    def test_trickling_client_is_cut_off_at_the_deadline(
        self, server: CredentialsEndpoint, token: str
    ) -> None:
        """A client sending one byte every 50 ms never resets the clock: one deadline per head."""
        server.request_timeout = 1.0
        sock = socket.create_connection(("127.0.0.1", server.port))
        stop = threading.Event()

        def trickle() -> None:
            try:
                sock.sendall(b"GET /v1/credentials/app HTTP/1.1\r\n")
                while not stop.wait(0.05):
                    sock.sendall(b"X")
            except OSError:
                pass

        thread = threading.Thread(target=trickle, daemon=True)
        start = time.perf_counter()
        thread.start()
        try:
            assert request(server, "/v1/credentials/app", token).status == 200
            sock.settimeout(3)
            data = read_reply(sock)
            elapsed = time.perf_counter() - start
        finally:
            stop.set()
            thread.join(2)
            sock.close()
        assert b"AccessKeyId" not in data
        assert 0.9 < elapsed < 4  # cut at the 1 s deadline, not when the client stops

    def test_no_output_on_stderr(
        self, server: CredentialsEndpoint, token: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Good and bad requests alike leave stdout and stderr silent (no access log)."""
        request(server, "/v1/credentials/app", token)
        request(server, "/v1/credentials/app")
        exchange(server, b"GARBAGE\r\n\r\n")
        captured = capsys.readouterr()
        assert captured.err == ""
        assert captured.out == ""

    def test_stop_releases_the_port(
        self, token_file: Path, profiles: Profiles, log: RecordingLogger
    ) -> None:
        """After stop() the port accepts no connection; stop() twice is harmless."""
        endpoint = make_endpoint(token_file, profiles, log)
        endpoint.start()
        port = endpoint.port
        endpoint.stop()
        endpoint.stop()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
