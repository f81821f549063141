"""`credfresh exec`: a long-lived client under it across refreshes, the exit status passed
through, signals forwarded, a permanent failure that runs nothing, and nothing left behind."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from conftest import Project
from support import TESTS_DIR
from support.daemon_runner import env_with, terminate
from support.waiting import wait_until

CHILD = str(TESTS_DIR / "support" / "exec_child.py")
#: exec started with the signals it forwards at their defaults, whatever this run inherited
#: (a test session under `nohup` ignores SIGHUP, and exec rightly keeps that).
DEFAULT_SIGNALS = [
    sys.executable,
    "-c",
    "import os, signal, sys\n"
    "for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):\n"
    "    signal.signal(s, signal.SIG_DFL)\n"
    "os.execvp(sys.argv[1], sys.argv[1:])",
]
LIFETIME = 5


@pytest.fixture(autouse=True)
def scanned_logs(project: Project, leak_watch: Any) -> Iterator[None]:
    """Every exec log of the test goes through the secrets guard."""
    yield
    for log in project.root.glob("exec-*.log"):
        leak_watch(log)


def start(
    project: Project,
    profiles: list[str],
    command: list[str],
    prefix: Sequence[str] = tuple(DEFAULT_SIGNALS),
    **extra: str,
) -> tuple[subprocess.Popen[str], Path]:
    """`credfresh exec` with JSON logs in a file and a TMPDIR of its own, started through
    `prefix` (by default: with the forwarded signals at their defaults)."""
    tmp = project.root / "tmp"
    tmp.mkdir(exist_ok=True)
    log = project.root / f"exec-{len(list(project.root.glob('exec-*.log')))}.log"
    selected = [arg for name in profiles for arg in ("--profile", name)]
    if "--" not in command:
        command = ["--", *command]
    argv = [*prefix, *project.argv("exec", "--log-format", "json", *selected), *command]
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env_with(project.env, TMPDIR=str(tmp), **extra),
        )
    return proc, log


def events(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def named(log: Path, event: str) -> list[dict[str, Any]]:
    return [e for e in events(log) if e.get("event") == event]


def finish(proc: subprocess.Popen[str], timeout: float) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        terminate(proc, 5)
        if proc.stdout is not None:
            proc.stdout.close()
    return proc.returncode, out


def test_long_lived_client_across_refreshes(project: Project, leak_watch: Any) -> None:
    """One boto3 client signs with 4 keys in a row (3 refreshes of 5-second credentials, the
    STS refusing expired ones) without a failure; what would win over the container provider
    is removed; the token file goes, and the credentials file is not touched."""
    project.sts.proxy.lifetime = LIFETIME
    assert project.sts.proxy.enforce_expiry
    project.profile("app", role_session_name="exec-app")
    project.profile("app.other-1", role_session_name="exec-other")
    project.profile("unused")
    project.write_config()
    before = project.credentials_file.read_bytes()
    proc, log = start(
        project,
        ["app", "app.other-1"],
        [sys.executable, CHILD, project.sts.url, "4", "60"],
        AWS_PROFILE="base",
        AWS_ACCESS_KEY_ID="AKIAEXAMPLEEXAMPLE00",
        AWS_SECRET_ACCESS_KEY="not-a-secret-but-would-win",
        AWS_CONTAINER_CREDENTIALS_RELATIVE_URI="/v2/credentials/elsewhere",
    )
    status, out = finish(proc, 120)
    assert status == 0, log.read_text()[-3000:]
    leak_watch(out)
    report = json.loads(out.strip().splitlines()[-1])
    assert report["failures"] == {}, report
    assert report["keys"] >= 4, report
    assert [arn.split("/")[-1] for arn in report["arns"]] == ["exec-app"]
    env = set(report["env"])
    assert {"AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}.isdisjoint(env)
    assert "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI" not in env
    assert {"CREDFRESH_ENDPOINT_APP", "CREDFRESH_ENDPOINT_APP_OTHER_1"} <= env
    assert report["uri"].startswith("http://127.0.0.1:")
    assert report["uri"].endswith("/v1/credentials/app")
    assert report["region"] == "us-east-1"
    # credfresh's own file without [default]: kept
    assert report["shared_file"] == str(project.credentials_file)
    assert (report["token_mode"], report["dir_mode"]) == (0o600, 0o700)
    assert not Path(report["token_file"]).exists()
    assert list((project.root / "tmp").iterdir()) == []
    assert project.credentials_file.read_bytes() == before
    refreshed = {e["profile"] for e in named(log, "refreshed")}
    assert refreshed == {"app", "app.other-1"}  # `unused` is not refreshed
    assert named(log, "exec_child_exited")[-1]["status"] == 0
    port = named(log, "exec_started")[0]["port"]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


@pytest.mark.parametrize(
    ("script", "expected"), [("exit 0", 0), ("exit 3", 3), ("kill -KILL $$", 128 + 9)]
)
def test_exit_status_passes_through(project: Project, script: str, expected: int) -> None:
    """The child's exit code, or 128+N when signal N killed it."""
    project.profile("app")
    project.write_config()
    proc, log = start(project, ["app"], ["sh", "-c", script])
    status, _ = finish(proc, 60)
    assert status == expected, log.read_text()[-2000:]
    assert list((project.root / "tmp").iterdir()) == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_signals_are_forwarded(project: Project, signum: signal.Signals) -> None:
    """A signal sent to exec reaches the child; exec exits 128+N as the child did."""
    project.profile("app")
    project.write_config()
    proc, log = start(project, ["app"], ["sleep", "120"])
    wait_until(lambda: named(log, "exec_child_started"), 20, "the child started")
    proc.send_signal(signum)
    status, _ = finish(proc, 30)
    assert status == 128 + signum, log.read_text()[-2000:]
    assert named(log, "exec_signal_forwarded")[0]["signal"] == signum.name
    assert list((project.root / "tmp").iterdir()) == []


def test_ignored_signals_stay_ignored(project: Project) -> None:
    """Under `nohup` (SIGHUP ignored): exec neither takes nor forwards it, and the child
    inherits the ignoring; SIGTERM still goes through."""
    project.profile("app")
    project.write_config()
    report = project.root / "sigign"
    script = (
        f"grep ^SigIgn: /proc/$$/status > {report}.tmp; mv {report}.tmp {report}; exec sleep 120"
    )
    proc, log = start(project, ["app"], ["sh", "-c", script], prefix=[*DEFAULT_SIGNALS, "nohup"])
    wait_until(report.exists, 20, "the child's report of what it ignores")
    proc.send_signal(signal.SIGHUP)  # discarded at once: ignored and not blocked
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    status, _ = finish(proc, 30)
    assert status == 128 + signal.SIGTERM, log.read_text()[-2000:]
    ignored = int(report.read_text().split()[1], 16)
    assert ignored & (1 << (signal.SIGHUP - 1)), report.read_text()
    assert [e["signal"] for e in named(log, "exec_signal_forwarded")] == ["SIGTERM"]


def test_permanent_failure_runs_nothing(project: Project) -> None:
    """AccessDenied on the first refresh: exit 1 with the code and its hint, no child."""
    project.profile("app")
    project.write_config()
    project.sts.proxy.fail("AccessDenied", when={"Action": "AssumeRole"})
    marker = project.root / "ran"
    proc, log = start(project, ["app"], ["touch", str(marker)])
    status, _ = finish(proc, 60)
    text = log.read_text()
    assert status == 1, text[-2000:]
    assert "credfresh: exec: app: AccessDenied (permanent)" in text
    assert "hint: the role's trust policy must name the caller" in text
    assert not marker.exists()
    assert named(log, "exec_start_failed")[0]["reason"] == "permanent_error"
    assert list((project.root / "tmp").iterdir()) == []


def test_start_timeout_bounds_transient_failures(project: Project) -> None:
    """Throttled without end: exec gives up after --start-timeout, exit 1, no child."""
    project.profile("app")
    project.write_config()
    project.sts.proxy.fail("Throttling", when={"Action": "AssumeRole"})
    marker = project.root / "ran"
    command = ["--start-timeout", "2s", "--", "touch", str(marker)]
    proc, log = start(project, ["app"], command)
    status, _ = finish(proc, 60)
    text = log.read_text()
    assert status == 1, text[-2000:]
    assert "credfresh: exec: app: no credentials within 2s; last error Throttling" in text
    assert not marker.exists()
    assert named(log, "exec_start_failed")[0]["reason"] == "start_timeout"
    assert list((project.root / "tmp").iterdir()) == []


def test_unknown_profile_is_a_usage_error(project: Project) -> None:
    """A name not in the config: exit 2 before anything starts."""
    project.profile("app")
    project.write_config()
    proc, log = start(project, ["nope"], ["true"])
    status, _ = finish(proc, 30)
    assert status == 2
    assert "--profile nope: not in the config" in log.read_text()
