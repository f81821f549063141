"""`credfresh exec`'s pure decisions: profiles in scope, when the child may start, its
environment, the shared credentials file rule, signals and the exit status; its store."""

from __future__ import annotations

import dataclasses
import os
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import ClassVar

import pytest

from credfresh.commands import exec_rules as rules
from credfresh.commands.exec import shared_file_for
from credfresh.config.model import Config
from credfresh.config.validate import build_config
from credfresh.credentials import NEVER, Credentials
from credfresh.credfile.memory import MemoryStore
from credfresh.engine.state import ProfileState

T0 = datetime(2030, 1, 1, tzinfo=UTC)


@dataclasses.dataclass(frozen=True)
class Link:
    chained: bool = False
    source_profile: str | None = None


class TestScope:
    def test_chained_sources_come_along_in_config_order(self) -> None:
        profiles = {
            "root": Link(source_profile="base"),  # `base` is an AWS profile, not credfresh's
            "mid": Link(chained=True, source_profile="root"),
            "other": Link(),
            "top": Link(chained=True, source_profile="mid"),
        }
        assert list(rules.scoped(profiles, ["top"])) == ["root", "mid", "top"]
        assert list(rules.scoped(profiles, ["other", "root"])) == ["root", "other"]


class TestEndpointVariables:
    @pytest.mark.parametrize(
        ("name", "variable"),
        [
            ("app", "CREDFRESH_ENDPOINT_APP"),
            ("app.other-1", "CREDFRESH_ENDPOINT_APP_OTHER_1"),
            ("team/a@b+c", "CREDFRESH_ENDPOINT_TEAM_A_B_C"),
            ("Prod", "CREDFRESH_ENDPOINT_PROD"),
        ],
    )
    def test_upper_case_and_underscores(self, name: str, variable: str) -> None:
        assert rules.endpoint_variable(name) == variable

    def test_two_names_for_one_variable_are_refused(self) -> None:
        with pytest.raises(ValueError, match=r"app-prod and app\.prod"):
            rules.endpoint_variables(["app-prod", "app.prod"])

    def test_url_encodes_the_name(self) -> None:
        base = "http://127.0.0.1:1234/v1/credentials/"
        assert rules.endpoint_url(base, "team/a") == base + "team%2Fa"


class TestStartVerdict:
    def test_ready_waiting_failed(self) -> None:
        later = T0 + timedelta(hours=1)
        failing = ProfileState(last_error_code="AccessDenied", last_error_permanent=True)
        throttled = ProfileState(last_error_code="Throttling")
        names = ["a", "b"]
        assert rules.start_verdict(names, {"a": later, "b": later}, {}, T0) == ("ready", [])
        assert rules.start_verdict(names, {"a": later}, {"b": throttled}, T0) == (
            "waiting",
            ["b"],
        )
        assert rules.start_verdict(names, {"a": T0, "b": later}, {}, T0) == ("waiting", ["a"])
        assert rules.start_verdict(names, {}, {"a": throttled, "b": failing}, T0) == (
            "failed",
            ["b"],
        )

    def test_a_permanent_failure_with_credentials_held_does_not_stop_the_start(self) -> None:
        failing = ProfileState(last_error_code="AccessDenied", last_error_permanent=True)
        held = {"a": T0 + timedelta(minutes=5)}
        assert rules.start_verdict(["a"], held, {"a": failing}, T0) == ("ready", [])


class TestSharedCredentialsFile:
    def test_credfresh_file_without_default_is_kept(self) -> None:
        kept = rules.shared_credentials_file("/x/creds", is_credfresh_file=True, has_default=False)
        assert kept == "/x/creds"
        unset = rules.shared_credentials_file(None, is_credfresh_file=True, has_default=False)
        assert unset is None  # ~/.aws/credentials is credfresh's file: left as it is

    @pytest.mark.parametrize(("ours", "default"), [(True, True), (False, False), (False, True)])
    def test_anything_else_becomes_devnull(self, ours: bool, default: bool) -> None:
        for current in ("/x/creds", None):
            chosen = rules.shared_credentials_file(
                current, is_credfresh_file=ours, has_default=default
            )
            assert chosen == os.devnull


class TestChildEnvironment:
    PARENT: ClassVar[dict[str, str]] = {
        "PATH": "/usr/bin",
        "HOME": "/home/u",
        "AWS_PROFILE": "prod",
        "AWS_DEFAULT_PROFILE": "prod",
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_SESSION_TOKEN": "token",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/x",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN": "inline",
        "AWS_ROLE_ARN": "arn:aws:iam::1:role/r",
        "AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/token",
        "AWS_SHARED_CREDENTIALS_FILE": "/home/u/.aws/credentials",
        "AWS_CONFIG_FILE": "/home/u/.aws/config",
        "AWS_REGION": "eu-west-1",
        "CREDFRESH_ENDPOINT_OUTER": "http://127.0.0.1:1/v1/credentials/outer",
    }
    URL = "http://127.0.0.1:4242/v1/credentials/"

    def test_one_profile(self) -> None:
        env = rules.child_environment(
            self.PARENT,
            endpoints=[("app", self.URL + "app")],
            token_file="/tmp/d/token",
            region="us-east-1",
            shared_file=os.devnull,
        )
        assert env == {
            "PATH": "/usr/bin",
            "HOME": "/home/u",
            "AWS_CONFIG_FILE": "/home/u/.aws/config",
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": self.URL + "app",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": "/tmp/d/token",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def test_several_profiles_and_no_region(self) -> None:
        env = rules.child_environment(
            self.PARENT,
            endpoints=[("app", self.URL + "app"), ("db.ro", self.URL + "db.ro")],
            token_file="/tmp/d/token",
            region=None,
            shared_file="/home/u/.aws/credentials",
        )
        assert env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] == self.URL + "app"
        assert env["CREDFRESH_ENDPOINT_APP"] == self.URL + "app"
        assert env["CREDFRESH_ENDPOINT_DB_RO"] == self.URL + "db.ro"
        assert "CREDFRESH_ENDPOINT_OUTER" not in env
        assert env["AWS_REGION"] == "eu-west-1"  # the parent's, untouched
        assert env["AWS_SHARED_CREDENTIALS_FILE"] == "/home/u/.aws/credentials"
        assert not rules.REMOVED & set(env)

    def test_unset_shared_file_stays_unset(self) -> None:
        parent = {k: v for k, v in self.PARENT.items() if k != "AWS_SHARED_CREDENTIALS_FILE"}
        env = rules.child_environment(
            parent, endpoints=[("a", self.URL + "a")], token_file="t", region=None, shared_file=None
        )
        assert "AWS_SHARED_CREDENTIALS_FILE" not in env


class TestSignalsAndStatus:
    def test_forwarding(self) -> None:
        assert not rules.should_forward(rules.SI_KERNEL, child_in_our_group=True)
        assert rules.should_forward(rules.SI_KERNEL, child_in_our_group=False)
        assert rules.should_forward(0, child_in_our_group=True)  # SI_USER: kill(2)
        assert rules.FORWARDED == (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)

    @pytest.mark.parametrize(
        ("wait_status", "code"), [(0, 0), (3 << 8, 3), (255 << 8, 255), (9, 137), (15, 143)]
    )
    def test_exit_status(self, wait_status: int, code: int) -> None:
        assert rules.exit_status(wait_status) == code

    def test_exit_status_of_a_real_child(self) -> None:
        pid = os.posix_spawn("/bin/sh", ["sh", "-c", "kill -TERM $$"], {})
        _, wait_status = os.waitpid(pid, 0)
        assert rules.exit_status(wait_status) == 128 + signal.SIGTERM


class TestCommand:
    def test_after_the_double_dash(self) -> None:
        assert rules.command_of(["--", "sh", "-c", "x", "--", "y"]) == ["sh", "-c", "x", "--", "y"]
        assert rules.command_of(["--", "--weird"]) == ["--weird"]
        assert rules.command_of(["env"]) == ["env"]

    @pytest.mark.parametrize("argv", [[], ["--"], ["--bogus", "x"]])
    def test_refused(self, argv: list[str]) -> None:
        with pytest.raises(ValueError, match="exec:"):
            rules.command_of(argv)


def test_memory_store_holds_what_was_written() -> None:
    store = MemoryStore()
    creds = Credentials("ASIAEXAMPLE", "s", "t", T0 + timedelta(hours=1), T0)
    path = Path("/nowhere")
    result = store.write_profiles(path, "o", {"a": creds, "b": creds})
    assert (result.written, result.updated, result.conflicts) == (True, ("a", "b"), {})
    assert store.write_profiles(path, "o", {}, ["b", "c"]).removed == ("b",)
    view = store.read_managed(path, "o")
    assert dict(view.managed) == {"a": creds}
    assert not path.exists()


class TestSharedFileOnDisk:
    """`shared_file_for`: the rule applied to the file the child's SDK would read."""

    @staticmethod
    def config(tmp_path: Path, credentials: Path) -> Config:
        document = {
            "credentials_file": str(credentials),
            "state_file": str(tmp_path / "state.json"),
            "owner": "test",
            "profiles": {"app": {"role_arn": "arn:aws:iam::123456789012:role/app"}},
        }
        return build_config(document, tmp_path / "c.yaml", environ={}, home=tmp_path)

    @pytest.fixture
    def ours(self, tmp_path: Path) -> Path:
        credentials = tmp_path / ".aws" / "credentials"
        credentials.parent.mkdir()
        credentials.write_text("[base]\naws_access_key_id = AKIAEXAMPLE\n")
        return credentials

    def test_credfresh_file_without_default_is_kept(self, tmp_path: Path, ours: Path) -> None:
        config = self.config(tmp_path, ours)
        environ = {"AWS_SHARED_CREDENTIALS_FILE": str(ours)}
        assert shared_file_for(environ, tmp_path, config) == str(ours)
        assert shared_file_for({}, tmp_path, config) is None  # ~/.aws/credentials is ours

    def test_a_default_section_or_another_file_gives_devnull(
        self, tmp_path: Path, ours: Path
    ) -> None:
        other = tmp_path / "other"
        other.write_text("[base]\n")
        config = self.config(tmp_path, ours)
        assert shared_file_for({"AWS_SHARED_CREDENTIALS_FILE": str(other)}, tmp_path, config) == (
            os.devnull
        )
        assert shared_file_for({}, tmp_path / "elsewhere", config) == os.devnull
        ours.write_text("[default]\naws_access_key_id = AKIAEXAMPLE\n")
        environ = {"AWS_SHARED_CREDENTIALS_FILE": str(ours)}
        assert shared_file_for(environ, tmp_path, config) == os.devnull
        ours.unlink()
        assert shared_file_for(environ, tmp_path, config) == os.devnull


def test_a_served_static_copy_is_refused() -> None:
    """The container endpoint does not serve a static copy, so exec would start a child that
    only fails; a static copy that is only a chained role's source is fine."""
    later = T0 + timedelta(hours=1)
    held = {"copy": NEVER, "role": later}
    assert rules.start_verdict(["copy", "role"], held, {}, T0, ["role"]) == ("ready", [])
    assert rules.start_verdict(["copy"], held, {}, T0, ["copy"]) == ("static_keys", ["copy"])
