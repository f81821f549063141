"""Hostile and broken input: configs, credentials files, STS answers, permissions."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Project
from credfresh.cli import main
from credfresh.credfile import store as credfile
from support import examples
from support.daemon_runner import DaemonProcess, env_with

NOBODY = 65534


def validate(path: Path) -> tuple[int, str, float, int]:
    out, err = io.StringIO(), io.StringIO()
    tracemalloc.start()
    started = time.perf_counter()
    try:
        code = main(["validate", "-c", str(path)], stdout=out, stderr=err, environ={})
    finally:
        took = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return code, err.getvalue(), took, peak


def assert_clean_rejection(code: int, err: str, took: float, peak: int) -> None:
    assert code in (0, 2)
    assert "Traceback" not in err
    assert took < 10.0  # a bomb or a loop never ends; speed itself is a benchmark figure
    assert peak < 64 * 1024 * 1024
    if code == 2:
        problems = [line.strip() for line in err.splitlines()[1:] if line.strip()]
        assert problems
        assert all(": " in problem for problem in problems)


EXAMPLE_TEXT = Path("config/credfresh.example.yaml").read_text()
EXAMPLE_LINES = EXAMPLE_TEXT.splitlines()

junk = st.one_of(
    st.text(max_size=60),
    st.sampled_from(
        [
            "*alias",
            "&anchor [",
            "{",
            "- - - -",
            "role_arn: !!python/object:os.system ls",
            "  bogus: 1",
            "!!binary aGVsbG8=",
            "duration_seconds: 1e999",
            "\t\tx: y",
            "[" * 200,
        ]
    ),
)


class TestConfigFuzz:
    @settings(
        max_examples=examples(120),
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(st.lists(st.tuples(st.integers(0, len(EXAMPLE_LINES)), junk), min_size=1, max_size=4))
    def test_mutated_yaml_text(self, tmp_path: Path, edits: list[tuple[int, str]]) -> None:
        """Lines of junk spliced into the example: a config or exit 2, fast, never a traceback."""
        lines = list(EXAMPLE_LINES)
        for index, text in edits:
            lines.insert(index, text)
        path = tmp_path / "fuzz.yaml"
        path.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
        assert_clean_rejection(*validate(path))

    @settings(
        max_examples=examples(60),
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(st.binary(max_size=2000))
    def test_random_bytes_toml_and_yaml(self, tmp_path: Path, data: bytes) -> None:
        """Arbitrary bytes, non-UTF-8 included, as YAML and as TOML."""
        for name in ("fuzz.yaml", "fuzz.toml"):
            path = tmp_path / name
            path.write_bytes(data)
            assert_clean_rejection(*validate(path))

    @pytest.mark.parametrize(
        ("name", "text"),
        [
            ("deep.yaml", "a: " + "[" * 5000 + "]" * 5000 + "\n"),
            ("deepmap.yaml", "".join(f"{' ' * i}k{i}:\n" for i in range(300)) + "\n"),
            ("deep.toml", "a = " + "[" * 5000 + "]" * 5000 + "\n"),
            ("huge.yaml", "owner: " + "x" * 3_000_000 + "\n"),
            (
                "bomb.yaml",
                "a: &a [x,x,x,x,x,x,x,x,x,x]\n"
                + "".join(
                    f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 10) + "]\n"
                    for i in range(9)
                ),
            ),
            ("latin1.yaml", "owner: caf\xe9\n"),
            ("keys.yaml", "? [a, b]\n: c\n"),
            ("ints.yaml", "1: 2\nprofiles: {3: 4}\n"),
        ],
    )
    def test_extreme_documents(self, tmp_path: Path, name: str, text: str) -> None:
        """Deep nesting, huge values, alias bombs, odd keys and encodings are refused cleanly."""
        path = tmp_path / name
        path.write_bytes(text.encode("latin-1" if "latin1" in name else "utf-8"))
        code, err, took, peak = validate(path)
        assert_clean_rejection(code, err, took, peak)
        assert code == 2


def daemon(project: Project, tmp_path: Path, name: str = "d.log", **env: str) -> DaemonProcess:
    return DaemonProcess(
        project.config_path,
        env_with(project.env, CREDFRESH_WAKEUP_INTERVAL=env.pop("wakeup", "1"), **env),
        tmp_path / name,
    )


class TestReloadNeverHalfApplies:
    def test_half_valid_config_applies_nothing(self, project: Project, tmp_path: Path) -> None:
        """A config that adds a valid profile and breaks another is rejected whole."""
        project.profile("a", duration_seconds=3600)
        project.write_config()
        with daemon(project, tmp_path) as proc:
            proc.wait_event("ready", 10)
            calls = project.sts.proxy.calls
            project.profile("b", duration_seconds=3600)
            project.document["profiles"]["a"]["duration_seconds"] = 12
            project.write_config()
            proc.wait_event("config_rejected", 3)
            time.sleep(1.5)
            assert project.sts.proxy.calls == calls
            assert "b" not in credfile.read_managed(project.credentials_file, "test").managed


class TestUnparseableFile:
    def test_never_rewritten_then_resumes(self, project: Project, tmp_path: Path) -> None:
        """A file that does not parse is left alone (unparseable_file, line); a fix resumes."""
        project.sts.proxy.lifetime = 4
        project.profile("a")
        project.write_config()
        with daemon(project, tmp_path) as proc:
            proc.wait_event("ready", 10)
            good = project.credentials_file.read_text()
            broken = good + "\n[base]\naws_access_key_id = AKIADUPLICATEDUPLIC\n"
            project.credentials_file.write_text(broken)
            failed = proc.wait_event("write_failed", 8)[0]
            assert failed["error_code"] == "unparseable_file"
            assert "line" in failed["message"]
            time.sleep(1)
            assert project.credentials_file.read_text() == broken
            project.credentials_file.write_text(good)
            proc.wait_for(
                lambda _: project.credentials_file.read_text() != good,
                8,
                "writing to resume once the file is fixed",
            )


RESPONSE = (
    '<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult>'
    "<Credentials><AccessKeyId>{akid}</AccessKeyId><SecretAccessKey>{secret}</SecretAccessKey>"
    "<SessionToken>{token}</SessionToken><Expiration>{expiration}</Expiration></Credentials>"
    "<AssumedRoleUser><Arn>arn:aws:sts::123456789012:assumed-role/r/s</Arn>"
    "<AssumedRoleId>AROAEXAMPLE:s</AssumedRoleId></AssumedRoleUser></AssumeRoleResult>"
    "<ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></AssumeRoleResponse>"
)


def sts_body(**overrides: str) -> str:
    fields = {
        "akid": "ASIAHOSTILEEXAMPLE01",
        "secret": "hostilesecretkeyhostilesecretkeyhostile1",
        "token": "hostiletoken" * 20,
        "expiration": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 1800)),
    }
    fields.update(overrides)
    return RESPONSE.format(**fields)


def iso(offset: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + offset))


BROKEN = {
    "invalid-xml": ("<AssumeRoleResponse><AssumeRoleResult><Credentials>", "text/xml"),
    "missing-fields": (
        sts_body().replace("<SessionToken>", "<X>").replace("</SessionToken>", "</X>"),
        "text/xml",
    ),
    "empty-strings": (sts_body(secret="", token=""), "text/xml"),
    "expired": (sts_body(expiration=iso(-60)), "text/xml"),
    "far-future": (sts_body(expiration=iso(7 * 86400)), "text/xml"),
    "ten-megabytes": (
        "<AssumeRoleResponse>" + "x" * 10_000_000 + "</AssumeRoleResponse>",
        "text/xml",
    ),
    "non-ascii-keys": (sts_body(akid="ASIAÜNÏCÖDÉ000000000", secret="sécret" * 7), "text/xml"),
    "captive-portal": (
        "<html><head><title>Hotel WiFi</title></head><body>Log in</body></html>",
        "text/html",
    ),
}


class TestBrokenStsAnswers:
    @pytest.mark.parametrize("case", sorted(BROKEN))
    def test_rejected_nothing_written(self, project: Project, case: str) -> None:
        """Each broken answer is a clear failure, and nothing is written."""
        body, content_type = BROKEN[case]
        project.profile("p", duration_seconds=900)
        project.write_config()
        project.sts.proxy.respond_raw(200, body, content_type)
        before = project.credentials_file.read_bytes()
        out, err = io.StringIO(), io.StringIO()
        code = main(
            ["once", "-c", str(project.config_path)], stdout=out, stderr=err, environ=project.env
        )
        assert code == 1
        assert "failed p: invalid_response" in err.getvalue()
        assert "Traceback" not in err.getvalue()
        assert project.credentials_file.read_bytes() == before

    def test_daemon_keeps_last_good_and_alerts(self, project: Project, tmp_path: Path) -> None:
        """Under broken answers the daemon keeps the last good credentials and alerts."""
        sink = tmp_path / "alerts.jsonl"
        script = "import sys; open(sys.argv[1], 'a').write(sys.stdin.read() + chr(10))"
        project.document["alerts"] = {
            "command": ["python3", "-c", script, str(sink)],
            "after": "1s",
        }
        project.document["retry"] = {"initial": "0.5s", "max": "1s"}
        project.sts.proxy.lifetime = 6
        project.profile("p")
        project.write_config()
        with daemon(project, tmp_path) as proc:
            proc.wait_event("ready", 10)
            good = credfile.read_managed(project.credentials_file, "test").managed["p"]
            project.sts.proxy.respond_raw(200, BROKEN["captive-portal"][0], "text/html")
            proc.wait_event("refresh_failed", 8, count=2)
            proc.wait_for(
                lambda _: sink.exists() and "invalid_response" in sink.read_text(), 5, "an alert"
            )
            kept = credfile.read_managed(project.credentials_file, "test").managed["p"]
            assert kept.access_key_id == good.access_key_id


class TestClockSkew:
    @pytest.mark.parametrize("offset", [600, -600])
    def test_reported_once_and_corrected(
        self, project: Project, tmp_path: Path, offset: int
    ) -> None:
        """A +-10 minute skew is reported once with its size; expiries are corrected."""
        project.sts.proxy.date_offset = offset
        project.sts.proxy.lifetime = 8 + offset
        project.profile("p")
        project.write_config()
        with daemon(project, tmp_path) as proc:
            proc.wait_event("refreshed", 12, count=3)
            skews = proc.named("clock_skew")
            refreshed = proc.named("refreshed")
        assert len(skews) == 1
        assert abs(skews[0]["skew_seconds"] + offset) < 3
        for event in refreshed:
            left = time.mktime(
                time.strptime(event["expires_at"], "%Y-%m-%dT%H:%M:%SZ")
            ) - time.mktime(time.strptime(event["timestamp"][:19], "%Y-%m-%dT%H:%M:%S"))
            assert 5 <= left <= 10


class TestPermissions:
    def test_modes_under_umask_000(self, project: Project, tmp_path: Path) -> None:
        """Credentials, lock, pid and state files are 0600 and new directories 0700, umask 000."""
        target = tmp_path / "fresh" / "dir" / "credentials"
        project.document["credentials_file"] = str(target)
        project.document["state_file"] = str(tmp_path / "newstate" / "state.json")
        project.profile("p", duration_seconds=3600)
        project.write_config()
        Path(project.env["AWS_CONFIG_FILE"]).write_text(
            "[profile base]\n"
            f"aws_access_key_id = {project.walkthrough.access_key_id}\n"
            f"aws_secret_access_key = {project.walkthrough.secret_access_key}\n"
        )
        proc = DaemonProcess(
            project.config_path,
            env_with(project.env),
            tmp_path / "d.log",
            preexec=lambda: os.umask(0),
        )
        with proc:
            proc.wait_event("ready", 10)
            modes = {
                path.name: oct(path.stat().st_mode & 0o777)
                for path in [
                    target,
                    target.with_name("credentials.lock"),
                    target.with_name("credentials.credfresh.pid"),
                    target.parent,
                    target.parent.parent,
                ]
            }
            proc.wait_for(lambda _: (tmp_path / "newstate" / "state.json").exists(), 5, "state")
            state_mode = oct((tmp_path / "newstate" / "state.json").stat().st_mode & 0o777)
            state_dir = oct((tmp_path / "newstate").stat().st_mode & 0o777)
        assert modes == {
            "credentials": "0o600",
            "credentials.lock": "0o600",
            "credentials.credfresh.pid": "0o600",
            "dir": "0o700",
            "fresh": "0o700",
        }
        assert state_mode == "0o600"
        assert state_dir == "0o700"

    @pytest.mark.parametrize("problem", ["group-writable", "other-owner", "policy-writable"])
    def test_root_refuses_editable_config(
        self, project: Project, tmp_path: Path, problem: str
    ) -> None:
        """As root, a config or policy file others can edit stops `run` with exit 2 and the fix."""
        policy = tmp_path / "policy.json"
        policy.write_text('{"Version": "2012-10-17", "Statement": []}')
        policy.chmod(0o600)
        project.profile("p", policy_file=str(policy))
        project.write_config()
        target = project.config_path
        if problem == "group-writable":
            target.chmod(0o664)
            fix = "chmod go-w"
        elif problem == "other-owner":
            os.chown(target, NOBODY, NOBODY)
            fix = "chown 0"
        else:
            policy.chmod(0o666)
            target = policy
            fix = "chmod go-w"
        proc = DaemonProcess(project.config_path, env_with(project.env), tmp_path / "d.log")
        assert proc.proc.wait(15) == 2
        proc.stop()
        log = (tmp_path / "d.log").read_text()
        assert str(target) in log
        assert fix in log
        assert project.sts.proxy.calls == 0

    def test_other_user_gets_a_warning(self, project: Project, tmp_path: Path) -> None:
        """Not as root, a group-writable config is a warning and the daemon runs."""
        home = Path(tempfile.mkdtemp(prefix="credfresh-nobody-"))
        try:
            home.chmod(0o755)
            credentials = home / "credentials"
            shutil.copy(project.credentials_file, credentials)
            project.profile("p", duration_seconds=3600)
            project.document["credentials_file"] = str(credentials)
            project.document["state_file"] = str(home / "state.json")
            config = home / "credfresh.yaml"
            config.write_text(yaml.safe_dump(project.document))
            config.chmod(0o664)
            for path in (home, credentials, config):
                os.chown(path, NOBODY, NOBODY)
            env = env_with(project.env, HOME=str(home), AWS_CONFIG_FILE="/dev/null")
            env["AWS_SHARED_CREDENTIALS_FILE"] = str(credentials)
            proc = DaemonProcess(
                config,
                env,
                tmp_path / "d.log",
                argv_prefix=(
                    "setpriv",
                    "--reuid",
                    str(NOBODY),
                    "--regid",
                    str(NOBODY),
                    "--clear-groups",
                ),
            )
            with proc:
                proc.wait_event("ready", 15)
                assert proc.named("config_permissions")
                assert "x_credfresh_owner = test" in credentials.read_text()
        finally:
            shutil.rmtree(home)


_ = Any
