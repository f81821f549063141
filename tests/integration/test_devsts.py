"""The development STS: moto and the stub behind the fault-injecting proxy, over real HTTP."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
)
from botocore.parsers import ResponseParserError

from credfresh.devsts import STS_ERRORS, ControlError, DevSTS, RemoteDevSTS, Walkthrough
from credfresh.devsts.records import Recorder, RequestRecord
from credfresh.devsts.wire import find_credentials, parse_expiration, rewrite_expiration
from support import DAEMON_DIR

FAKE_KEY = "AKIAIOSFODNN7EXAMPLE"
FAKE_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
ROLE = "arn:aws:iam::123456789012:role/bench"
NO_RETRIES = Config(retries={"total_max_attempts": 1})

# -- fixtures: one moto and one stub DevSTS per module, reset before each test ------------


@pytest.fixture(scope="module")
def boto_session() -> boto3.session.Session:
    """One Session: each new one reloads the service models (~0.1 s and MBs each)."""
    return boto3.session.Session()


@pytest.fixture(scope="module")
def moto_module() -> Iterator[DevSTS]:
    with DevSTS("moto", seed=7) as sts:
        sts.setup_walkthrough()
        yield sts


@pytest.fixture
def moto_sts(moto_module: DevSTS) -> Iterator[DevSTS]:
    moto_module.reset()
    yield moto_module
    moto_module.disable_auth()
    moto_module.reset()


@pytest.fixture(scope="module")
def stub_module() -> Iterator[DevSTS]:
    with DevSTS("stub", seed=7) as sts:
        yield sts


@pytest.fixture
def stub_sts(stub_module: DevSTS) -> Iterator[DevSTS]:
    stub_module.reset()
    yield stub_module
    stub_module.reset()


def walkthrough_of(sts: DevSTS) -> Walkthrough:
    assert sts.walkthrough is not None
    return sts.walkthrough


def role_name(arn: str) -> str:
    return arn.rsplit("/", 1)[1]


def client(
    session: boto3.session.Session,
    url: str,
    key: str = FAKE_KEY,
    secret: str = FAKE_SECRET,
    token: str | None = None,
    *,
    service: str = "sts",
    config: Config = NO_RETRIES,
) -> Any:
    # The stubs type only the services installed with them (sts); iam here is used untyped.
    factory: Any = session.client
    return factory(
        service,
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        aws_session_token=token,
        config=config,
    )


def user_client(session: boto3.session.Session, sts: DevSTS, service: str = "sts") -> Any:
    walk = walkthrough_of(sts)
    return client(session, sts.url, walk.access_key_id, walk.secret_access_key, service=service)


def session_client(
    session: boto3.session.Session, url: str, creds: dict[str, Any], service: str = "sts"
) -> Any:
    return client(
        session,
        url,
        creds["AccessKeyId"],
        creds["SecretAccessKey"],
        creds["SessionToken"],
        service=service,
    )


def anonymous_client(session: boto3.session.Session, url: str) -> Any:
    config = Config(signature_version=UNSIGNED, retries={"total_max_attempts": 1})
    return session.client("sts", endpoint_url=url, region_name="us-east-1", config=config)


def error_of(excinfo: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    response = excinfo.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def raw_post(url: str, body: str, headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        all_headers = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
        connection.request("POST", "/", body=body, headers=all_headers)
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def raw_get(url: str, target: str) -> tuple[int, Any, bytes]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("GET", target)
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


# -- moto: the walkthrough end to end ----------------------------------------------------


class TestWalkthrough:
    def test_assume_role_then_caller_identity_is_the_assumed_role(
        self, moto_sts: DevSTS, boto_session: boto3.session.Session
    ) -> None:
        """The user's key assumes the role; the issued keys identify as the assumed role."""
        walk = walkthrough_of(moto_sts)
        sts = user_client(boto_session, moto_sts)
        assert sts.get_caller_identity()["Arn"] == walk.user_arn
        creds = sts.assume_role(RoleArn=walk.role_arn, RoleSessionName="walk")["Credentials"]
        identity = session_client(boto_session, moto_sts.url, creds).get_caller_identity()
        expected = f"arn:aws:sts::{walk.account_id}:assumed-role/{role_name(walk.role_arn)}/walk"
        assert identity["Arn"] == expected

    def test_chained_and_web_identity_roles(
        self, moto_sts: DevSTS, boto_session: boto3.session.Session
    ) -> None:
        """Role chaining goes through the first role; web identity needs no signature."""
        walk = walkthrough_of(moto_sts)
        first = user_client(boto_session, moto_sts).assume_role(
            RoleArn=walk.role_arn, RoleSessionName=walk.chain_session_name
        )["Credentials"]
        chained = session_client(boto_session, moto_sts.url, first).assume_role(
            RoleArn=walk.chained_role_arn, RoleSessionName="second-hop"
        )["Credentials"]
        arn = session_client(boto_session, moto_sts.url, chained).get_caller_identity()["Arn"]
        assert arn.endswith(f":assumed-role/{role_name(walk.chained_role_arn)}/second-hop")
        web = anonymous_client(boto_session, moto_sts.url).assume_role_with_web_identity(
            RoleArn=walk.web_identity_role_arn, RoleSessionName="pod", WebIdentityToken="a.b.c"
        )["Credentials"]
        arn = session_client(boto_session, moto_sts.url, web).get_caller_identity()["Arn"]
        assert arn.endswith(f":assumed-role/{role_name(walk.web_identity_role_arn)}/pod")
        issued = {creds.access_key_id: creds for creds in moto_sts.proxy.issued()}
        assert issued[chained["AccessKeyId"]].source_access_key_id == first["AccessKeyId"]
        assert issued[web["AccessKeyId"]].action == "AssumeRoleWithWebIdentity"

    def test_a_second_instance_shares_moto_without_breaking_the_first(
        self, moto_sts: DevSTS, boto_session: boto3.session.Session
    ) -> None:
        """moto's state is per process: a second walkthrough gets new names, the first stays."""
        first = walkthrough_of(moto_sts)
        with DevSTS("moto") as other:
            second = other.setup_walkthrough()
            assert second.role_arn != first.role_arn
            assert second.user_name.startswith("credfresh-demo-")
            sts = client(boto_session, other.url, second.access_key_id, second.secret_access_key)
            assert sts.get_caller_identity()["Arn"] == second.user_arn
        sts = user_client(boto_session, moto_sts)
        assert sts.get_caller_identity()["Arn"] == first.user_arn

    def test_iam_calls_pass_through_and_werkzeug_is_silent(
        self,
        moto_sts: DevSTS,
        boto_session: boto3.session.Session,
        capfd: pytest.CaptureFixture[str],
    ) -> None:
        """IAM reaches moto through the proxy; neither moto nor the proxy logs per request."""
        iam = client(boto_session, moto_sts.url, service="iam")
        walk = walkthrough_of(moto_sts)
        names = {role["RoleName"] for role in iam.list_roles()["Roles"]}
        assert {role_name(walk.role_arn), role_name(walk.chained_role_arn)} <= names
        (record,) = moto_sts.proxy.requests(action="ListRoles")
        assert (record.service, record.status, record.outcome) == ("iam", 200, "forwarded")
        out, err = capfd.readouterr()
        assert "POST /" not in out + err
        assert "HTTP/1.1" not in out + err


class TestAuthEnforcement:
    def test_trust_policy_that_does_not_name_the_caller_is_access_denied(
        self, moto_sts: DevSTS, boto_session: boto3.session.Session
    ) -> None:
        """With moto's IAM on, signatures made for the proxy verify and trust is enforced."""
        walk = walkthrough_of(moto_sts)
        moto_sts.enable_auth()
        assert moto_sts.auth_enabled
        sts = user_client(boto_session, moto_sts)
        sts.assume_role(RoleArn=walk.role_arn, RoleSessionName="allowed")
        with pytest.raises(ClientError) as excinfo:
            sts.assume_role(RoleArn=walk.chained_role_arn, RoleSessionName="denied")
        assert error_of(excinfo) == ("AccessDenied", 403)

    def test_bad_secret_and_unknown_key(
        self, moto_sts: DevSTS, boto_session: boto3.session.Session
    ) -> None:
        """A wrong secret is SignatureDoesNotMatch; an unknown key is InvalidClientTokenId."""
        walk = walkthrough_of(moto_sts)
        moto_sts.enable_auth()
        wrong = client(boto_session, moto_sts.url, walk.access_key_id, "not-the-secret")
        with pytest.raises(ClientError) as excinfo:
            wrong.get_caller_identity()
        assert error_of(excinfo) == ("SignatureDoesNotMatch", 403)
        with pytest.raises(ClientError) as excinfo:
            client(boto_session, moto_sts.url).get_caller_identity()
        assert error_of(excinfo) == ("InvalidClientTokenId", 403)

    def test_web_identity_stays_unsigned_under_auth(
        self, moto_sts: DevSTS, boto_session: boto3.session.Session
    ) -> None:
        """AssumeRoleWithWebIdentity is public on AWS; moto with auth on must not demand a key."""
        walk = walkthrough_of(moto_sts)
        moto_sts.enable_auth()
        web = anonymous_client(boto_session, moto_sts.url).assume_role_with_web_identity(
            RoleArn=walk.web_identity_role_arn, RoleSessionName="pod", WebIdentityToken="a.b.c"
        )["Credentials"]
        arn = session_client(boto_session, moto_sts.url, web).get_caller_identity()["Arn"]
        assert arn.endswith("/pod")


# -- lifetimes and expiry -----------------------------------------------------------------


class TestLifetime:
    def test_expiration_is_rewritten_in_moto_format(
        self, moto_sts: DevSTS, boto_session: boto3.session.Session
    ) -> None:
        """`lifetime` shortens what the client sees, and the issued record matches it."""
        walk = walkthrough_of(moto_sts)
        moto_sts.proxy.lifetime = 10
        before = time.time()
        creds = user_client(boto_session, moto_sts).assume_role(
            RoleArn=walk.role_arn, RoleSessionName="short"
        )["Credentials"]
        remaining = creds["Expiration"].timestamp() - before
        assert 9 <= remaining <= 11
        issued = moto_sts.proxy.issued_for(creds["AccessKeyId"])
        assert issued is not None
        assert "." in issued.expiration_text
        assert issued.expiration == creds["Expiration"]
        assert issued.secret_access_key == creds["SecretAccessKey"]
        assert issued.session_token == creds["SessionToken"]

    def test_whole_seconds_and_per_role_lifetimes(
        self, stub_sts: DevSTS, boto_session: boto3.session.Session
    ) -> None:
        """Whole-second style writes STS's format; a per-role lifetime beats the default."""
        stub_sts.proxy.expiration_style = "seconds"
        stub_sts.proxy.lifetime = 600
        stub_sts.proxy.lifetimes = {ROLE: 30}
        sts = client(boto_session, stub_sts.url)
        short = sts.assume_role(RoleArn=ROLE, RoleSessionName="short")["Credentials"]
        other = "arn:aws:iam::123456789012:role/other"
        long = sts.assume_role(RoleArn=other, RoleSessionName="long")["Credentials"]
        now = time.time()
        assert 28 <= short["Expiration"].timestamp() - now <= 31
        assert 598 <= long["Expiration"].timestamp() - now <= 601
        texts = [creds.expiration_text for creds in stub_sts.proxy.issued()]
        assert all(text.endswith("Z") and "." not in text for text in texts)

    def test_expired_key_gets_expired_token_from_any_service(
        self, moto_sts: DevSTS, boto_session: boto3.session.Session
    ) -> None:
        """Past its rewritten expiry a key is refused with ExpiredToken (moto never would).

        Any service, and presigned URLs too (the key id then comes from X-Amz-Credential).
        """
        walk = walkthrough_of(moto_sts)
        moto_sts.proxy.lifetime = 2
        creds = user_client(boto_session, moto_sts).assume_role(
            RoleArn=walk.role_arn, RoleSessionName="expiring"
        )["Credentials"]
        sts = session_client(boto_session, moto_sts.url, creds)
        iam = session_client(boto_session, moto_sts.url, creds, service="iam")
        assert sts.get_caller_identity()["Arn"].endswith("/expiring")
        time.sleep(max(creds["Expiration"].timestamp() - time.time(), 0) + 0.05)
        for call in (sts.get_caller_identity, iam.list_roles):
            with pytest.raises(ClientError) as excinfo:
                call()
            assert error_of(excinfo) == ("ExpiredToken", 403)
        presigned = urlsplit(sts.generate_presigned_url("get_caller_identity", ExpiresIn=60))
        status, _, body = raw_get(moto_sts.url, f"{presigned.path}?{presigned.query}")
        assert (status, b"<Code>ExpiredToken</Code>" in body) == (403, True)
        outcomes = [r.outcome for r in moto_sts.proxy.requests()][-3:]
        assert outcomes == ["expired", "expired", "expired"]


class TestWire:
    def test_rewrite_keeps_the_rest_of_the_answer(self) -> None:
        """Only the Expiration text changes; whole seconds stay whole in `keep` style."""
        body = (
            b"<Credentials><AccessKeyId>ASIAX</AccessKeyId><SecretAccessKey>s</SecretAccessKey>"
            b"<SessionToken>t</SessionToken><Expiration>2030-01-01T00:00:00Z</Expiration>"
            b"</Credentials>"
        )
        new, text = rewrite_expiration(body, 1_900_000_000.5, "keep")
        assert text == "2030-03-17T17:46:40Z"
        assert new == body.replace(b"2030-01-01T00:00:00Z", text.encode())
        found = find_credentials(new)
        assert found is not None
        assert (found.access_key_id, found.secret_access_key) == ("ASIAX", "s")
        assert parse_expiration(found.expiration_text).timestamp() == 1_900_000_000


# -- fault injection ----------------------------------------------------------------------

SPEC_CODES = [
    "AccessDenied",
    "MalformedPolicyDocument",
    "PackedPolicyTooLarge",
    "RegionDisabledException",
    "ExpiredToken",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "ValidationError",
    "Throttling",
    "InternalFailure",
    "ServiceUnavailable",
]


class TestFaults:
    @pytest.mark.parametrize("code", SPEC_CODES)
    def test_injected_error_reaches_boto3_with_code_and_status(
        self, code: str, stub_sts: DevSTS, boto_session: boto3.session.Session
    ) -> None:
        """Each STS error arrives as botocore's ClientError with AWS's code and status."""
        stub_sts.proxy.fail(code, times=1)
        sts = client(boto_session, stub_sts.url)
        with pytest.raises(ClientError) as excinfo:
            sts.assume_role(RoleArn=ROLE, RoleSessionName="fault")
        assert error_of(excinfo) == (code, STS_ERRORS[code].status)
        assert sts.assume_role(RoleArn=ROLE, RoleSessionName="after")["Credentials"]

    def test_injection_in_front_of_moto(
        self, moto_sts: DevSTS, boto_session: boto3.session.Session
    ) -> None:
        """Rules work the same in moto mode: here only AssumeRole of one role is refused."""
        walk = walkthrough_of(moto_sts)
        moto_sts.proxy.fail("RegionDisabledException", when={"RoleArn": walk.role_arn})
        sts = user_client(boto_session, moto_sts)
        assert sts.get_caller_identity()["Arn"] == walk.user_arn
        with pytest.raises(ClientError) as excinfo:
            sts.assume_role(RoleArn=walk.role_arn, RoleSessionName="blocked")
        assert error_of(excinfo) == ("RegionDisabledException", 403)

    def test_times_and_match_limit_a_rule(
        self, stub_sts: DevSTS, boto_session: boto3.session.Session
    ) -> None:
        """A rule fires only on matching requests, and only `times` times."""
        rule = stub_sts.proxy.fail("Throttling", times=2, when={"Action": "AssumeRole"})
        sts = client(boto_session, stub_sts.url)
        other = "arn:aws:iam::123456789012:role/other"
        sts.get_caller_identity()
        outcomes = []
        for _ in range(3):
            try:
                sts.assume_role(RoleArn=other, RoleSessionName="times")
                outcomes.append("ok")
            except ClientError as error:
                outcomes.append(error.response["Error"]["Code"])
        assert outcomes == ["Throttling", "Throttling", "ok"]
        assert (rule.hits, rule.remaining) == (2, 0)

    def test_probability_is_seeded_and_callable_predicates_work(
        self, stub_sts: DevSTS, boto_session: boto3.session.Session
    ) -> None:
        """The same seed gives the same failure sequence; a callable can pick requests."""
        sts = client(boto_session, stub_sts.url)

        def sequence() -> list[bool]:
            stub_sts.proxy.clear_faults()
            stub_sts.proxy.seed(42)
            stub_sts.proxy.fail(
                "InternalFailure",
                probability=0.5,
                when=lambda record: record.params.get("RoleSessionName") == "dice",
            )
            failed = []
            for _ in range(16):
                try:
                    sts.assume_role(RoleArn=ROLE, RoleSessionName="dice")
                    failed.append(False)
                except ClientError:
                    failed.append(True)
            return failed

        first = sequence()
        assert 0 < sum(first) < 16
        assert sequence() == first
        sts.assume_role(RoleArn=ROLE, RoleSessionName="other")

    def test_unknown_code_needs_a_status(self, stub_sts: DevSTS) -> None:
        """A misspelt code is refused instead of answered with a guessed status."""
        with pytest.raises(ValueError, match="unknown STS error code 'Throttled'"):
            stub_sts.proxy.fail("Throttled")
        rule = stub_sts.proxy.fail("IncompleteSignature", status=400, times=0)
        assert rule.status == 400

    def test_raw_bodies_break_the_client_parser(
        self, stub_sts: DevSTS, boto_session: boto3.session.Session
    ) -> None:
        """Invalid XML on 200 is a parse error; an HTML 502 page is a ClientError 502."""
        sts = client(boto_session, stub_sts.url)
        stub_sts.proxy.respond_raw(200, "<AssumeRoleResponse><broken", "text/xml", times=1)
        with pytest.raises(ResponseParserError):
            sts.assume_role(RoleArn=ROLE, RoleSessionName="raw")
        stub_sts.proxy.respond_raw(502, "<html><body>Bad Gateway</body></html>", times=1)
        with pytest.raises(ClientError) as excinfo:
            sts.assume_role(RoleArn=ROLE, RoleSessionName="raw")
        assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 502

    def test_large_and_truncated_raw_bodies(self, stub_sts: DevSTS) -> None:
        """A 10 MB body arrives whole; `truncate` announces it all but sends a part."""
        big = b"x" * (10 * 1024 * 1024)
        stub_sts.proxy.respond_raw(200, big, "text/xml", times=1)
        status, _, body = raw_post(stub_sts.url, "Action=GetCallerIdentity")
        assert (status, len(body)) == (200, len(big))
        stub_sts.proxy.respond_raw(200, b"<a>0123456789</a>", "text/xml", times=1, truncate=5)
        with pytest.raises(http.client.IncompleteRead):
            raw_post(stub_sts.url, "Action=GetCallerIdentity")


# -- connections: latency, drops, refusal, clock skew -------------------------------------


class TestConnections:
    def test_latency_delays_each_request_without_serializing_them(
        self, stub_sts: DevSTS, boto_session: boto3.session.Session
    ) -> None:
        """Four concurrent calls with 0.3 s latency take ~0.3 s, not 1.2 s."""
        stub_sts.proxy.latency = 0.3
        sts = client(
            boto_session,
            stub_sts.url,
            config=Config(retries={"total_max_attempts": 1}, max_pool_connections=4),
        )
        sts.get_caller_identity()
        call = {"RoleArn": ROLE, "RoleSessionName": "slow"}
        threads = [threading.Thread(target=sts.assume_role, kwargs=call) for _ in range(4)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        assert 0.3 <= elapsed < 0.9
        assert stub_sts.proxy.calls_by_action["AssumeRole"] == 4

    def test_drop_closes_without_answer(
        self, stub_sts: DevSTS, boto_session: boto3.session.Session
    ) -> None:
        """`drop` hangs up on every request; `drop_next` on the next N only."""
        sts = client(boto_session, stub_sts.url)
        stub_sts.proxy.drop = True
        with pytest.raises(ConnectionClosedError):
            sts.get_caller_identity()
        stub_sts.proxy.drop = False
        stub_sts.proxy.drop_next(1)
        with pytest.raises(ConnectionClosedError):
            sts.get_caller_identity()
        sts.get_caller_identity()
        outcomes = [record.outcome for record in stub_sts.proxy.requests()]
        assert outcomes == ["dropped", "dropped", "stub"]

    def test_refuse_closes_the_port_and_reopens_it(
        self, stub_sts: DevSTS, boto_session: boto3.session.Session
    ) -> None:
        """While refusing, connecting fails as with a dead endpoint; then the URL works again."""
        sts = client(boto_session, stub_sts.url)
        sts.get_caller_identity()
        stub_sts.proxy.refuse = True
        with pytest.raises(EndpointConnectionError):
            sts.get_caller_identity()
        stub_sts.proxy.refuse = False
        sts.get_caller_identity()

    def test_date_header_offset(self, stub_sts: DevSTS) -> None:
        """`date_offset` skews the Date header of answers, for clock-skew handling."""
        stub_sts.proxy.date_offset = 600
        _, headers, _ = raw_post(stub_sts.url, "Action=GetCallerIdentity")
        skew = parsedate_to_datetime(headers["Date"]).timestamp() - time.time()
        assert 595 <= skew <= 605


# -- recording ----------------------------------------------------------------------------


class TestRecording:
    def test_requests_are_recorded_without_tokens(
        self, moto_sts: DevSTS, boto_session: boto3.session.Session
    ) -> None:
        """Parameters and the signing key id are kept; tokens and signatures never are."""
        walk = walkthrough_of(moto_sts)
        token = "eyJ.secret-web-identity-token.sig"
        started = time.time()
        web = anonymous_client(boto_session, moto_sts.url).assume_role_with_web_identity(
            RoleArn=walk.web_identity_role_arn, RoleSessionName="pod", WebIdentityToken=token
        )["Credentials"]
        session_client(boto_session, moto_sts.url, web).get_caller_identity()
        records = moto_sts.proxy.requests()
        assert [r.action for r in records] == ["AssumeRoleWithWebIdentity", "GetCallerIdentity"]
        assert "WebIdentityToken" not in records[0].params
        assert records[0].role_arn == walk.web_identity_role_arn
        assert records[1].access_key_id == web["AccessKeyId"]
        assert all(started <= r.time <= time.time() for r in records)
        dump = json.dumps([r.to_dict() for r in records]) + repr(records)
        for secret in (token, web["SessionToken"], web["SecretAccessKey"], "Signature="):
            assert secret not in dump
        assert moto_sts.proxy.find_leaks(dump) == []
        leaks = moto_sts.proxy.find_leaks(f"oops {web['SessionToken']} {walk.secret_access_key}")
        assert len(leaks) == 2
        assert all(web["SessionToken"] not in leak for leak in leaks)

    def test_counts_per_action_and_role(
        self, stub_sts: DevSTS, boto_session: boto3.session.Session
    ) -> None:
        """Calls are counted in total, per Action and per RoleArn, failures included."""
        sts = client(boto_session, stub_sts.url)
        stub_sts.proxy.fail("Throttling", times=1)
        with pytest.raises(ClientError):
            sts.assume_role(RoleArn=ROLE, RoleSessionName="one")
        sts.assume_role(RoleArn=ROLE, RoleSessionName="two")
        sts.get_caller_identity()
        counts = stub_sts.proxy.counts()
        assert counts.total == 3
        assert counts.by_action == {"AssumeRole": 2, "GetCallerIdentity": 1}
        assert counts.by_role == {ROLE: 2}
        assert len(stub_sts.proxy.issued()) == 1

    def test_logs_keep_a_window_but_counts_stay_exact(self) -> None:
        """A long benchmark keeps only the newest records; counters never drop calls."""
        recorder = Recorder(limit=3)
        for index in range(5):
            params = {"Action": "AssumeRole", "RoleArn": ROLE, "RoleSessionName": f"s{index}"}
            recorder.arrived(RequestRecord(float(index), "POST", "/", "AssumeRole", params, None))
        names = [r.params["RoleSessionName"] for r in recorder.requests()]
        assert names == ["s2", "s3", "s4"]
        assert recorder.counts().by_role == {ROLE: 5}


# -- the stub -----------------------------------------------------------------------------


class TestStub:
    @pytest.mark.unmeasured  # a timing promise: traced, the daemon is twice as slow
    def test_throughput_and_unique_credentials(
        self, stub_sts: DevSTS, boto_session: boto3.session.Session
    ) -> None:
        """200 AssumeRole calls from 8 threads over keep-alive: all keys distinct."""
        config = Config(retries={"total_max_attempts": 1}, max_pool_connections=8)
        sts = client(boto_session, stub_sts.url, config=config)
        sts.get_caller_identity()
        keys: list[str] = []
        lock = threading.Lock()

        def work() -> None:
            for _ in range(25):
                creds = sts.assume_role(RoleArn=ROLE, RoleSessionName="bench")["Credentials"]
                with lock:
                    keys.append(creds["AccessKeyId"])

        threads = [threading.Thread(target=work) for _ in range(8)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        rate = 200 / (time.perf_counter() - started)
        assert len(set(keys)) == 200
        assert len({c.secret_access_key for c in stub_sts.proxy.issued()}) == 200
        assert rate > 150, f"stub served only {rate:.0f} calls/s"

    def test_stub_identity_web_identity_and_validation(
        self, stub_sts: DevSTS, boto_session: boto3.session.Session
    ) -> None:
        """Issued keys identify as the assumed role; malformed ARNs are ValidationError."""
        walk = stub_sts.setup_walkthrough()
        sts = client(boto_session, stub_sts.url, walk.access_key_id, walk.secret_access_key)
        assert sts.get_caller_identity()["Arn"] == walk.user_arn
        creds = sts.assume_role(RoleArn=walk.role_arn, RoleSessionName="s1")["Credentials"]
        arn = session_client(boto_session, stub_sts.url, creds).get_caller_identity()["Arn"]
        assert arn == f"arn:aws:sts::123456789012:assumed-role/{role_name(walk.role_arn)}/s1"
        web = anonymous_client(boto_session, stub_sts.url).assume_role_with_web_identity(
            RoleArn=walk.web_identity_role_arn, RoleSessionName="pod", WebIdentityToken="a.b.c"
        )["Credentials"]
        assert web["AccessKeyId"] != creds["AccessKeyId"]
        with pytest.raises(ClientError) as excinfo:
            sts.assume_role(RoleArn="arn:aws:iam::123:role/x", RoleSessionName="bad")
        assert error_of(excinfo) == ("ValidationError", 400)


# -- the control API, in process and as a subprocess --------------------------------------


class TestControlAPI:
    def test_remote_controls_match_the_proxy(
        self, stub_sts: DevSTS, boto_session: boto3.session.Session
    ) -> None:
        """Faults, settings, records and counts are all reachable over /_devsts/."""
        remote = RemoteDevSTS(stub_sts.url)
        sts = client(boto_session, stub_sts.url)
        remote.fail("Throttling", times=1, match={"Action": "AssumeRole"})
        assert remote.configure(lifetime=42, latency=0.0)["lifetime"] == 42
        with pytest.raises(ClientError) as excinfo:
            sts.assume_role(RoleArn=ROLE, RoleSessionName="remote")
        assert error_of(excinfo) == ("Throttling", 400)
        creds = sts.assume_role(RoleArn=ROLE, RoleSessionName="remote")["Credentials"]
        assert 40 <= creds["Expiration"].timestamp() - time.time() <= 43
        (issued,) = remote.issued()
        assert issued.session_token == creds["SessionToken"]
        records = remote.requests(action="AssumeRole")
        assert [r.outcome for r in records] == ["error:Throttling", "stub"]
        assert remote.counts().by_role == {ROLE: 2}
        assert remote.settings()["mode"] == "stub"
        with pytest.raises(ControlError, match="'code' is required"):
            remote.call("POST", "fail", {})
        with pytest.raises(ControlError, match="unknown field"):
            remote.configure(lifetme=3)
        remote.reset()
        assert remote.counts().total == 0
        assert stub_sts.proxy.lifetime is None

    def test_subprocess_prints_url_and_exits_on_sigterm(
        self, boto_session: boto3.session.Session
    ) -> None:
        """`python -m credfresh.devsts` serves until SIGTERM, quietly, steerable remotely."""
        env = {**os.environ, "PYTHONPATH": str(DAEMON_DIR)}
        process = subprocess.Popen(
            [sys.executable, "-m", "credfresh.devsts", "--mode", "stub", "--lifetime", "30"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            assert process.stdout is not None
            line = process.stdout.readline().strip()
            assert line.startswith("url=http://127.0.0.1:")
            url = line.removeprefix("url=")
            remote = RemoteDevSTS(url)
            remote.fail("AccessDenied", times=1)
            sts = client(boto_session, url)
            with pytest.raises(ClientError) as excinfo:
                sts.assume_role(RoleArn=ROLE, RoleSessionName="sub")
            assert error_of(excinfo) == ("AccessDenied", 403)
            creds = sts.assume_role(RoleArn=ROLE, RoleSessionName="sub")["Credentials"]
            assert creds["Expiration"].timestamp() - time.time() <= 31
            assert remote.counts().total == 2
        finally:
            process.send_signal(signal.SIGTERM)
            out, err = process.communicate(timeout=10)
        assert process.returncode == 0
        assert (out, err) == ("", "")

    def test_refuse_for_via_control_api(
        self, stub_sts: DevSTS, boto_session: boto3.session.Session
    ) -> None:
        """A remote caller can close the port for a while; it reopens by itself."""
        RemoteDevSTS(stub_sts.url).refuse_for(0.3)
        sts = client(boto_session, stub_sts.url)
        with pytest.raises(EndpointConnectionError):
            sts.get_caller_identity()
        time.sleep(0.4)
        sts.get_caller_identity()


# -- packaging: optional moto, loopback only ----------------------------------------------


class TestPackaging:
    def test_stub_needs_no_moto_and_moto_mode_explains_the_extra(self) -> None:
        """With moto missing, the stub still runs and moto mode names the `demo` extra."""
        script = (
            "import sys; sys.modules['moto'] = None\n"
            "from credfresh.devsts import DevSTS\n"
            "with DevSTS('stub') as sts: print(sts.url)\n"
            "try:\n    DevSTS('moto')\n"
            "except ImportError as error:\n    print('ERR', error)\n"
            "print('botocore' in sys.modules, 'boto3' in sys.modules)\n"
        )
        env = {**os.environ, "PYTHONPATH": str(DAEMON_DIR)}
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
        )
        lines = result.stdout.splitlines()
        assert lines[0].startswith("http://127.0.0.1:")
        assert "pip install 'credfresh[demo]'" in lines[1]
        assert lines[2] == "False False"

    @pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.1", "example.com"])
    def test_only_loopback_addresses(self, host: str) -> None:
        """The dev STS refuses to listen anywhere but loopback."""
        with pytest.raises(ValueError, match="loopback"):
            DevSTS("stub", host=host)
