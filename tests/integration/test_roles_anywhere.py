"""IAM Roles Anywhere end to end: the source against the development STS's verifying
endpoint (RSA and EC keys, a chain, a rotated, an expired and an untrusted certificate,
throttling), and `credfresh run` with a Roles Anywhere profile and a role chained on it."""

from __future__ import annotations

import io
import json
import os
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
import urllib3

from conftest import Project
from credfresh.cli import main
from credfresh.config.model import Profile, RolesAnywhereSpec, StsSettings
from credfresh.context import SystemClock
from credfresh.credfile import store as credfile
from credfresh.devsts.pki import Issued, KeyType, issue
from credfresh.sources import x509_sigv4 as sigv4
from credfresh.sources.classify import SourceError
from credfresh.sources.roles_anywhere import RolesAnywhereSource, session_body
from support.daemon_runner import DaemonProcess

ACCOUNT = "123456789012"


@dataclass
class Anchor:
    """A CA registered as a trust anchor, and a Roles Anywhere profile listing one role."""

    project: Project
    root: Path
    ca: Issued
    trust_anchor_arn: str
    profile_arn: str
    role_arn: str
    failures: list[tuple[str, str]] = field(default_factory=list)

    def leaf(
        self, stem: str, *, kind: KeyType = "rsa", issuer: Issued | None = None, **kw: Any
    ) -> tuple[Issued, Path, Path]:
        leaf = issue(f"{stem}.example", issuer=issuer or self.ca, kind=kind, **kw)
        cert, key = leaf.write(self.root, stem)
        return leaf, cert, key

    def profile(self, cert: Path, key: Path, chain: Path | None = None, **kw: Any) -> Profile:
        spec = RolesAnywhereSpec(
            certificate=cert,
            private_key=key,
            certificate_chain=chain,
            trust_anchor_arn=self.trust_anchor_arn,
            profile_arn=self.profile_arn,
            role_arn=self.role_arn,
            endpoint_url=self.project.sts.url,
        )
        defaults: dict[str, Any] = {
            "name": "ra",
            "role_arn": self.role_arn,
            "refresh_before": None,
            "role_session_name": "credfresh-ra",
            "duration_seconds": 3600,
            "region": "us-east-1",
            "roles_anywhere": spec,
        }
        return Profile(**{**defaults, **kw})

    def source(self, rate: float = 50.0) -> RolesAnywhereSource:
        return RolesAnywhereSource(
            StsSettings(timeout=3.0, roles_anywhere_rate=rate),
            clock=SystemClock(),
            on_reload_failed=lambda profile, why: self.failures.append((profile, why)),
            sleep=lambda seconds: None,
        )


def _arn(kind: str) -> str:
    return f"arn:aws:rolesanywhere:us-east-1:{ACCOUNT}:{kind}/{uuid.uuid4()}"


@pytest.fixture
def anchor(project: Project, tmp_path: Path) -> Anchor:
    ca = issue("credfresh test CA", ca=True)
    found = Anchor(
        project=project,
        root=tmp_path / "pki",
        ca=ca,
        trust_anchor_arn=_arn("trust-anchor"),
        profile_arn=_arn("profile"),
        role_arn=project.walkthrough.role_arn,
    )
    service = project.sts.proxy.roles_anywhere
    service.add_trust_anchor(found.trust_anchor_arn, ca.pem)
    service.add_profile(found.profile_arn, [found.role_arn], duration_seconds=3600)
    return found


def caller_arn(project: Project, access_key_id: str, secret: str, token: str) -> str:
    client = boto3.client(
        "sts",
        endpoint_url=project.sts.url,
        region_name="us-east-1",
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret,
        aws_session_token=token,
    )
    return str(client.get_caller_identity()["Arn"])


class TestSource:
    @pytest.mark.parametrize("kind", ["rsa", "ec256", "ec384"])
    def test_issues_credentials_moto_accepts(self, anchor: Anchor, kind: KeyType) -> None:
        _, cert, key = anchor.leaf(f"leaf-{kind}", kind=kind)
        issued = anchor.source().fetch(anchor.profile(cert, key))
        creds = issued.credentials
        arn = caller_arn(
            anchor.project, creds.access_key_id, creds.secret_access_key, creds.session_token
        )
        assert ":assumed-role/" in arn
        assert creds.valid_at(datetime.now(UTC) + timedelta(minutes=50))

    def test_intermediate_chain_and_traditional_key(self, anchor: Anchor) -> None:
        middle = issue("intermediate", issuer=anchor.ca, ca=True)
        chain = anchor.root / "chain.pem"
        anchor.root.mkdir(parents=True, exist_ok=True)
        chain.write_text(middle.pem)
        leaf = issue("leaf.example", issuer=middle, kind="ec256")
        cert, key = leaf.write(anchor.root, "leaf", traditional=True)
        assert anchor.source().fetch(anchor.profile(cert, key, chain)).credentials
        with pytest.raises(SourceError) as refused:
            anchor.source().fetch(anchor.profile(cert, key))  # the chain left out
        assert refused.value.failure.code == "AccessDeniedException"

    def test_untrusted_certificate_is_permanent_with_a_hint(self, anchor: Anchor) -> None:
        stranger = issue("another CA", ca=True)
        _, cert, key = anchor.leaf("stranger", issuer=stranger)
        with pytest.raises(SourceError) as refused:
            anchor.source().fetch(anchor.profile(cert, key))
        failure = refused.value.failure
        assert (failure.code, failure.permanent, failure.status) == (
            "AccessDeniedException",
            True,
            403,
        )
        assert failure.hint is not None
        assert "trust_anchor_arn" in failure.hint

    def test_role_not_in_the_profile_is_refused(self, anchor: Anchor) -> None:
        _, cert, key = anchor.leaf("leaf")
        profile = anchor.profile(cert, key)
        assert profile.roles_anywhere is not None
        other = RolesAnywhereSpec(
            **{**profile.roles_anywhere.__dict__, "role_arn": f"arn:aws:iam::{ACCOUNT}:role/x"}
        )
        with pytest.raises(SourceError) as refused:
            anchor.source().fetch(anchor.profile(cert, key, roles_anywhere=other))
        assert refused.value.failure.code == "AccessDeniedException"

    def test_expired_certificate_is_caught_before_sending(self, anchor: Anchor) -> None:
        old = datetime.now(UTC) - timedelta(days=3)
        _, cert, key = anchor.leaf("expired", valid_from=old, valid_for=timedelta(days=1))
        calls = anchor.project.sts.proxy.calls
        with pytest.raises(SourceError) as refused:
            anchor.source().fetch(anchor.profile(cert, key))
        assert refused.value.failure.code == "certificate_expired"
        assert refused.value.failure.permanent
        assert anchor.project.sts.proxy.calls == calls

    def test_rotation_by_rename_and_a_broken_rotation(self, anchor: Anchor) -> None:
        first, cert, key = anchor.leaf("live")
        source = anchor.source()
        profile = anchor.profile(cert, key)
        assert source.fetch(profile).credentials
        files = source.files_for(profile)
        assert files.material().certificate.serial_number == first.certificate.serial_number
        second = issue("live.example", issuer=anchor.ca, kind="ec256")
        new_cert, new_key = second.write(anchor.root, "next")
        os.replace(new_key, key)
        os.replace(new_cert, cert)
        assert source.fetch(profile).credentials
        assert files.material().certificate.serial_number == second.certificate.serial_number
        cert.write_text("-----BEGIN CERTIFICATE-----\nhalf written")
        assert source.fetch(profile).credentials  # the last good pair still signs
        assert files.material().certificate.serial_number == second.certificate.serial_number
        assert len(anchor.failures) == 1
        assert "holds no PEM certificate" in anchor.failures[0][1]

    def test_throttling_is_transient(self, anchor: Anchor) -> None:
        _, cert, key = anchor.leaf("leaf")
        anchor.project.sts.proxy.fail(
            "ThrottlingException",
            status=429,
            times=1,
            when=lambda record: record.action == "CreateSession",
        )
        with pytest.raises(SourceError) as refused:
            anchor.source().fetch(anchor.profile(cert, key))
        assert (refused.value.failure.code, refused.value.failure.permanent) == (
            "ThrottlingException",
            False,
        )


class TestVerifier:
    """The development endpoint refuses what the real one would."""

    def _post(
        self, anchor: Anchor, leaf: Issued, *, when: datetime, body: bytes, sent: bytes = b""
    ) -> int:
        """Sign `body` at `when`, send `sent` (the same body unless given)."""
        url = anchor.project.sts.url.rstrip("/")
        request = sigv4.SigningRequest(
            "POST",
            "/sessions",
            "",
            {"Host": url.split("//", 1)[1], "Content-Type": "application/json"},
            body,
        )
        headers = sigv4.signed_headers(
            key=leaf.key,
            certificate=leaf.certificate,
            chain=(),
            request=request,
            region="us-east-1",
            when=when,
        )
        response = urllib3.request(
            "POST", url + "/sessions", body=sent or body, headers=headers, retries=False
        )
        return int(response.status)

    def test_stale_and_tampered_requests_are_refused(self, anchor: Anchor) -> None:
        leaf, cert, key = anchor.leaf("leaf")
        spec = anchor.profile(cert, key).roles_anywhere
        assert spec is not None
        body = session_body(spec, 3600)
        now = datetime.now(UTC)
        assert self._post(anchor, leaf, when=now, body=body) == 201
        assert self._post(anchor, leaf, when=now - timedelta(minutes=10), body=body) == 403
        tampered = body.replace(b"3600", b"3500")
        assert self._post(anchor, leaf, when=now, body=body, sent=tampered) == 403
        too_long = session_body(spec, 7200)
        assert self._post(anchor, leaf, when=now, body=too_long) == 400


class TestDaemon:
    def test_roles_anywhere_profile_and_a_role_chained_on_it(
        self, anchor: Anchor, tmp_path: Path
    ) -> None:
        host, cert, key = anchor.leaf("host")
        project = anchor.project
        project.document["profiles"] = {
            "ra": {
                "roles_anywhere": {
                    "certificate": str(cert),
                    "private_key": str(key),
                    "trust_anchor_arn": anchor.trust_anchor_arn,
                    "profile_arn": anchor.profile_arn,
                    "role_arn": anchor.role_arn,
                    "endpoint_url": project.sts.url,
                },
            },
            "on-top": {
                "role_arn": project.walkthrough.chained_role_arn,
                "source_profile": "ra",
            },
        }
        project.write_config()
        log = tmp_path / "daemon.log"
        with DaemonProcess(project.config_path, project.env, log) as proc:
            proc.wait_event("ready", 30)
            view = credfile.read_managed(project.credentials_file, "test").managed
            assert proc.stop() == 0
        assert set(view) >= {"ra", "on-top"}
        on_top = view["on-top"]
        arn = caller_arn(
            project, on_top.access_key_id, on_top.secret_access_key, on_top.session_token
        )
        assert "chained" in arn
        ra_calls = project.sts.proxy.requests(action="CreateSession")
        assert len(ra_calls) == 1
        out = io.StringIO()
        argv = ["status", "--json", "-c", str(project.config_path)]
        assert main(argv, stdout=out, stderr=io.StringIO(), environ=project.env) == 0
        rows = {row["profile"]: row for row in json.loads(out.getvalue())["profiles"]}
        ends = host.certificate.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert rows["ra"]["source_expires_at"] == ends  # the SOURCE EXPIRES column
        assert rows["on-top"]["source_expires_at"] is None
