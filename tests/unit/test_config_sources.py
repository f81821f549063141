"""The config of each source: Roles Anywhere and copied profiles next to role profiles."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from credfresh.config.model import Config
from credfresh.config.validate import build_config
from credfresh.devsts.pki import issue
from credfresh.errors import ConfigError

ROLE = "arn:aws:iam::123456789012:role/app"
ANCHOR = (
    "arn:aws:rolesanywhere:eu-west-1:123456789012:trust-anchor/0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d"
)
PROFILE = (
    "arn:aws:rolesanywhere:eu-west-1:123456789012:profile/9a8b7c6d-5e4f-3a2b-1c0d-9e8f7a6b5c4d"
)


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, str]:
    ca = issue("ca", ca=True)
    cert, key = issue("host", issuer=ca).write(tmp_path, "host")
    _, other_key = issue("other", issuer=ca).write(tmp_path, "other")
    old = issue(
        "old",
        issuer=ca,
        valid_from=datetime.now(UTC) - timedelta(days=9),
        valid_for=timedelta(days=2),
    )
    old_cert, old_key = old.write(tmp_path, "old")
    return {
        "cert": str(cert),
        "key": str(key),
        "other_key": str(other_key),
        "old_cert": str(old_cert),
        "old_key": str(old_key),
    }


def ra(pki: dict[str, str], **keys: Any) -> dict[str, Any]:
    return {
        "certificate": pki["cert"],
        "private_key": pki["key"],
        "trust_anchor_arn": ANCHOR,
        "profile_arn": PROFILE,
        "role_arn": ROLE,
        **keys,
    }


def build(tmp_path: Path, profiles: dict[str, Any], **top: Any) -> Config:
    document = {"credentials_file": str(tmp_path / "credentials"), "profiles": profiles, **top}
    return build_config(
        document, tmp_path / "c.yaml", {}, tmp_path, now=datetime.now(UTC) + timedelta(days=1)
    )


def problems(tmp_path: Path, profiles: dict[str, Any], **top: Any) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        build(tmp_path, profiles, **top)
    return list(raised.value.problems)


class TestRolesAnywhere:
    def test_a_profile_with_its_region_from_the_trust_anchor(
        self, tmp_path: Path, pki: dict[str, str]
    ) -> None:
        config = build(tmp_path, {"host": {"roles_anywhere": ra(pki)}})
        profile = config.profiles["host"]
        assert profile.kind == "roles_anywhere"
        assert profile.region == "eu-west-1"
        assert profile.role_arn == ROLE
        assert profile.roles_anywhere is not None
        assert profile.roles_anywhere.certificate == Path(pki["cert"])
        assert config.sts.roles_anywhere_rate == 8.0
        assert config.alerts.certificate_warning == 14 * 86400

    def test_assume_role_keys_from_defaults_are_ignored_but_refused_on_the_profile(
        self, tmp_path: Path, pki: dict[str, str]
    ) -> None:
        defaults = {"external_id": "xyz123", "role_session_name": "s1", "source_profile": "base"}
        config = build(tmp_path, {"host": {"roles_anywhere": ra(pki)}}, defaults=defaults)
        assert config.profiles["host"].external_id is None
        assert config.profiles["host"].source_profile is None
        found = problems(tmp_path, {"host": {"roles_anywhere": ra(pki), "tags": {"a": "b"}}})
        assert found == [
            "profiles.host.tags: not allowed with roles_anywhere (CreateSession takes no such "
            "parameter)"
        ]

    def test_role_arn_and_roles_anywhere_exclude_each_other(
        self, tmp_path: Path, pki: dict[str, str]
    ) -> None:
        found = problems(tmp_path, {"x": {"roles_anywhere": ra(pki), "role_arn": ROLE}})
        assert found == ["profiles.x: role_arn and roles_anywhere exclude each other"]

    def test_files_that_cannot_be_used(self, tmp_path: Path, pki: dict[str, str]) -> None:
        missing = str(tmp_path / "nope.pem")
        found = problems(
            tmp_path,
            {
                "a": {"roles_anywhere": ra(pki, certificate=missing)},
                "b": {"roles_anywhere": ra(pki, private_key=pki["other_key"])},
                "c": {
                    "roles_anywhere": ra(
                        pki, certificate=pki["old_cert"], private_key=pki["old_key"]
                    )
                },
            },
        )
        assert found[0].startswith(
            f"profiles.a.roles_anywhere: cannot read the certificate {missing}"
        )
        assert found[1] == (
            f"profiles.b.roles_anywhere: the private key {pki['other_key']} does not match "
            f"{pki['cert']}"
        )
        assert found[2].startswith("profiles.c.roles_anywhere.certificate: the certificate expired")

    def test_arns_of_the_wrong_service_or_partition(
        self, tmp_path: Path, pki: dict[str, str]
    ) -> None:
        found = problems(
            tmp_path,
            {
                "a": {"roles_anywhere": ra(pki, trust_anchor_arn=ROLE)},
                "b": {"roles_anywhere": ra(pki, role_arn="arn:aws-cn:iam::123456789012:role/r")},
            },
        )
        assert found == [
            "profiles.a.roles_anywhere.trust_anchor_arn: expected a Roles Anywhere trust anchor "
            "ARN like arn:aws:rolesanywhere:us-east-1:123456789012:trust-anchor/ID",
            "profiles.b.roles_anywhere: expected the trust anchor, profile and role in one "
            "partition",
        ]

    def test_a_role_chained_on_it_is_capped_at_an_hour(
        self, tmp_path: Path, pki: dict[str, str]
    ) -> None:
        profiles: dict[str, Any] = {
            "host": {"roles_anywhere": ra(pki)},
            "app": {"role_arn": ROLE, "source_profile": "host", "duration_seconds": 3600},
        }
        config = build(tmp_path, profiles)
        assert config.profiles["app"].chained
        profiles["app"]["duration_seconds"] = 7200
        assert problems(tmp_path, profiles) == [
            "profiles.app.duration_seconds: expected at most 3600 for a chained role (AWS caps "
            "role chaining at one hour)"
        ]


class TestCopied:
    def test_source_profile_alone_copies(self, tmp_path: Path) -> None:
        defaults = {"duration_seconds": 7200, "external_id": "xyz123", "region": "us-east-1"}
        config = build(
            tmp_path,
            {"sso": {"source_profile": "dev-sso"}, "ec2": {"source_profile": "default-chain"}},
            defaults=defaults,
        )
        assert config.profiles["sso"].kind == "copy"
        assert config.profiles["sso"].external_id is None
        assert config.profiles["ec2"].source_profile == "default-chain"
        assert config.warnings == ()

    def test_refusals(self, tmp_path: Path) -> None:
        found = problems(
            tmp_path,
            {
                "a": {"source_profile": "dev", "duration_seconds": 3600},
                "b": {"source_profile": "c"},
                "c": {"role_arn": ROLE},
                "d": {"source_profile": "d"},
            },
        )
        assert found == [
            "profiles.a.duration_seconds: not allowed on a copied profile (source_profile "
            "without role_arn copies that AWS profile's credentials as they are)",
            "profiles.b.source_profile: a copied profile cannot copy another profile of this "
            "config (its section is credfresh's own); add role_arn to chain a role from it",
            "profiles.d.source_profile: a profile cannot be its own source",
        ]

    def test_a_profile_naming_no_source(self, tmp_path: Path) -> None:
        found = problems(tmp_path, {"a": {"region": "us-east-1"}})
        assert found[0].startswith("profiles.a.role_arn: required (or roles_anywhere, or ")
