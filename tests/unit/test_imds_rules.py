"""The IMDSv2 endpoint's pure parts: /proc/net parsing, token TTLs, routes, answers, config."""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import socket
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import SECRETS
from credfresh.config.validate import load_config
from credfresh.credentials import Credentials
from credfresh.errors import ConfigError
from credfresh.outputs import peer
from credfresh.outputs.imds import (
    MAX_TOKEN_TTL,
    TOKEN_HEADER,
    TTL_HEADER,
    ImdsEndpoint,
    Request,
    Tokens,
    credentials_document,
    parse_listen,
    route,
    set_hop_limit,
    token_ttl,
)
from support.recording import RecordingLogger

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ROLE = "arn:aws:sts::123456789012:assumed-role/app/credfresh-app"
CREDS = "/latest/meta-data/iam/security-credentials/"

# A little-endian /proc/net/tcp: the server 127.0.0.1:8080 (listening and accepted), a
# client 127.0.0.1:40000 of uid 1000 and another of uid 1001 on 127.0.0.2:40000, and a
# TIME_WAIT row (inode 0, uid 0) for a port reused since.
TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1 0
   1: 0100007F:1F90 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 2222 1 0
   2: 0100007F:9C40 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 3333 1 0
   3: 0200007F:9C40 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1001        0 4444 1 0
   4: 0100007F:9C41 0100007F:1F90 06 00000000:00000000 03:00000000 00000000     0        0 0 3 0
"""
# /proc/net/tcp6: a ::1 client of uid 1002 to [::1]:8080, and an IPv6 socket of uid 1003
# talking to 127.0.0.1:8080 as ::ffff:127.0.0.1.
TCP6 = (
    "  sl  local_address                         remote_address                        st\n"
    "   0: 00000000000000000000000001000000:9C42 00000000000000000000000001000000:1F90 01 "
    "00000000:00000000 00:00000000 00000000  1002        0 5555 1 0\n"
    "   1: 0000000000000000FFFF00000100007F:9C43 0000000000000000FFFF00000100007F:1F90 01 "
    "00000000:00000000 00:00000000 00000000  1003        0 6666 1 0\n"
)
LOCAL = peer.endpoint("127.0.0.1", 8080)


class TestPeer:
    def test_ipv4_row_of_the_client(self) -> None:
        """The client's row is the one with its address local and ours remote."""
        lines = TCP.splitlines()
        assert peer.owner_uid(lines, peer.endpoint("127.0.0.1", 40000), LOCAL, "little") == 1000
        assert peer.owner_uid(lines, peer.endpoint("127.0.0.2", 40000), LOCAL, "little") == 1001

    def test_the_server_side_row_is_not_the_peer(self) -> None:
        """Our own accepted socket (local = us) never answers for the peer."""
        lines = TCP.splitlines()
        assert peer.owner_uid(lines, LOCAL, peer.endpoint("127.0.0.1", 40000), "little") == 0
        assert peer.owner_uid(lines, peer.endpoint("127.0.0.1", 40000), LOCAL, "little") != 0

    def test_time_wait_rows_never_match(self) -> None:
        """A row with inode 0 (TIME_WAIT, orphaned) shows uid 0 but belongs to nobody."""
        lines = TCP.splitlines()
        assert peer.owner_uid(lines, peer.endpoint("127.0.0.1", 40001), LOCAL, "little") is None

    def test_no_row_no_uid(self) -> None:
        lines = TCP.splitlines()
        assert peer.owner_uid(lines, peer.endpoint("127.0.0.1", 1), LOCAL, "little") is None
        other_server = peer.endpoint("127.0.0.1", 8081)
        assert peer.owner_uid(lines, peer.endpoint("127.0.0.1", 40000), other_server) is None

    def test_ipv6_and_ipv4_mapped(self) -> None:
        """tcp6 rows: ::1, and an IPv6 socket on IPv4 compares as the IPv4 address."""
        lines = TCP6.splitlines()
        v6 = peer.endpoint("::1", 8080)
        assert peer.owner_uid(lines, peer.endpoint("::1", 40002), v6, "little") == 1002
        assert peer.owner_uid(lines, peer.endpoint("127.0.0.1", 40003), LOCAL, "little") == 1003
        mapped = peer.endpoint("::ffff:127.0.0.1", 40003)
        assert mapped == peer.endpoint("127.0.0.1", 40003)

    @pytest.mark.parametrize(
        ("text", "order", "expected"),
        [
            ("0100007F:1F90", "little", ("127.0.0.1", 8080)),
            ("7F000001:1F90", "big", ("127.0.0.1", 8080)),
            ("FEA9FEA9:0050", "little", ("169.254.169.254", 80)),
            ("00000000000000000000000001000000:0050", "little", ("::1", 80)),
            ("00000000000000000000000000000001:0050", "big", ("::1", 80)),
            ("0000000000000000FFFF00000100007F:0050", "little", ("127.0.0.1", 80)),
        ],
    )
    def test_parse_endpoint(self, text: str, order: Any, expected: tuple[str, int]) -> None:
        assert peer.parse_endpoint(text, order) == (ipaddress.ip_address(expected[0]), expected[1])

    @pytest.mark.parametrize("text", ["", "0100007F", "0100007F:", "01007F:0050", "zz00007F:0050"])
    def test_parse_endpoint_refuses_odd_text(self, text: str) -> None:
        with pytest.raises(ValueError, match=r"."):
            peer.parse_endpoint(text, "little")

    def test_odd_lines_are_skipped(self) -> None:
        lines = ["", "garbage", "   9: zz:zz yy:yy 01 a b c 1000 0 1 1", *TCP.splitlines()]
        assert peer.owner_uid(lines, peer.endpoint("127.0.0.1", 40000), LOCAL, "little") == 1000

    def test_read_owner_looks_in_both_tables(self, tmp_path: Path) -> None:
        if sys.byteorder != "little":
            pytest.skip("little-endian samples")
        (tmp_path / "tcp").write_text(TCP)
        (tmp_path / "tcp6").write_text(TCP6)
        assert peer.read_owner(peer.endpoint("::1", 40002), peer.endpoint("::1", 8080), tmp_path)
        assert peer.read_owner(peer.endpoint("127.0.0.1", 40000), LOCAL, tmp_path) == 1000
        assert peer.read_owner(peer.endpoint("127.0.0.1", 40003), LOCAL, tmp_path) == 1003
        assert peer.read_owner(peer.endpoint("127.0.0.1", 1), LOCAL, tmp_path) is None
        assert peer.read_owner(peer.endpoint("127.0.0.1", 40000), LOCAL, tmp_path / "no") is None

    @pytest.mark.parametrize(
        ("family", "host"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]
    )
    def test_a_real_connection(self, family: socket.AddressFamily, host: str) -> None:
        """The kernel's own table names this process's uid for a connection it made."""
        with socket.socket(family) as server, socket.socket(family) as client:
            server.bind((host, 0))
            server.listen()
            client.connect(server.getsockname()[:2])
            accepted, address = server.accept()
            with accepted:
                ours = accepted.getsockname()
                found = peer.read_owner(peer.endpoint(*address[:2]), peer.endpoint(*ours[:2]))
        assert found == os.geteuid()


class TestRules:
    @pytest.mark.parametrize(
        ("values", "expected"),
        [
            (["21600"], 21600),
            (["1"], 1),
            ([" 60 "], 60),
            (["0"], None),
            (["21601"], None),
            (["-5"], None),
            (["+5"], None),
            (["1e3"], None),
            (["\u0663"], None),  # an Arabic-Indic digit: isdigit, not ASCII
            ([""], None),
            (["60", "60"], None),
            ([], None),
            (["000000060"], None),
        ],
    )
    def test_token_ttl(self, values: list[str], expected: int | None) -> None:
        assert token_ttl(values) == expected

    @pytest.mark.parametrize(
        ("path", "expected"),
        [
            ("/latest/api/token", ("token", "")),
            (CREDS, ("list", "")),
            (CREDS.rstrip("/"), ("list", "")),
            (CREDS + "app", ("credentials", "app")),
            (CREDS + "app?x=1", ("credentials", "app")),
            (CREDS + "app/", ("unknown", "")),
            (CREDS + "a/b", ("unknown", "")),
            ("/latest/meta-data/", ("unknown", "")),
            ("/latest/api/token/", ("unknown", "")),
            ("/", ("unknown", "")),
        ],
    )
    def test_route(self, path: str, expected: tuple[str, str]) -> None:
        assert route(path) == expected

    def test_listen(self) -> None:
        assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
        assert parse_listen("[::1]:9912") == ("::1", 9912)
        assert parse_listen("169.254.169.254:80") == ("169.254.169.254", 80)
        with pytest.raises(ValueError, match="imds listen"):
            parse_listen("0.0.0.0:80")

    def test_tokens_expire(self) -> None:
        tokens = Tokens()
        token = tokens.issue(10, now=100.0)
        assert tokens.valid(token, 109.9)
        assert not tokens.valid(token, 110.0)
        assert not tokens.valid(token + "x", 100.0)

    def test_tokens_are_bounded_oldest_first(self) -> None:
        tokens = Tokens(limit=3)
        first, *rest = [tokens.issue(MAX_TOKEN_TTL, now=float(i)) for i in range(4)]
        assert len(tokens) == 3
        assert not tokens.valid(first, 5.0)
        assert all(tokens.valid(token, 5.0) for token in rest)

    def test_expired_tokens_are_purged_first(self) -> None:
        tokens = Tokens(limit=2)
        short = tokens.issue(1, now=0.0)
        long = tokens.issue(100, now=0.0)
        newest = tokens.issue(100, now=50.0)
        assert not tokens.valid(short, 50.0)
        assert tokens.valid(long, 50.0)
        assert tokens.valid(newest, 50.0)

    def test_tokens_are_random(self) -> None:
        tokens = Tokens()
        issued = {tokens.issue(60, now=0.0) for _ in range(50)}
        assert len(issued) == 50
        assert all(len(token) >= 40 for token in issued)

    def test_credentials_document(self) -> None:
        creds = fake_credentials()
        body = credentials_document(creds)
        assert body == {
            "Code": "Success",
            "LastUpdated": "2026-03-01T12:00:00Z",
            "Type": "AWS-HMAC",
            "AccessKeyId": creds.access_key_id,
            "SecretAccessKey": creds.secret_access_key,
            "Token": creds.session_token,
            "Expiration": "2026-03-01T13:00:00Z",
            "AccountId": "123456789012",
        }
        no_account = credentials_document(fake_credentials(arn=""))
        assert "AccountId" not in no_account

    @pytest.mark.parametrize(
        ("family", "host", "level", "option"),
        [
            (socket.AF_INET, "127.0.0.1", socket.IPPROTO_IP, socket.IP_TTL),
            (socket.AF_INET6, "::1", socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS),
        ],
    )
    def test_hop_limit(
        self, family: socket.AddressFamily, host: str, level: int, option: int
    ) -> None:
        with socket.socket(family) as sock:
            set_hop_limit(sock, 3)
            assert sock.getsockopt(level, option) == 3


def fake_credentials(expires_in: timedelta = timedelta(hours=1), arn: str = ROLE) -> Credentials:
    creds = Credentials(
        access_key_id="ASIA" + secrets.token_hex(8).upper(),
        secret_access_key=secrets.token_urlsafe(30),
        session_token=secrets.token_urlsafe(120),
        expiration=NOW + expires_in,
        issued=NOW,
        principal_arn=arn,
    )
    SECRETS[creds.secret_access_key] = "a fake secret access key"
    SECRETS[creds.session_token] = "a fake session token"
    return creds


class Clock:
    def __init__(self) -> None:
        self.wall = NOW
        self.mono = 1000.0

    def now(self) -> datetime:
        return self.wall

    def monotonic(self) -> float:
        return self.mono


class Setup:
    """An endpoint decided in-process: a fake clock, a recorder, a settable current."""

    def __init__(self, *, allow_v1: bool = False) -> None:
        self.clock = Clock()
        self.log = RecordingLogger()
        self.creds: Credentials | None = fake_credentials()
        self.endpoint = ImdsEndpoint(
            "127.0.0.1:0",
            "app",
            current=lambda name: self.creds if name == "app" else None,
            allow_uids={1000},
            allow_v1=allow_v1,
            log=self.log,
            clock=self.clock,
        )

    def ask(self, method: str, path: str, uid: int | None = 1000, **kw: Any) -> Any:
        return self.endpoint.answer(Request(method, path, **kw), uid)

    def token(self, ttl: str = "60") -> str:
        answer = self.ask("PUT", "/latest/api/token", ttl=(ttl,))
        assert answer.status == 200
        assert answer.hop_limited
        assert answer.headers == {TTL_HEADER: ttl}
        return str(answer.body)


@pytest.fixture
def setup() -> Setup:
    return Setup()


class TestAnswers:
    def test_the_v2_conversation(self, setup: Setup) -> None:
        token = setup.token()
        listed = setup.ask("GET", CREDS, tokens=(token,))
        assert (listed.status, listed.body) == (200, "app")
        got = setup.ask("GET", CREDS + "app", tokens=(token,))
        assert got.status == 200
        assert json.loads(got.body) == credentials_document(setup.creds)  # type: ignore[arg-type]
        assert not got.hop_limited
        assert setup.log.pairs() == []

    def test_other_uids_are_refused_first_and_logged_with_the_uid_only(self, setup: Setup) -> None:
        token = setup.token()
        for uid in (1001, None):
            answer = setup.ask("GET", CREDS + "app", uid=uid, tokens=(token,))
            assert answer.status == 403
            assert "AccessKeyId" not in answer.body
        refused = setup.endpoint.answer(Request("PUT", "/latest/api/token", ttl=("60",)), 1001)
        assert refused.status == 403
        assert not refused.hop_limited
        lines = setup.log.named("imds_refused")
        assert lines == [{"uid": 1001, "suppressed": 0}, {"uid": None, "suppressed": 0}]

    def test_the_overflow_uid_is_never_allowed(self) -> None:
        """65534 is also what /proc shows for any user unmapped in our user namespace."""
        setup = Setup()
        setup.endpoint.allow_uids = frozenset({65534})
        assert setup.ask("GET", CREDS, uid=65534).status == 403
        assert setup.log.named("imds_refused") == [{"uid": 65534, "suppressed": 0}]

    def test_refusals_of_a_uid_are_rate_limited(self, setup: Setup) -> None:
        for _ in range(5):
            setup.ask("GET", "/anything", uid=7)
        assert len(setup.log.named("imds_refused")) == 1
        setup.clock.mono += 61
        setup.ask("GET", "/anything", uid=7)
        assert setup.log.named("imds_refused")[-1] == {"uid": 7, "suppressed": 4}

    def test_v1_is_refused_unless_allowed(self, setup: Setup) -> None:
        assert setup.ask("GET", CREDS).status == 401
        assert setup.ask("GET", CREDS + "app").status == 401
        assert setup.log.named("imds_request_refused")[0]["reason"] == "missing_token"
        open_v1 = Setup(allow_v1=True)
        assert open_v1.ask("GET", CREDS + "app").status == 200

    def test_a_wrong_token_is_401_even_with_v1_allowed(self) -> None:
        open_v1 = Setup(allow_v1=True)
        assert open_v1.ask("GET", CREDS + "app", tokens=("forged",)).status == 401

    def test_two_token_headers_are_400(self, setup: Setup) -> None:
        token = setup.token()
        assert setup.ask("GET", CREDS, tokens=(token, token)).status == 400

    def test_tokens_expire_by_the_monotonic_clock(self, setup: Setup) -> None:
        token = setup.token("5")
        setup.clock.mono += 5
        assert setup.ask("GET", CREDS, tokens=(token,)).status == 401

    @pytest.mark.parametrize("ttl", [(), ("0",), ("21601",), ("soon",), ("60", "60")])
    def test_bad_ttl_is_400(self, setup: Setup, ttl: tuple[str, ...]) -> None:
        answer = setup.ask("PUT", "/latest/api/token", ttl=ttl)
        assert answer.status == 400
        assert not answer.hop_limited

    def test_forwarded_requests_are_403(self, setup: Setup) -> None:
        put = setup.ask("PUT", "/latest/api/token", ttl=("60",), forwarded=True)
        assert put.status == 403
        token = setup.token()
        assert setup.ask("GET", CREDS + "app", tokens=(token,), forwarded=True).status == 403
        assert setup.log.named("imds_request_refused")[0]["reason"] == "forwarded"

    def test_unknown_paths_and_roles_are_404(self, setup: Setup) -> None:
        token = setup.token()
        for path in ("/", "/latest/meta-data/", "/latest/meta-data/iam/info", CREDS + "other"):
            assert setup.ask("GET", path, tokens=(token,)).status == 404
        assert setup.log.pairs() == []  # SDKs probe other paths: not worth a line

    def test_methods(self, setup: Setup) -> None:
        token = setup.token()
        get_token = setup.ask("GET", "/latest/api/token")
        assert (get_token.status, get_token.headers) == (405, {"Allow": "PUT"})
        assert setup.ask("POST", CREDS, tokens=(token,)).status == 405

    def test_no_credentials_yet_or_expired_is_404(self, setup: Setup) -> None:
        token = setup.token()
        setup.creds = None
        assert setup.ask("GET", CREDS + "app", tokens=(token,)).status == 404
        setup.creds = fake_credentials(expires_in=timedelta(0))
        assert setup.ask("GET", CREDS + "app", tokens=(token,)).status == 404
        reasons = [line["reason"] for line in setup.log.named("imds_credentials_unavailable")]
        assert reasons == ["missing", "expired"]
        assert setup.ask("GET", CREDS, tokens=(token,)).status == 200  # the role is still listed

    def test_a_failing_lookup_is_500_without_detail(self, setup: Setup) -> None:
        def broken(name: str) -> Credentials | None:
            raise RuntimeError("secret detail")

        setup.endpoint.current = broken
        token = setup.token()
        answer = setup.ask("GET", CREDS + "app", tokens=(token,))
        assert answer.status == 500
        assert "secret" not in answer.body
        assert setup.log.named("imds_handler_failed") == [{"error": "RuntimeError"}]

    def test_peer_uid_failures_are_unknown(self, setup: Setup) -> None:
        def failing(peer_end: peer.Endpoint, ours: peer.Endpoint) -> int | None:
            raise OSError("no /proc")

        setup.endpoint.owner = failing
        assert setup.endpoint.peer_uid(("127.0.0.1", 1), ("127.0.0.1", 2)) is None

    def test_header_names(self) -> None:
        assert TOKEN_HEADER.lower() == "x-aws-ec2-metadata-token"
        assert TTL_HEADER.lower() == "x-aws-ec2-metadata-token-ttl-seconds"


ARN = "arn:aws:iam::123456789012:role/app"


def load(tmp_path: Path, imds: dict[str, Any]) -> Any:
    path = tmp_path / "config.yaml"
    document = {"profiles": {"app": {"role_arn": ARN}}, "imds": imds}
    path.write_text(yaml.safe_dump(document))
    return load_config(path, {}, Path("/home/tester"))


def problems(tmp_path: Path, imds: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, imds)
    return info.value.problems


class TestConfig:
    def test_defaults(self, tmp_path: Path) -> None:
        settings = load(tmp_path, {"listen": "127.0.0.1:9912", "profile": "app"}).imds
        assert (settings.allow_v1, settings.hop_limit, settings.allow_uids) == (False, 1, None)

    def test_every_key(self, tmp_path: Path) -> None:
        imds = {
            "listen": "[::1]:9912",
            "profile": "app",
            "allow_v1": True,
            "hop_limit": 2,
            "allow_uids": [0, 1000],
        }
        settings = load(tmp_path, imds).imds
        assert settings.allow_uids == (0, 1000)
        assert (settings.listen, settings.allow_v1, settings.hop_limit) == ("[::1]:9912", True, 2)

    def test_off_without_the_section(self, tmp_path: Path) -> None:
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump({"profiles": {"app": {"role_arn": ARN}}}))
        assert load_config(path, {}, Path("/home/tester")).imds.listen is None

    @pytest.mark.parametrize(
        ("imds", "key", "fragment"),
        [
            ({"listen": "0.0.0.0:80", "profile": "app"}, "imds.listen", "127.0.0.1:PORT"),
            ({"listen": "169.254.169.254:8080", "profile": "app"}, "imds.listen", "port 80"),
            ({"listen": "localhost:80", "profile": "app"}, "imds.listen", "127.0.0.1"),
            ({"listen": "127.0.0.1:9912"}, "imds.profile", "required when listen is set"),
            ({"listen": "127.0.0.1:9912", "profile": "nope"}, "imds.profile", "under profiles"),
            ({"hop_limit": 0}, "imds.hop_limit", "at least 1"),
            ({"hop_limit": 65}, "imds.hop_limit", "at most 64"),
            ({"allow_uids": []}, "imds.allow_uids", "at least 1"),
            ({"allow_uids": [-1]}, "imds.allow_uids.0", "at least 0"),
            ({"allow_uids": "1000"}, "imds.allow_uids", "expected a list"),
            ({"allow_uids": [1000, 65534]}, "imds.allow_uids", "other than 65534"),
            ({"allow_v1": "maybe"}, "imds.allow_v1", "true or false"),
            ({"port": 80}, "imds.port", "unknown key"),
        ],
    )
    def test_problems(self, tmp_path: Path, imds: dict[str, Any], key: str, fragment: str) -> None:
        found = problems(tmp_path, imds)
        assert any(p.startswith(f"{key}: ") and fragment in p for p in found), found

    def test_problems_never_quote_the_value(self, tmp_path: Path) -> None:
        found = problems(tmp_path, {"listen": "127.0.0.1:9912", "profile": "secret-ish-name"})
        assert not any("secret-ish-name" in p for p in found)


class TestServed:
    """The endpoint on real loopback sockets, the peer found in this host's /proc."""

    @pytest.mark.parametrize("listen", ["127.0.0.1:0", "[::1]:0"])
    def test_botocore_fetcher_and_the_peer_rule(self, listen: str) -> None:
        from botocore.utils import InstanceMetadataFetcher

        creds = fake_credentials(expires_in=timedelta(days=3650))
        allowed = {os.geteuid()}
        endpoint = ImdsEndpoint(
            listen,
            "app",
            current=lambda name: creds,
            allow_uids=allowed,
            log=RecordingLogger(),
            poll_interval=0.05,
        )
        endpoint.start()
        try:
            fetcher = InstanceMetadataFetcher(
                timeout=5, config={"ec2_metadata_service_endpoint": endpoint.url}, env={}
            )
            found = fetcher.retrieve_iam_role_credentials()
            assert found["access_key"] == creds.access_key_id
            assert found["role_name"] == "app"
            allowed.clear()  # the set is copied: still allowed
            assert fetcher.retrieve_iam_role_credentials()["role_name"] == "app"
            endpoint.allow_uids = frozenset({os.geteuid() + 1})
            assert fetcher.retrieve_iam_role_credentials() == {}
            assert endpoint.log.named("imds_refused") == [  # type: ignore[attr-defined]
                {"uid": os.geteuid(), "suppressed": 0}
            ]
        finally:
            endpoint.stop()

    def test_http_layer_errors_and_a_put_body(self) -> None:
        endpoint = ImdsEndpoint(
            "127.0.0.1:0",
            "app",
            current=lambda name: None,
            allow_uids={os.geteuid()},
            log=RecordingLogger(),
            poll_interval=0.05,
        )
        endpoint.start()
        try:
            for data, status in [
                (b"GARBAGE\r\n\r\n", b"400"),
                (
                    b"PUT /latest/api/token HTTP/1.1\r\nHost: x\r\n"
                    b"X-aws-ec2-metadata-token-ttl-seconds: 30\r\nContent-Length: 5\r\n\r\nhello",
                    b"200",
                ),
            ]:
                with socket.create_connection(("127.0.0.1", endpoint.port), timeout=5) as sock:
                    sock.sendall(data)
                    reply = b""
                    while chunk := sock.recv(4096):
                        reply += chunk
                assert reply.split(b" ", 2)[1] == status, reply[:100]
                assert b"text/plain" in reply
                assert b"GARBAGE" not in reply
        finally:
            endpoint.stop()
