"""STS decisions that need no server: classification, response checks, parameters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from credfresh.config.model import Profile
from credfresh.sources.assume_role import assume_role_params
from credfresh.sources.classify import SourceError, classify
from credfresh.sources.response import accept_response

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def response(expiration: object, date: str | None = None, **overrides: object) -> dict[str, object]:
    creds = {
        "AccessKeyId": "ASIAEXAMPLEEXAMPLE01",
        "SecretAccessKey": "secret",
        "SessionToken": "token",
        "Expiration": expiration,
        **overrides,
    }
    headers = {"date": date} if date else {}
    return {
        "Credentials": creds,
        "AssumedRoleUser": {"Arn": "arn:aws:sts::123456789012:assumed-role/app/s"},
        "ResponseMetadata": {"HTTPHeaders": headers},
    }


class TestClassify:
    @pytest.mark.parametrize(
        "code",
        [
            "AccessDenied",
            "MalformedPolicyDocument",
            "PackedPolicyTooLarge",
            "RegionDisabledException",
            "ValidationError",
            "InvalidClientTokenId",
            "SignatureDoesNotMatch",
            "ExpiredToken",
        ],
    )
    def test_permanent_with_hint(self, code: str) -> None:
        """Errors that need a human are permanent and carry a hint."""
        failure = classify(code, "m", 403)
        assert failure.permanent
        assert failure.hint

    @pytest.mark.parametrize(
        "code", ["Throttling", "connection_error", "timeout", "InternalFailure"]
    )
    def test_transient(self, code: str) -> None:
        """Throttling, 5xx and network errors are transient."""
        assert not classify(code, "m", 500).permanent

    def test_unknown_by_status(self) -> None:
        """Unknown codes are permanent for 4xx and transient for 5xx."""
        assert classify("Weird", "", 400).permanent
        assert not classify("Weird", "", 503).permanent

    def test_signature_expired_points_at_clock(self) -> None:
        """'Signature expired' is a clock problem: the hint says NTP."""
        assert "NTP" in (classify("SignatureDoesNotMatch", "Signature expired: x", 403).hint or "")


class TestAccept:
    def test_accepts_fractional_and_whole_seconds(self) -> None:
        """Expirations are read with or without fractional seconds."""
        for text in ("2026-11-28T13:00:00Z", "2026-11-28T13:00:00.123456Z"):
            creds, _ = accept_response(response(text), received_at=NOW, duration_seconds=3600)
            assert creds.expiration is not None
            assert creds.expiration.replace(microsecond=0) == NOW + timedelta(hours=1)

    def test_past_expiry_refused(self) -> None:
        """An Expiration in the past is a failure."""
        with pytest.raises(SourceError, match="past"):
            accept_response(
                response(NOW - timedelta(seconds=1)), received_at=NOW, duration_seconds=900
            )

    def test_far_future_refused(self) -> None:
        """An Expiration beyond duration + 5 min is a failure."""
        with pytest.raises(SourceError, match="later"):
            accept_response(
                response(NOW + timedelta(hours=2)), received_at=NOW, duration_seconds=3600
            )

    @pytest.mark.parametrize("field", ["AccessKeyId", "SecretAccessKey", "SessionToken"])
    def test_missing_or_empty_field(self, field: str) -> None:
        """Every credential field must be present and non-empty."""
        with pytest.raises(SourceError) as info:
            accept_response(
                response(NOW + timedelta(hours=1), **{field: ""}),
                received_at=NOW,
                duration_seconds=3600,
            )
        assert info.value.failure.code == "invalid_response"

    def test_skew_corrects_expiry(self) -> None:
        """A server clock 10 minutes ahead moves the local expiry 10 minutes earlier."""
        server_now = NOW + timedelta(minutes=10)
        date = server_now.strftime("%a, %d %b %Y %H:%M:%S GMT")
        creds, skew = accept_response(
            response(server_now + timedelta(hours=1), date), received_at=NOW, duration_seconds=3600
        )
        assert skew == timedelta(minutes=-10)
        assert creds.expiration == NOW + timedelta(hours=1)


class TestParams:
    def test_every_parameter(self) -> None:
        """Each profile key becomes its AssumeRole parameter."""
        profile = Profile(
            name="p",
            role_arn="arn:aws:iam::123456789012:role/app",
            role_session_name="s",
            duration_seconds=1800,
            region="us-east-1",
            refresh_before=600,
            external_id="ext",
            policy='{"Version":"2012-10-17"}',
            policy_arns=("arn:aws:iam::aws:policy/ReadOnlyAccess",),
            tags=(("team", "data"),),
            transitive_tag_keys=("team",),
            source_identity="alice",
        )
        params = assume_role_params(profile)
        assert params == {
            "RoleArn": profile.role_arn,
            "RoleSessionName": "s",
            "DurationSeconds": 1800,
            "Policy": '{"Version":"2012-10-17"}',
            "PolicyArns": [{"arn": "arn:aws:iam::aws:policy/ReadOnlyAccess"}],
            "ExternalId": "ext",
            "Tags": [{"Key": "team", "Value": "data"}],
            "TransitiveTagKeys": ["team"],
            "SourceIdentity": "alice",
        }

    def test_web_identity_takes_no_source_parameters(self) -> None:
        """AssumeRoleWithWebIdentity gets no ExternalId, tags or SourceIdentity."""
        profile = Profile(
            name="p",
            role_arn="arn:aws:iam::123456789012:role/app",
            role_session_name="s",
            duration_seconds=900,
            region=None,
            refresh_before=600,
            web_identity_token_file=Path("/t"),
            external_id="ext",
        )
        assert "ExternalId" not in assume_role_params(profile)
