"""A root daemon trusts no file another user could edit or swap: at start and at every reload.

The attacker is uid 65534 (through `setpriv`), the daemon a real `credfresh run` as root
against the development STS.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import Project
from credfresh.credfile import store as credfile
from credfresh.outputs.container import TokenFile
from support.daemon_runner import DaemonProcess, env_with

NOBODY = 65534
AS_NOBODY = ("setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups")
APPEND_STDIN = "import sys; open(sys.argv[1], 'a').write(sys.stdin.read())"
RELOAD_EVENTS = ("config_rejected", "config_reloaded")


@pytest.fixture
def shared() -> Iterator[Path]:
    """A root-owned 0755 directory right under /tmp, so uid 65534 can reach what is in it."""
    base = Path(tempfile.mkdtemp(prefix="credfresh-sec-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base)


def as_nobody(script: str, *args: str) -> None:
    """Run a shell script as the attacker; it must succeed (the attack is possible)."""
    subprocess.run([*AS_NOBODY, "/bin/sh", "-c", script, "sh", *args], check=True, timeout=20)


def plant(text: str, target: Path) -> None:
    """As the attacker: write `text` beside `target`, then rename it over `target`."""
    temp = target.with_name(".planted.tmp")
    as_nobody('printf %s "$1" > "$2" && mv -f "$2" "$3"', text, str(temp), str(target))


def reloads(proc: DaemonProcess) -> list[dict[str, Any]]:
    return [e for e in proc.events() if e.get("event") in RELOAD_EVENTS]


def after_next_reload(proc: DaemonProcess, action: Callable[[], None]) -> dict[str, Any]:
    """Do `action` and return the reload outcome (rejected or applied) that follows it."""
    seen = len(reloads(proc))
    action()
    proc.wait_for(lambda _: len(reloads(proc)) > seen, 20, "the reload after the attack")
    return reloads(proc)[seen]


def reloads_until_naming(
    proc: DaemonProcess, action: Callable[[], None], fix: str
) -> list[dict[str, Any]]:
    """Do `action`; every reload outcome from then until one whose errors name `fix`."""
    seen = len(reloads(proc))
    action()

    def named(_: object) -> bool:
        return any(fix in e for o in reloads(proc)[seen:] for e in o.get("errors", []))

    proc.wait_for(named, 20, f"a rejection naming {fix!r}")
    return reloads(proc)[seen:]


def managed(path: Path) -> set[str]:
    return set(credfile.read_managed(path, "test").managed)


class TestRenamedInConfig:
    """The attack of the report: a config renamed in, then an invalid one so that
    `config_rejected` fires at once through the planted `alerts.command`."""

    def run_attack(
        self,
        project: Project,
        tmp_path: Path,
        config: Path,
        *,
        expose: Callable[[], None],
        step: Callable[[DaemonProcess, int, str], None],
        fix: str,
        unsafe_path: Path,
    ) -> None:
        project.sts.proxy.lifetime = 6
        admin_sink = tmp_path / "admin-alerts.jsonl"
        marker = tmp_path / "attacker-ran"
        project.document["alerts"] = {
            "command": [sys.executable, "-c", APPEND_STDIN, str(admin_sink)]
        }
        project.profile("app")
        config.write_text(yaml.safe_dump(project.document))
        config.chmod(0o600)
        evil = json.loads(json.dumps(project.document))
        evil["alerts"] = {"command": ["/bin/sh", "-c", f"id > {marker}; cat >> {marker}"]}
        evil["profiles"]["evil"] = dict(evil["profiles"]["app"])
        with DaemonProcess(config, env_with(project.env), tmp_path / "d.log") as proc:
            proc.wait_event("ready", 20)
            expose()
            outcomes = [
                after_next_reload(proc, functools.partial(step, proc, index, yaml.safe_dump(doc)))
                for index, doc in enumerate([evil, {**evil, "bogus": 1}])
            ]
            for outcome in outcomes:
                assert outcome["event"] == "config_rejected", outcome
                assert outcome["error_code"] == "config_unsafe"
                assert any(str(unsafe_path) in e and fix in e for e in outcome["errors"]), outcome

            def alerted(_: object) -> bool:
                sent = admin_sink.read_text() if admin_sink.exists() else ""
                return marker.exists() or "config_rejected" in sent

            proc.wait_for(alerted, 20, "the config_rejected alert")
            assert not marker.exists(), "the planted alerts.command ran as root"
            refreshed = len(proc.named("refreshed"))
            proc.wait_event("refreshed", 20, count=refreshed + 1)
            assert managed(project.credentials_file) == {"app"}
            assert not proc.named("config_reloaded")

    def test_inotify_rename_into_writable_directory(
        self, project: Project, tmp_path: Path, shared: Path
    ) -> None:
        """The config's directory becomes writable by others; a renamed-in config is refused
        (`config_unsafe`, naming the directory and `chmod go-w`); the old one stays."""
        conf = shared / "conf"
        conf.mkdir(mode=0o755)
        config = conf / "credfresh.yaml"
        self.run_attack(
            project,
            tmp_path,
            config,
            expose=lambda: conf.chmod(0o777),
            step=lambda _proc, _index, text: plant(text, config),
            fix=f"chmod go-w {conf}",
            unsafe_path=conf,
        )

    def test_sighup_after_parent_directory_swap(
        self, project: Project, tmp_path: Path, shared: Path
    ) -> None:
        """The config's grandparent belongs to the attacker, who swaps in a whole directory
        (inotify watches the old one and sees nothing); SIGHUP refuses it (`chown root`)."""
        conf = shared / "conf"
        conf.mkdir(mode=0o755)
        config = conf / "credfresh.yaml"

        def step(proc: DaemonProcess, index: int, text: str) -> None:
            if index == 0:
                as_nobody(
                    'mv "$1/conf" "$1/old" && mkdir "$1/conf" && printf %s "$2" > "$1/conf/$3"',
                    str(shared),
                    text,
                    config.name,
                )
            else:
                plant(text, config)
            proc.signal(signal.SIGHUP)

        self.run_attack(
            project,
            tmp_path,
            config,
            expose=lambda: os.chown(shared, NOBODY, NOBODY),
            step=step,
            fix=f"chown root {shared}",
            unsafe_path=shared,
        )


def exits_unsafe(project: Project, tmp_path: Path, named: Path, fix: str) -> None:
    """`credfresh run` as root refuses the config: exit 2, the path and the fix, no STS call."""
    project.write_config()
    proc = DaemonProcess(project.config_path, env_with(project.env), tmp_path / "d.log")
    assert proc.proc.wait(20) == 2
    proc.stop()
    (event,) = proc.named("config_unsafe")
    assert any(str(named) in e and fix in e for e in event["errors"]), event
    assert project.sts.proxy.calls == 0


def alert_program(tmp_path: Path, problem: str) -> Path:
    program = tmp_path / "bin" / "page-oncall"
    program.parent.mkdir(mode=0o755)
    program.write_text(f"#!/bin/sh\nid > {tmp_path / 'alert-ran'}\n")
    program.chmod(0o755)
    if problem == "other-writable":
        program.chmod(0o757)
    elif problem == "group-writable":
        program.chmod(0o775)
    else:
        os.chown(program, NOBODY, NOBODY)
    return program


class TestAlertCommand:
    @pytest.mark.parametrize("problem", ["group-writable", "other-owner"])
    def test_refused_at_start(self, project: Project, tmp_path: Path, problem: str) -> None:
        """`alerts.command[0]` group-writable or another user's: exit 2 with the fix."""
        program = alert_program(tmp_path, problem)
        project.document["alerts"] = {"command": [str(program)]}
        project.profile("app")
        fix = "chmod go-w" if problem == "group-writable" else f"chown 0 {program}"
        exits_unsafe(project, tmp_path, program, fix)

    def test_refused_on_reload(self, project: Project, tmp_path: Path) -> None:
        """A reload naming an other-writable alert program, then a token file others can read:
        each refused (`config_unsafe`), the program never runs, the old config stays."""
        project.profile("app")
        project.write_config()
        program = alert_program(tmp_path, "other-writable")
        token = tmp_path / "endpoint-token"
        token.write_text("endpoint-token-for-tests")
        token.chmod(0o644)
        with DaemonProcess(project.config_path, env_with(project.env), tmp_path / "d.log") as proc:
            proc.wait_event("ready", 20)
            for key, value, fix in [
                ("alerts", {"command": [str(program)]}, f"chmod go-w {program}"),
                (
                    "container_credentials",
                    {"listen": "127.0.0.1:0", "token_file": str(token)},
                    f"chmod o-r {token}",
                ),
            ]:
                document = {**project.document, key: value}
                # One edit is seen twice (inotify and SIGHUP): the previous edit's second
                # rejection may come after this one's action, so wait for the one naming
                # this edit's fix, and check every outcome since.
                outcomes = reloads_until_naming(
                    proc, functools.partial(signal_after, proc, project, document), fix
                )
                for outcome in outcomes:
                    assert outcome["event"] == "config_rejected", outcome
                    assert outcome["error_code"] == "config_unsafe"
            assert not (tmp_path / "alert-ran").exists()
            assert not proc.named("config_reloaded")


def signal_after(proc: DaemonProcess, project: Project, document: dict[str, Any]) -> None:
    tmp = project.config_path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(document))
    tmp.chmod(0o600)
    os.replace(tmp, project.config_path)
    proc.signal(signal.SIGHUP)


class TestTokenFile:
    @pytest.mark.parametrize("problem", ["readable-by-others", "symlink-out"])
    def test_refused_at_start(self, project: Project, tmp_path: Path, problem: str) -> None:
        """As root, a token file others can read, or a symlink out of its directory: exit 2."""
        (tmp_path / "secrets").mkdir(mode=0o700)
        token = tmp_path / "secrets" / "token"
        elsewhere = tmp_path / "elsewhere-token"
        elsewhere.write_text("endpoint-token-for-tests")
        elsewhere.chmod(0o600)
        if problem == "readable-by-others":
            shutil.copy(elsewhere, token)
            token.chmod(0o644)
            fix = f"chmod o-r {token}"
        else:
            token.symlink_to(elsewhere)
            fix = "outside its directory"
        project.document["container_credentials"] = {
            "listen": "127.0.0.1:0",
            "token_file": str(token),
        }
        project.profile("app")
        exits_unsafe(project, tmp_path, token, fix)

    def test_symlink_out_is_not_followed(self, tmp_path: Path) -> None:
        """The endpoint never takes its token from a file outside the token file's directory,
        while a Secret's `token -> ..data/token` works."""
        outside = tmp_path / "outside"
        outside.write_text("chosen-by-someone-else")
        (tmp_path / "mount").mkdir()
        token = tmp_path / "mount" / "token"
        token.symlink_to(outside)
        log = Recorder()
        tokens = TokenFile(token, log)
        assert tokens.digest() is None
        assert (
            "container_token_unusable",
            "a symlink to a file outside its directory: not followed",
        ) in log.lines
        token.unlink()
        (tmp_path / "mount" / "..v1").mkdir()
        (tmp_path / "mount" / "..v1" / "token").write_text("in-its-directory")
        (tmp_path / "mount" / "..data").symlink_to("..v1")
        token.symlink_to("..data/token")
        assert tokens.digest() is not None


class Recorder:
    """A logger that keeps (event, reason) pairs."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, object]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.lines.append((event, kw.get("reason")))

    def warning(self, event: str, **kw: Any) -> None:
        self.lines.append((event, kw.get("reason")))
