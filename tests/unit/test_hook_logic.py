"""`on_refresh` hooks: the config, which runs a write asks for, what a run may see, how a
failure reads, and the `hook_failed` alert's transitions (pure parts; real commands for the
runner, which is cheap)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from credfresh.alerts.records import AlertState
from credfresh.alerts.rules import Policy, on_hook_failed, on_hook_succeeded
from credfresh.config.model import Config, HookSpec
from credfresh.config.validate import load_config
from credfresh.context import SystemClock
from credfresh.errors import ConfigError
from credfresh.observe.logs import Redactor
from credfresh.observe.metrics import Metrics
from credfresh.outputs.hook_worker import (
    HookWorker,
    hook_environ,
    outcome_failure,
    parse_pid,
    send_signal,
)
from credfresh.outputs.hooks import HookDeps, Hooks, hook_name, runs_for
from credfresh.process.child import Child, Outcome, last_line
from support import stderr_of
from support.recording import RecordingLogger

ARN = "arn:aws:iam::123456789012:role/app"
HOME = Path("/home/tester")
NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def config(tmp_path: Path, document: dict[str, Any]) -> Config:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    return load_config(path, {}, HOME)


def problems(tmp_path: Path, document: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config(tmp_path, document)
    return info.value.problems


class TestConfig:
    def test_defaults_are_inherited_and_a_profile_replaces_them(self, tmp_path: Path) -> None:
        cfg = config(
            tmp_path,
            {
                "defaults": {"on_refresh": {"command": ["systemctl", "try-restart", "app"]}},
                "profiles": {
                    "a": {"role_arn": ARN},
                    "b": {"role_arn": ARN},
                    "c": {
                        "role_arn": ARN,
                        "on_refresh": {
                            "signal": {"pid_file": "/run/nginx.pid", "signal": "usr1"},
                            "timeout": "5s",
                        },
                    },
                },
            },
        )
        shared = HookSpec(command=("systemctl", "try-restart", "app"))
        assert cfg.profiles["a"].on_refresh == cfg.profiles["b"].on_refresh == shared
        assert cfg.profiles["c"].on_refresh == HookSpec(
            pid_file=Path("/run/nginx.pid"), signal="SIGUSR1", timeout=5.0
        )
        assert shared.timeout == 30.0
        assert shared.label() == "systemctl"

    def test_a_hook_needs_something_to_do(self, tmp_path: Path) -> None:
        found = problems(tmp_path, {"profiles": {"p": {"role_arn": ARN, "on_refresh": {}}}})
        assert any(
            p.startswith("profiles.p.on_refresh: ") and "command, signal" in p for p in found
        )

    @pytest.mark.parametrize(
        ("hook", "where"),
        [
            ({"command": []}, "profiles.p.on_refresh.command"),
            ({"command": ["x"], "timeout": "0s"}, "profiles.p.on_refresh.timeout"),
            ({"signal": {"pid_file": "/run/x.pid", "signal": "SIGNOPE"}}, "signal.signal"),
            ({"signal": {"signal": "SIGHUP"}}, "profiles.p.on_refresh.signal.pid_file"),
            ({"command": ["x"], "shell": True}, "profiles.p.on_refresh.shell"),
        ],
    )
    def test_bad_hooks_are_named(self, tmp_path: Path, hook: dict[str, Any], where: str) -> None:
        found = problems(tmp_path, {"profiles": {"p": {"role_arn": ARN, "on_refresh": hook}}})
        assert any(where in p for p in found), found

    def test_a_hook_change_is_no_reason_to_call_sts(self, tmp_path: Path) -> None:
        def profile(hook: list[str]) -> Any:
            doc = {"profiles": {"p": {"role_arn": ARN, "on_refresh": {"command": hook}}}}
            return config(tmp_path, doc).profiles["p"]

        assert profile(["a"]).sts_identity() == profile(["b"]).sts_identity()


class TestRuns:
    def test_one_run_per_hook_with_the_profiles_that_write_carried(self, tmp_path: Path) -> None:
        cfg = config(
            tmp_path,
            {
                "defaults": {"on_refresh": {"command": ["reload"]}},
                "profiles": {
                    "a": {"role_arn": ARN},
                    "b": {"role_arn": ARN},
                    "c": {"role_arn": ARN, "on_refresh": {"command": ["other"]}},
                },
            },
        )
        runs = runs_for(cfg, {"b": object(), "a": object(), "c": object(), "gone": object()})
        assert [(run.spec.command, run.profiles) for run in runs] == [
            (("reload",), ("a", "b")),
            (("other",), ("c",)),
        ]
        assert runs_for(cfg, {"a": object()})[0].profiles == ("a",)
        assert hook_name(cfg, runs[0].spec) == "a,b"  # every profile sharing it, always

    def test_a_command_sees_no_aws_variable(self) -> None:
        env = hook_environ(
            {"PATH": "/bin", "AWS_SECRET_ACCESS_KEY": "x", "aws_profile": "y"},
            ("a", "b"),
            Path("/var/lib/credfresh/.aws/credentials"),
        )
        assert env == {
            "PATH": "/bin",
            "CREDFRESH_PROFILES": "a,b",
            "CREDFRESH_CREDENTIALS_FILE": "/var/lib/credfresh/.aws/credentials",
        }

    @pytest.mark.parametrize(
        ("text", "pid"),
        [("1234\n", 1234), (" 77 ", 77), ("1\n", None), ("0", None), ("-1", None), ("", None)],
    )
    def test_pid_files_never_name_init_or_a_group(self, text: str, pid: int | None) -> None:
        assert parse_pid(text) == pid


class TestFailures:
    def test_exit_status_and_the_last_stderr_line(self) -> None:
        failure = outcome_failure(Outcome(3, "noise\nboom: no such unit\n\n"), 30)
        assert failure is not None
        assert (failure.reason, failure.exit_status, failure.stderr, failure.result) == (
            "exit status 3",
            3,
            "boom: no such unit",
            "failure",
        )
        assert outcome_failure(Outcome(0), 30) is None

    def test_timeouts_and_signals(self) -> None:
        timed_out = outcome_failure(Outcome(None), 5)
        assert timed_out is not None
        assert (timed_out.reason, timed_out.result) == ("timed out after 5 s; killed", "timeout")
        killed = outcome_failure(Outcome(-9), 5)
        assert killed is not None
        assert (killed.reason, killed.exit_status) == ("killed by SIGKILL", None)

    def test_a_real_command(self, tmp_path: Path) -> None:
        child = Child(
            [sys.executable, "-c", "import sys; sys.stderr.write('a\\nb\\n'); sys.exit(4)"],
            timeout=30,
            environ={},
        )
        outcome = child.run()
        assert (outcome.status, last_line(outcome.stderr_tail)) == (4, "b")
        missing = Child([str(tmp_path / "nope")], timeout=30, environ={}).run()
        assert missing.status is None
        assert missing.error is not None
        assert missing.error.startswith("could not run")

    def test_missing_pid_file_and_dead_pid(self, tmp_path: Path) -> None:
        gone = send_signal(tmp_path / "none.pid", "SIGHUP", None)
        assert gone is not None
        assert gone.reason.startswith("pid file missing")
        dead = tmp_path / "dead.pid"
        dead.write_text("4194304\n")  # above pid_max's ceiling: no such process
        failure = send_signal(dead, "SIGHUP", None)
        assert failure is not None
        assert failure.reason.startswith("no process 4194304")

    def test_the_counter(self) -> None:
        metrics = Metrics()
        metrics.hook_ran("success")
        metrics.hook_ran("timeout")
        text = metrics.render().decode()
        assert 'credfresh_hooks_total{result="success"} 1.0' in text
        assert 'credfresh_hooks_total{result="failure"} 0.0' in text
        with pytest.raises(ValueError, match="result"):
            metrics.hook_ran("bogus")  # type: ignore[arg-type]


class TestAlert:
    POLICY = Policy(host="web-1", after=timedelta(hours=1))

    def fail(self, state: AlertState, failures: int, minutes: int = 0) -> Any:
        return on_hook_failed(
            state,
            self.POLICY,
            hook="a,b",
            failures=failures,
            message="reload: exit status 1",
            code="failure",
            now=NOW + timedelta(minutes=minutes),
        )

    def test_fires_on_the_third_failure_in_a_row_and_resolves_on_success(self) -> None:
        state = AlertState()
        for failures in (1, 2):
            step = self.fail(state, failures)
            assert step.events == ()
            state = step.state
        step = self.fail(state, 3)
        assert [(e.alert, e.transition, e.severity) for e in step.events] == [
            ("hook_failed", "fired", "warning")
        ]
        assert step.events[0].alert_id == "web-1:hook_failed:a,b"
        assert step.events[0].message == "3 failures in a row: reload: exit status 1"
        state = self.fail(step.state, 4, minutes=5).state  # repeats wait for `repeat`
        done = on_hook_succeeded(state, self.POLICY, hook="a,b", now=NOW + timedelta(minutes=6))
        assert [e.transition for e in done.events] == ["resolved"]
        assert done.state.alerts == {}

    def test_a_success_before_the_third_sends_nothing(self) -> None:
        state = self.fail(AlertState(), 2).state
        assert on_hook_succeeded(state, self.POLICY, hook="a,b", now=NOW).events == ()


class TestWorkers:
    def test_a_hook_a_reload_dropped_ends_its_thread(self, tmp_path: Path) -> None:
        """The hook runs what is pending, then its worker ends: no idle thread per old hook."""
        log = RecordingLogger()
        hooks = Hooks(
            HookDeps(environ={}, euid=None, log=log, redactor=Redactor(), clock=SystemClock()),
            HookWorker,
        )
        hooked = config(
            tmp_path,
            {"profiles": {"a": {"role_arn": ARN, "on_refresh": {"command": ["/bin/true"]}}}},
        )
        plain = config(tmp_path, {"profiles": {"a": {"role_arn": ARN}}})
        hooks.written(hooked, {"a": object()})  # type: ignore[dict-item]
        [worker] = hooks._workers.values()
        assert isinstance(worker, HookWorker)
        hooks.written(plain, {"a": object()})  # type: ignore[dict-item]
        worker.join(30)
        assert not worker.alive
        assert hooks._workers == {}
        assert [kw["profiles"] for kw in log.named("hook_ran")] == [["a"]]
        hooks.close()


class TestLoadedOnlyWhenUsed:
    def test_a_daemon_without_hooks_or_sinks_never_loads_them(self, tmp_path: Path) -> None:
        """The wiring of a config with no hook and no alert sink leaves both modules unloaded;
        the first write of a hooked profile loads the hook's worker, and only it."""
        plain = tmp_path / "plain"
        plain.mkdir()
        config(plain, {"profiles": {"a": {"role_arn": ARN}}})
        hooked = tmp_path / "hooked"
        hooked.mkdir()
        config(
            hooked,
            {"profiles": {"a": {"role_arn": ARN, "on_refresh": {"command": ["/bin/true"]}}}},
        )
        code = f"""
import io, sys
from pathlib import Path
from credfresh.config.validate import load_config
from credfresh.context import Context
from credfresh.observe.logs import Logging
from credfresh.process import wiring

lazy = ("credfresh.outputs.hook_worker", "credfresh.alerts.sinks")
home = Path({str(HOME)!r})
plain = load_config(Path({str(plain / "config.yaml")!r}), {{}}, home)
hooked = load_config(Path({str(hooked / "config.yaml")!r}), {{}}, home)
ctx = Context.system(io.StringIO(), io.StringIO(), {{"HOME": str(home)}})
wired = wiring.build(plain, ctx, Logging(io.StringIO()))
wired.hooks.written(plain, {{"a": None}})
before = [name for name in lazy if name in sys.modules]
wired.hooks.written(hooked, {{"a": None}})
after = [name for name in lazy if name in sys.modules]
wired.hooks.close()
sys.stderr.write(repr((before, after)))
"""
        stderr = stderr_of(code)
        expected: tuple[list[str], list[str]] = ([], ["credfresh.outputs.hook_worker"])
        assert stderr.strip().endswith(repr(expected)), stderr
