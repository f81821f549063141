"""The credential-process fast path reads what the full path reads, or steps aside."""

from __future__ import annotations

import configparser
import dataclasses
import io
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from credfresh.cli import main
from credfresh.commands import fastpath
from credfresh.config import load as config
from credfresh.config import model
from credfresh.context import Context
from credfresh.credentials import account_id
from credfresh.credfile import format as credfile
from credfresh.credfile import store
from credfresh.errors import CredfileError
from support import examples, stderr_of
from support.helpers_credfile import (
    NOBODY,
    OWNER,
    PARSER_FRAGMENTS,
    FileModel,
    credentials_files,
    make_creds,
)

PROPS = settings(
    max_examples=examples(300),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
NOW = datetime.now(UTC)


@st.composite
def fragment_texts(draw: st.DrawFn) -> str:
    """Line soup from valid, odd and broken fragments with mixed line endings."""
    lines = draw(st.lists(st.sampled_from(PARSER_FRAGMENTS), max_size=14))
    endings = st.sampled_from(["\n", "\n", "\r\n", "\r"])
    return "".join(line + draw(endings) for line in lines)


def _full(text: str, wanted: str) -> dict[str, str] | type[CredfileError] | None:
    try:
        sections = credfile._parse(credfile._split_lines(text))
    except CredfileError:
        return CredfileError
    for section in sections:
        if section.name == wanted and wanted != "DEFAULT":
            return section.options
    return None


def _fast(text: str, wanted: str) -> dict[str, str] | type[CredfileError] | None:
    try:
        return fastpath.section_options(fastpath.split_lines(text), wanted)
    except fastpath.Unparseable:
        return CredfileError


@pytest.mark.unmeasured  # generated files by the hundred; the reader is unit-tested too
class TestReaderMatchesCredfile:
    @settings(PROPS, max_examples=examples(800))
    @given(fragment_texts(), st.sampled_from(["a", "b", "c", "x]y", "DEFAULT", "zz"]))
    def test_fragments(self, text: str, wanted: str) -> None:
        """Same options for the wanted section, and an error exactly when credfile errs."""
        assert _fast(text, wanted) == _full(text, wanted)

    @PROPS
    @given(credentials_files(), st.data())
    def test_generated_files(self, model: FileModel, data: st.DataObject) -> None:
        """On credentials-like files every managed profile reads the same."""
        names = [*model.managed, "absent"]
        wanted = data.draw(st.sampled_from(names))
        assert _fast(model.text, wanted) == _full(model.text, wanted)
        view = credfile.view_of(model.text, OWNER, [wanted])
        creds = view.managed.get(wanted)
        options = fastpath.section_options(fastpath.split_lines(model.text), wanted)
        found = None if options is None else fastpath.section_credentials(options, OWNER)
        if creds is None:
            assert found is None
        else:
            assert found == (
                creds.access_key_id,
                creds.secret_access_key,
                creds.session_token,
                creds.expiration,
                account_id(creds.principal_arn),
            )

    @PROPS
    @given(credentials_files(), st.data())
    def test_rendered_sections_of_each_kind(self, model: FileModel, data: st.DataObject) -> None:
        """Sections credfresh renders (temporary; static with or without a token), whole or
        with a key dropped, read the same on both paths next to generated ones."""
        kind = data.draw(st.sampled_from(["temporary", "static", "static-token"]))
        base = make_creds(data.draw(st.integers(0, 99)), principal=data.draw(st.booleans()))
        creds = dataclasses.replace(
            base,
            session_token="" if kind == "static" else base.session_token,
            expiration=base.expiration if kind == "temporary" else None,
        )
        name = data.draw(st.sampled_from(["rendered", *model.managed]))
        merged = credfile.merge(model.text, OWNER, {name: creds})
        assume(not merged.conflicts)
        text = merged.text
        drop = data.draw(st.sampled_from(["", "aws_session_token", "x_security", "x_credfresh_i"]))
        for line in credfile.render_section(name, creds, OWNER).splitlines(keepends=True):
            if drop and line.startswith(drop):
                text = text.replace(line, "", 1)
        view = credfile.view_of(text, OWNER, [name])
        held = view.managed.get(name)
        options = fastpath.section_options(fastpath.split_lines(text), name)
        found = None if options is None else fastpath.section_credentials(options, OWNER)
        if held is None:
            assert found is None
            return
        assert found == (
            held.access_key_id,
            held.secret_access_key,
            held.session_token,
            held.expiration,
            account_id(held.principal_arn),
        )
        if not drop:
            assert held.session_token == creds.session_token
            assert held.static == creds.static

    @PROPS
    @given(st.sampled_from(PARSER_FRAGMENTS))
    def test_header_pattern(self, line: str) -> None:
        """Our header pattern is configparser's."""
        ours = fastpath._SECTCRE.match(line.strip())
        theirs = configparser.RawConfigParser.SECTCRE.match(line.strip())
        assert (ours and ours.group("header")) == (theirs and theirs.group("header"))

    @pytest.mark.parametrize(
        "name",
        ["c.toml", "c.TOML", ".toml", "c.", "dir.toml/c.yaml", "c.yaml.toml", "c", "a/b.toml/"],
    )
    def test_suffix(self, name: str) -> None:
        """TOML or YAML is decided by the suffix as pathlib sees it."""
        assert config.suffix(name) == Path(name).suffix

    def test_constants(self) -> None:
        """The limits and names repeated here are the config module's."""
        assert Path(fastpath.DEFAULT_CONFIG) == model.DEFAULT_CONFIG_PATH
        assert (fastpath.OWNER_KEY, fastpath.FORMAT_KEY, fastpath.FORMAT_VERSION) == (
            credfile.OWNER_KEY,
            credfile.FORMAT_KEY,
            credfile.FORMAT_VERSION,
        )
        assert (fastpath.EXPIRES_KEY, fastpath.ISSUED_KEY) == (
            credfile.EXPIRES_KEY,
            credfile.ISSUED_KEY,
        )
        assert (fastpath.STATIC_KEY, fastpath.STATIC_VALUE) == (
            credfile.STATIC_KEY,
            credfile.STATIC_VALUE,
        )

    @pytest.mark.parametrize("token", [None, "IQoJ"])
    @pytest.mark.parametrize("expires", [None, "2026-12-02T13:00:00Z"])
    @pytest.mark.parametrize("static", [None, "true", "yes"])
    def test_the_expiry_rule_is_the_credfile_one(
        self, token: str | None, expires: str | None, static: str | None
    ) -> None:
        fields = (token, expires, static)
        assert fastpath._expiry_rule(*fields) == credfile.expiry_rule(*fields)


class TestArguments:
    @pytest.mark.parametrize(
        ("argv", "expected"),
        [
            (["credential-process", "p"], {"profile": "p"}),
            (["credential-process", "p", "-c", "/x"], {"profile": "p", "config": "/x"}),
            (["credential-process", "-c", "/x", "p"], {"profile": "p", "config": "/x"}),
            (["credential-process", "p", "--config=/x"], {"profile": "p", "config": "/x"}),
            (
                ["credential-process", "p", "--credentials-file", "/c"],
                {"profile": "p", "credentials-file": "/c"},
            ),
            (
                ["credential-process", "p", "--log-level", "debug"],
                {"profile": "p", "log-level": "debug"},
            ),
        ],
    )
    def test_plain_forms(self, argv: list[str], expected: dict[str, str]) -> None:
        """The spellings SDK configs use are read as argparse reads them."""
        assert fastpath.parse_args(argv) == expected

    @pytest.mark.parametrize(
        "argv",
        [
            ["credential-process"],
            ["credential-process", "p", "q"],
            ["credential-process", "p", "-h"],
            ["credential-process", "p", "--conf", "/x"],
            ["credential-process", "p", "-c"],
            ["credential-process", "p", "-c=/x"],
            ["credential-process", "p", "-c", "/x", "-c", "/y"],
            ["credential-process", "p", "-c", "-x"],
            ["credential-process", "p", "--log-level", "loud"],
            ["credential-process", "--", "p"],
            ["credential-process", "-p"],
            ["status", "p"],
        ],
    )
    def test_anything_else_goes_to_argparse(self, argv: list[str]) -> None:
        """Help, abbreviations, repeats, usage errors: not ours to answer."""
        assert fastpath.parse_args(argv) is None

    def test_sources(self, tmp_path: Path) -> None:
        """--credentials-file, then a named config, then the default one or the AWS file."""
        env = {"AWS_SHARED_CREDENTIALS_FILE": "/aws", "CREDFRESH_CONFIG": "/env.yaml"}
        assert fastpath.source_of("/c.yaml", "/f", env) == (False, "/f")
        assert fastpath.source_of(None, None, {"CREDFRESH_CREDENTIALS_FILE": "/f"}) == (
            False,
            "/f",
        )
        assert fastpath.source_of("/c.yaml", None, env) == (True, "/c.yaml")
        assert fastpath.source_of(None, None, env) == (True, "/env.yaml")
        default_exists = os.path.exists(fastpath.DEFAULT_CONFIG)
        assert fastpath.source_of(None, None, {"AWS_SHARED_CREDENTIALS_FILE": "/aws"}) == (
            (True, fastpath.DEFAULT_CONFIG) if default_exists else (False, "/aws")
        )
        assert fastpath.source_of(None, None, {}) == (True, fastpath.DEFAULT_CONFIG)


class TestRunArguments:
    """`run` read without argparse: the same spellings, else argparse reads them."""

    @pytest.mark.parametrize(
        ("argv", "expected"),
        [
            (["run"], {}),
            (["run", "-c", "/x"], {"config": "/x"}),
            (
                ["run", "--config=/x", "--log-format", "json"],
                {"config": "/x", "log-format": "json"},
            ),
            (["run", "--log-level=debug"], {"log-level": "debug"}),
        ],
    )
    def test_plain_forms(self, argv: list[str], expected: dict[str, str]) -> None:
        assert fastpath.parse_run_args(argv) == expected

    @pytest.mark.parametrize(
        "argv",
        [
            ["run", "-h"],
            ["run", "extra"],
            ["run", "--conf", "/x"],
            ["run", "--credentials-file", "/f"],
            ["run", "-c", "/x", "-c", "/y"],
            ["run", "--log-format", "pretty"],
            ["run", "--once-then-exit"],
            ["run", "--", "-c"],
            ["status"],
        ],
    )
    def test_anything_else_goes_to_argparse(self, argv: list[str]) -> None:
        assert fastpath.parse_run_args(argv) is None

    def test_both_ways_start_the_same_daemon(self, tmp_path: Path) -> None:
        """The option, its `CREDFRESH_` variable, and argparse's abbreviation name one config."""
        missing = str(tmp_path / "missing.yaml")
        code, _, err = _cli("run", "-c", missing)
        assert code == 2
        assert err.endswith(f"(file): not found: {missing}\n")
        assert _cli("run", "--conf", missing)[::2] == (code, err)
        env = {"HOME": "/nonexistent", "CREDFRESH_CONFIG": missing}
        assert _cli("run", env=env)[::2] == (code, err)

    def test_run_never_loads_argparse(self, tmp_path: Path) -> None:
        missing = str(tmp_path / "missing.yaml")
        code = (
            "import sys; from credfresh.cli import main; "
            f"rc = main(['run', '-c', {missing!r}]); "
            "sys.stderr.write(repr((rc, 'argparse' in sys.modules)))"
        )
        stderr = stderr_of(code)
        assert stderr.strip().endswith("(2, False)"), stderr


def _layout(tmp_path: Path, *, valid_for: timedelta = timedelta(hours=1)) -> Path:
    creds_path = tmp_path / "credentials"
    creds_path.write_text("[base]\naws_access_key_id = AKIAEXAMPLE\n")
    creds_path.chmod(0o600)
    now = datetime.now(UTC).replace(microsecond=0)
    creds = {
        "p": make_creds(1, now=now - timedelta(hours=1) + valid_for),
        "q": make_creds(2, now=now),
    }
    store.write_profiles(creds_path, OWNER, creds)
    config_path = tmp_path / "credfresh.yaml"
    config_path.write_text(f"credentials_file: {creds_path}\nowner: {OWNER}\nprofiles: {{}}\n")
    return config_path


def _cli(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err, environ=env or {"HOME": "/nonexistent"})
    return code, out.getvalue(), err.getvalue()


class TestAnswers:
    def test_same_json_as_the_full_path(self, tmp_path: Path) -> None:
        """The fast answer is byte for byte the full command's output, with the account of
        the assumed role's ARN (`AccountId`, issue 19)."""
        config_path = _layout(tmp_path)
        fast = io.StringIO()
        argv = ["credential-process", "p", "-c", str(config_path)]
        assert fastpath.try_credential_process(argv, Context(fast, fast, {})) == 0
        slow_out, slow_err = io.StringIO(), io.StringIO()
        from credfresh.commands.credential_process import credential_process

        assert credential_process(config_path, "p", Context(slow_out, slow_err, {})) == 0
        assert fast.getvalue() == slow_out.getvalue()
        assert set(json.loads(fast.getvalue())) == {
            "Version",
            "AccessKeyId",
            "SecretAccessKey",
            "SessionToken",
            "Expiration",
            "AccountId",
        }
        assert json.loads(fast.getvalue())["AccountId"].isdigit()

    def test_toml_config(self, tmp_path: Path) -> None:
        """A TOML config is read the same way."""
        yaml_config = _layout(tmp_path)
        toml_config = tmp_path / "credfresh.toml"
        toml_config.write_text(
            f'credentials_file = "{tmp_path / "credentials"}"\nowner = "{OWNER}"\n'
        )
        out = io.StringIO()
        argv = ["credential-process", "p", "-c", str(toml_config)]
        assert fastpath.try_credential_process(argv, Context(out, out, {})) == 0
        assert out.getvalue() == _cli("credential-process", "p", "-c", str(yaml_config))[1]

    @pytest.mark.parametrize(
        ("case", "code", "message"),
        [
            ("missing", 1, "credfresh: profile nope has no credentials in {creds} "),
            ("expired", 1, "credfresh: profile p expired at "),
            ("no config", 2, "credfresh: {tmp}/absent.yaml: 1 problem(s) in config"),
            ("bad yaml", 2, "not valid YAML"),
            ("other owner", 1, "credfresh: profile p has no credentials in {creds} "),
        ],
    )
    def test_failures_are_the_full_commands(
        self, tmp_path: Path, case: str, code: int, message: str
    ) -> None:
        """Every failure steps aside: exit code and message are the full command's."""
        config_path = _layout(
            tmp_path, valid_for=timedelta(minutes=-5 if case == "expired" else 60)
        )
        profile = "nope" if case == "missing" else "p"
        if case == "no config":
            config_path = tmp_path / "absent.yaml"
        elif case == "bad yaml":
            config_path.write_text(config_path.read_text() + "bad: [\n")
        elif case == "other owner":
            config_path.write_text(config_path.read_text().replace(OWNER, "someone"))
        argv = ["credential-process", profile, "-c", str(config_path)]
        sink = io.StringIO()
        assert fastpath.try_credential_process(argv, Context(sink, sink, {})) is None
        got_code, out, err = _cli(*argv)
        assert (got_code, out) == (code, "")
        assert message.format(creds=tmp_path / "credentials", tmp=tmp_path) in err
        assert "SECRET" not in err

    def test_unsafe_or_linked_files_step_aside(self, tmp_path: Path) -> None:
        """A symlinked file goes the full way (and works); a file root does not own fails."""
        config_path = _layout(tmp_path)
        link = tmp_path / "link"
        link.symlink_to(tmp_path / "credentials")
        assert fastpath.read_process_json(str(link), "p", OWNER, NOW, os.geteuid()) is None
        assert fastpath.read_process_json(
            str(tmp_path / "credentials"), "p", OWNER, NOW, os.geteuid()
        )
        code, out, _ = _cli("credential-process", "p", "--credentials-file", str(link))
        assert code == 0
        assert json.loads(out)["Version"] == 1
        if os.geteuid() == 0:
            os.chown(tmp_path / "credentials", NOBODY, NOBODY)
            assert (
                fastpath.read_process_json(
                    str(tmp_path / "credentials"), "p", OWNER, NOW, os.geteuid()
                )
                is None
            )
            code, out, err = _cli("credential-process", "p", "-c", str(config_path))
            assert (code, out) == (1, "")
            assert "unsafe_path" in err

    def test_credentials_file_without_config(self, tmp_path: Path) -> None:
        """--credentials-file and AWS_SHARED_CREDENTIALS_FILE read any credfresh section."""
        config_path = _layout(tmp_path)
        creds = str(tmp_path / "credentials")
        expected = _cli("credential-process", "q", "-c", str(config_path))[1]
        assert _cli("credential-process", "q", "--credentials-file", creds)[1] == expected
        env = {"HOME": "/nonexistent", "CREDFRESH_CREDENTIALS_FILE": creds}
        assert _cli("credential-process", "q", env=env)[1] == expected
        if not os.path.exists(fastpath.DEFAULT_CONFIG):
            env = {"HOME": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": creds}
            assert _cli("credential-process", "q", env=env)[1] == expected
        code, out, err = _cli("credential-process", "base", "--credentials-file", creds)
        assert (code, out) == (1, "")
        assert (
            err
            == f"credfresh: profile base has no credentials in {creds} (is credfresh running?)\n"
        )
        (tmp_path / "credentials").write_text("garbage\n")
        code, _, err = _cli("credential-process", "q", "--credentials-file", creds)
        assert code == 1
        assert err.startswith("credfresh: unparseable_file: ")

    def test_imports_stay_minimal(self, tmp_path: Path) -> None:
        """The answer loads no argparse, pathlib, dataclasses, configparser or credfile."""
        config_path = _layout(tmp_path)
        heavy = ("argparse", "pathlib", "dataclasses", "configparser", "credfresh.credfile.format")
        code = (
            "import sys; from credfresh.cli import main; "
            f"rc = main(['credential-process', 'p', '-c', {str(config_path)!r}]); "
            f"sys.stderr.write(repr((rc, [m for m in {heavy!r} if m in sys.modules])))"
        )
        stderr = stderr_of(code)
        assert stderr.strip().endswith("(0, [])"), stderr
