"""`credfresh refresh`: the running daemon refreshes now and answers once the new credentials
are on disk; an unknown profile, an STS refusal, no daemon and another uid all exit 1."""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import Project
from credfresh.credentials import format_expiry
from credfresh.credfile import store as credfile
from credfresh.process.control_wire import socket_path
from support.daemon_runner import DaemonProcess

NOBODY = 65534
AS_NOBODY = ("setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups")
LINE = re.compile(r"refreshed (\w+): expires (\S+Z) \(in (59m|1h00m)\)")


def run(
    project: Project, *args: str, config: Path | None = None, **options: Any
) -> subprocess.CompletedProcess[str]:
    argv = project.argv("refresh", *args)
    if config is not None:
        argv[-1] = str(config)
    return subprocess.run(
        [*options.pop("prefix", ()), *argv],
        capture_output=True,
        text=True,
        env=options.pop("env", project.env),
        timeout=90,
        check=False,
    )


def keys(project: Project) -> dict[str, str]:
    managed = credfile.read_managed(project.credentials_file, "test").managed
    return {name: creds.access_key_id for name, creds in managed.items()}


def session(name: str) -> Any:
    return lambda record: record.params.get("RoleSessionName") == f"credfresh-{name}"


@pytest.fixture
def daemon(project: Project, tmp_path: Path) -> Iterator[DaemonProcess]:
    """A daemon keeping two profiles with an hour's credentials (none due during a test)."""
    project.profile("app", duration_seconds=3600)
    project.profile("other", duration_seconds=3600)
    project.write_config()
    with DaemonProcess(project.config_path, project.env, tmp_path / "daemon.log") as proc:
        proc.wait_event("ready", 30)
        yield proc


class TestThroughTheDaemon:
    def test_all_then_one_land_before_the_answer(
        self, project: Project, daemon: DaemonProcess
    ) -> None:
        """Without names every profile is refreshed, with one only it; the keys on disk have
        changed when the command returns, and the lines are `once`'s."""
        sock = socket_path(project.config_path.parent / "state" / "state.json")
        assert stat.S_IMODE(sock.lstat().st_mode) == 0o600
        before = keys(project)
        result = run(project)
        assert result.returncode == 0, result.stderr
        after = keys(project)
        assert after["app"] != before["app"]
        assert after["other"] != before["other"]
        found = [LINE.fullmatch(line) for line in result.stdout.splitlines()]
        assert [m.group(1) for m in found if m] == ["app", "other"], result.stdout
        managed = credfile.read_managed(project.credentials_file, "test").managed
        assert [m.group(2) for m in found if m] == [
            format_expiry(managed[name].expiration) for name in ("app", "other")
        ]
        result = run(project, "app", "--wait", "20s")
        assert result.returncode == 0, result.stderr
        assert LINE.fullmatch(result.stdout.strip()), result.stdout
        again = keys(project)
        assert again["app"] != after["app"]
        assert again["other"] == after["other"]
        requested = daemon.named("refresh_requested")
        assert [e["profiles"] for e in requested] == [["app", "other"], ["app"]]

    def test_unknown_profile_is_named(self, project: Project, daemon: DaemonProcess) -> None:
        """Unknown names refuse the whole request, naming each; nothing is refreshed."""
        before = keys(project)
        result = run(project, "app", "nope", "ghost")
        assert result.returncode == 1
        assert "unknown_profile" in result.stderr
        assert "nope, ghost" in result.stderr
        assert keys(project) == before

    def test_sts_refusal_names_code_and_hint(self, project: Project, daemon: DaemonProcess) -> None:
        """STS refusing one profile: exit 1, its code and hint; the other one still lands."""
        project.sts.proxy.fail("AccessDenied", when=session("app"))
        before = keys(project)
        result = run(project)
        assert result.returncode == 1
        assert "failed app: AccessDenied (permanent):" in result.stderr
        assert "  hint: the role's trust policy must name the caller" in result.stderr
        assert re.match(r"refreshed other: ", result.stdout), result.stdout
        after = keys(project)
        assert after["app"] == before["app"]
        assert after["other"] != before["other"]


def test_no_daemon_points_to_once(project: Project) -> None:
    """No daemon (no socket, then a stale socket nobody listens on): exit 1 naming `once`,
    without loading boto3 or pydantic."""
    project.profile("app")
    project.write_config()
    result = run(project)
    assert result.returncode == 1
    assert "no credfresh daemon is running" in result.stderr
    assert "credfresh once" in result.stderr
    sock_path = socket_path(project.config_path.parent / "state" / "state.json")
    sock_path.parent.mkdir(mode=0o700)
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(sock_path))  # bound, never listening: as a crashed daemon leaves it
    result = run(project)
    assert result.returncode == 1
    assert "credfresh once" in result.stderr
    code = (
        "import sys; from credfresh.cli import main; "
        f"rc = main(['refresh', '-c', {str(project.config_path)!r}]); "
        "bad = [m for m in ('boto3', 'botocore', 'pydantic') if m in sys.modules]; "
        "sys.stderr.write(repr((rc, bad)))"
    )
    light = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=project.env, check=False
    )
    assert light.stderr.strip().endswith("(1, [])"), light.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the client as another uid")
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv")
def test_another_uid_cannot_ask(project: Project, tmp_path: Path) -> None:
    """uid 65534, who can read the config and reach the socket's directory, is refused by the
    socket's 0600; the daemon refreshes nothing."""
    shared = Path(tempfile.mkdtemp(prefix="credfresh-refresh-", dir="/tmp"))
    try:
        shared.chmod(0o755)
        (shared / "state").mkdir(mode=0o755)
        project.profile("app", duration_seconds=3600)
        project.document["state_file"] = str(shared / "state" / "state.json")
        config = shared / "credfresh.yaml"
        config.write_text(yaml.safe_dump(project.document, sort_keys=False))
        config.chmod(0o644)
        env = {k: v for k, v in project.env.items() if not k.startswith("COVERAGE_")}
        env["HOME"] = str(shared)
        with DaemonProcess(config, project.env, tmp_path / "daemon.log") as proc:
            proc.wait_event("ready", 30)
            before = keys(project)
            result = run(project, config=config, env=env, prefix=AS_NOBODY)
            assert result.returncode == 1, result.stderr
            assert "only the daemon's own user" in result.stderr
            assert keys(project) == before
            assert not proc.named("refresh_requested")
            assert run(project, config=config).returncode == 0  # its own user may
    finally:
        shutil.rmtree(shared, ignore_errors=True)
