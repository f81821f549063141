"""Config validation: every rule reports its path and expectation, never a value."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from credfresh.cli import main
from credfresh.config.load import read_light
from credfresh.config.model import parse_duration
from credfresh.config.validate import load_config
from credfresh.errors import EXIT_CONFIG, ConfigError

ARN = "arn:aws:iam::123456789012:role/app"
HOME = Path("/home/tester")


def write(tmp_path: Path, document: dict[str, Any], name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(document))
    return path


def problems_of(tmp_path: Path, document: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, document), {}, HOME)
    return info.value.problems


def one_profile(**keys: Any) -> dict[str, Any]:
    return {"profiles": {"p": {"role_arn": ARN, **keys}}}


def assert_problem(problems: list[str], path: str, fragment: str) -> None:
    assert any(p.startswith(f"{path}: ") and fragment in p for p in problems), problems


class TestValid:
    def test_example_config_is_valid(self) -> None:
        """The shipped example validates, with all five profiles (two of them copies)."""
        config = load_config(Path("config/credfresh.example.yaml"), {}, HOME)
        assert set(config.profiles) == {
            "app-prod",
            "app-audit",
            "eks-irsa",
            "dev-sso",
            "from-instance",
        }
        assert config.profiles["dev-sso"].kind == "copy"
        assert config.profiles["app-audit"].chained
        assert config.profiles["app-prod"].policy is not None

    def test_defaults_apply(self, tmp_path: Path) -> None:
        """Keys under defaults reach every profile; a profile's own key wins."""
        doc = {"defaults": {"region": "eu-west-1", "duration_seconds": "1h"}, **one_profile()}
        doc["profiles"]["q"] = {"role_arn": ARN, "region": "us-east-2"}
        config = load_config(write(tmp_path, doc), {}, HOME)
        assert config.profiles["p"].region == "eu-west-1"
        assert config.profiles["q"].region == "us-east-2"
        assert config.profiles["p"].duration_seconds == 3600
        assert config.profiles["p"].role_session_name == "credfresh-p"

    def test_toml_suffix_reads_toml(self, tmp_path: Path) -> None:
        """A .toml config is read as TOML with the same schema."""
        path = tmp_path / "c.toml"
        path.write_text(f'[profiles.p]\nrole_arn = "{ARN}"\nrefresh_before = "10m"\n')
        assert load_config(path, {}, HOME).profiles["p"].refresh_before == 600

    def test_policy_compacted(self, tmp_path: Path) -> None:
        """A policy given as a mapping or JSON text is sent compacted."""
        policy = {"Version": "2012-10-17", "Statement": []}
        config = load_config(
            write(tmp_path, one_profile(policy=json.dumps(policy, indent=4))), {}, HOME
        )
        assert config.profiles["p"].policy == '{"Version":"2012-10-17","Statement":[]}'

    def test_paths_default_from_environment(self, tmp_path: Path) -> None:
        """credentials_file and state_file follow the AWS and systemd environment variables."""
        env = {"AWS_SHARED_CREDENTIALS_FILE": "/x/creds", "STATE_DIRECTORY": "/var/lib/cf"}
        config = load_config(write(tmp_path, one_profile()), env, HOME)
        assert config.credentials_file == Path("/x/creds")
        assert config.state_file == Path("/var/lib/cf/state.json")
        assert config.owner == str((tmp_path / "config.yaml").resolve())

    def test_short_duration_warns(self, tmp_path: Path) -> None:
        """duration_seconds under 1800 is a warning, not an error."""
        config = load_config(write(tmp_path, one_profile(duration_seconds=900)), {}, HOME)
        assert any("1800" in w for w in config.warnings)

    def test_durations(self) -> None:
        """Durations take 90s, 15m, 1h or plain seconds."""
        assert parse_duration("90s") == 90
        assert parse_duration("15m") == 900
        assert parse_duration("1h") == 3600
        assert parse_duration(42) == 42
        with pytest.raises(ValueError, match="duration"):
            parse_duration("soon")


class TestRules:
    def test_unknown_key(self, tmp_path: Path) -> None:
        """Unknown keys are reported at every level."""
        doc = {"bogus": 1, "sts": {"nope": 1}, **one_profile(extra="x")}
        problems = problems_of(tmp_path, doc)
        assert_problem(problems, "bogus", "unknown key")
        assert_problem(problems, "sts.nope", "unknown key")
        assert_problem(problems, "profiles.p.extra", "unknown key")

    def test_bad_role_arn(self, tmp_path: Path) -> None:
        """A role ARN must look like one."""
        problems = problems_of(tmp_path, {"profiles": {"p": {"role_arn": "arn:aws:iam::1:user/x"}}})
        assert_problem(
            problems,
            "profiles.p.role_arn",
            "expected an IAM role ARN like arn:aws:iam::123456789012:role/NAME",
        )

    def test_missing_role_arn(self, tmp_path: Path) -> None:
        """Every profile needs a role ARN."""
        assert_problem(
            problems_of(tmp_path, {"profiles": {"p": {}}}), "profiles.p.role_arn", "required"
        )

    def test_region_partition(self, tmp_path: Path) -> None:
        """A region must belong to the role ARN's partition."""
        problems = problems_of(tmp_path, one_profile(region="cn-north-1"))
        assert_problem(problems, "profiles.p.region", "partition aws")

    def test_region_from_defaults_points_at_defaults(self, tmp_path: Path) -> None:
        """A bad inherited value is reported where it is written."""
        doc = {"defaults": {"region": "us-gov-west-1"}, **one_profile()}
        assert_problem(problems_of(tmp_path, doc), "defaults.region", "partition")

    @pytest.mark.parametrize("value", [899, 43201, "13h"])
    def test_duration_range(self, tmp_path: Path, value: object) -> None:
        """duration_seconds must be within 900..43200."""
        problems = problems_of(tmp_path, one_profile(duration_seconds=value))
        assert_problem(problems, "profiles.p.duration_seconds", "expected at")

    @pytest.mark.parametrize("name", ["a", "x" * 65, "bad name", "ünï"])
    def test_session_name(self, tmp_path: Path, name: str) -> None:
        """role_session_name must be 2..64 of [\\w+=,.@-] in ASCII."""
        problems = problems_of(tmp_path, one_profile(role_session_name=name))
        assert_problem(problems, "profiles.p.role_session_name", "2 to 64")

    def test_policy_too_long(self, tmp_path: Path) -> None:
        """A session policy over 2048 characters once compacted is refused."""
        policy = {"Version": "2012-10-17", "Statement": [{"Sid": "x" * 2100}]}
        problems = problems_of(tmp_path, one_profile(policy=policy))
        assert_problem(problems, "profiles.p.policy", "at most 2048")

    def test_policy_not_json(self, tmp_path: Path) -> None:
        """A policy that is not JSON is refused without quoting it."""
        problems = problems_of(tmp_path, one_profile(policy="{secret-ish"))
        assert_problem(problems, "profiles.p.policy", "expected a JSON policy document")
        assert not any("secret-ish" in p for p in problems)

    def test_too_many_policy_arns(self, tmp_path: Path) -> None:
        """At most 10 managed policy ARNs."""
        arns = [f"arn:aws:iam::aws:policy/P{i}" for i in range(11)]
        assert_problem(
            problems_of(tmp_path, one_profile(policy_arns=arns)),
            "profiles.p.policy_arns",
            "at most 10",
        )

    def test_too_many_tags(self, tmp_path: Path) -> None:
        """At most 50 tags."""
        tags = {f"k{i}": "v" for i in range(51)}
        assert_problem(problems_of(tmp_path, one_profile(tags=tags)), "profiles.p.tags", "50")

    def test_tag_key_length(self, tmp_path: Path) -> None:
        """Tag keys are at most 128 characters."""
        assert_problem(
            problems_of(tmp_path, one_profile(tags={"k" * 129: "v"})), "profiles.p.tags", "128"
        )

    def test_tag_value_length(self, tmp_path: Path) -> None:
        """Tag values are at most 256 characters."""
        assert_problem(
            problems_of(tmp_path, one_profile(tags={"k": "v" * 257})), "profiles.p.tags", "256"
        )

    def test_transitive_keys_among_tags(self, tmp_path: Path) -> None:
        """Transitive tag keys must be tag keys."""
        problems = problems_of(tmp_path, one_profile(tags={"a": "b"}, transitive_tag_keys=["c"]))
        assert_problem(problems, "profiles.p.transitive_tag_keys", "among the tags")

    def test_policy_with_policy_file(self, tmp_path: Path) -> None:
        """policy and policy_file exclude each other."""
        (tmp_path / "p.json").write_text("{}")
        problems = problems_of(tmp_path, one_profile(policy={}, policy_file="p.json"))
        assert_problem(problems, "profiles.p.policy_file", "not allowed together with policy")

    @pytest.mark.parametrize(
        ("key", "value"),
        [
            ("source_profile", "base"),
            ("external_id", "abcdef"),
            ("tags", {"a": "b"}),
            ("transitive_tag_keys", ["a"]),
            ("source_identity", "alice"),
        ],
    )
    def test_web_identity_exclusions(self, tmp_path: Path, key: str, value: object) -> None:
        """AssumeRoleWithWebIdentity takes no source profile, external id, tags or identity."""
        problems = problems_of(tmp_path, one_profile(web_identity_token_file="/t", **{key: value}))
        assert_problem(problems, f"profiles.p.{key}", "not allowed with web_identity_token_file")

    def test_chaining_cycle(self, tmp_path: Path) -> None:
        """Chains that loop are refused, once per cycle."""
        doc = {
            "profiles": {
                "a": {"role_arn": ARN, "source_profile": "b"},
                "b": {"role_arn": ARN, "source_profile": "a"},
            }
        }
        problems = problems_of(tmp_path, doc)
        assert sum("chaining cycle" in p for p in problems) == 1

    def test_self_source(self, tmp_path: Path) -> None:
        """A profile cannot chain from itself."""
        assert_problem(
            problems_of(tmp_path, one_profile(source_profile="p")),
            "profiles.p.source_profile",
            "own source",
        )

    def test_chained_duration(self, tmp_path: Path) -> None:
        """A chained role lasts at most 3600 s."""
        doc = {
            "profiles": {
                "a": {"role_arn": ARN},
                "b": {"role_arn": ARN, "source_profile": "a", "duration_seconds": 7200},
            }
        }
        assert_problem(problems_of(tmp_path, doc), "profiles.b.duration_seconds", "at most 3600")

    def test_unreadable_policy_file(self, tmp_path: Path) -> None:
        """A policy file that cannot be read is reported with its path."""
        problems = problems_of(tmp_path, one_profile(policy_file="missing.json"))
        assert_problem(problems, "profiles.p.policy_file", "cannot read")

    def test_all_problems_at_once(self, tmp_path: Path) -> None:
        """Every problem in the file is reported in one go."""
        doc = {
            "sts": {"max_concurrency": 0},
            "retry": {"initial": "x"},
            "profiles": {"a": {"role_arn": "x"}, "b": {"role_arn": ARN, "region": "mars"}},
        }
        assert len(problems_of(tmp_path, doc)) == 4

    def test_container_listen_address(self, tmp_path: Path) -> None:
        """The container endpoint listens only where botocore accepts http."""
        doc = {"container_credentials": {"listen": "0.0.0.0:9911", "token_file": "/t"}}
        assert_problem(problems_of(tmp_path, doc), "container_credentials.listen", "127.0.0.1")

    def test_yaml_syntax_error_gives_position(self, tmp_path: Path) -> None:
        """Broken YAML reports a line, not the text."""
        path = tmp_path / "c.yaml"
        path.write_text("profiles:\n  p: [unclosed\n")
        with pytest.raises(ConfigError, match="line"):
            load_config(path, {}, HOME)

    def test_alias_bomb_refused(self, tmp_path: Path) -> None:
        """A YAML alias bomb is refused before anything walks it."""
        lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x","x"]']
        lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
        path = tmp_path / "c.yaml"
        path.write_text("\n".join(lines) + "\n")
        with pytest.raises(ConfigError, match="expands"):
            load_config(path, {}, HOME)


class TestCommand:
    def run(self, *argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = main(list(argv), stdout=out, stderr=err, environ=env or {})
        return code, out.getvalue(), err.getvalue()

    def test_validate_ok(self) -> None:
        """validate prints a one-line summary and exits 0."""
        code, out, _ = self.run("validate", "-c", "config/credfresh.example.yaml")
        assert code == 0
        assert "5 profile(s)" in out
        assert len(out.strip().splitlines()) == 1

    def test_validate_bad_exits_2_without_values(self, tmp_path: Path) -> None:
        """A bad config exits 2 listing problems, never quoting a value."""
        path = write(tmp_path, one_profile(secret_access_key="wJalrXUtnFEMI/K7MDENG"))
        code, _, err = self.run("validate", "-c", str(path))
        assert code == EXIT_CONFIG
        assert "profiles.p.secret_access_key: unknown key" in err
        assert "wJalr" not in err
        assert "Traceback" not in err

    def test_config_from_environment(self) -> None:
        """Every option can come from CREDFRESH_<OPTION>."""
        env = {"CREDFRESH_CONFIG": "config/credfresh.example.yaml"}
        assert self.run("validate", env=env)[0] == 0

    def test_missing_config(self, tmp_path: Path) -> None:
        """A missing config file is a config error (2)."""
        code, _, err = self.run("validate", "-c", str(tmp_path / "none.yaml"))
        assert code == EXIT_CONFIG
        assert "not found" in err

    def test_usage_error_exits_2(self) -> None:
        """Unknown commands are usage errors."""
        assert self.run("frobnicate")[0] == EXIT_CONFIG

    def test_subcommand_help(self) -> None:
        """Each subcommand's --help prints its usage through the injected stream."""
        for command in ("run", "once", "status", "validate", "credential-process", "demo"):
            code, out, _ = self.run(command, "--help")
            assert code == 0
            assert out.startswith(f"usage: credfresh {command}")

    def test_version(self) -> None:
        """--version prints the version."""
        code, out, _ = self.run("--version")
        assert code == 0
        assert out.startswith("credfresh ")


class TestLight:
    def test_light_reader_matches(self, tmp_path: Path) -> None:
        """The fast commands' reader agrees with full validation on paths and owner."""
        path = write(tmp_path, {"owner": "me", "credentials_file": "creds", **one_profile()})
        light = read_light(path, {}, HOME)
        full = load_config(path, {}, HOME)
        assert light.credentials_file == full.credentials_file == tmp_path / "creds"
        assert light.owner == full.owner == "me"
        assert light.state_file == full.state_file
        assert set(light.profiles) == set(full.profiles)
