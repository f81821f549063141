"""Hot reload, systemd notifications and the live demo, against real processes."""

from __future__ import annotations

import io
import json
import os
import signal
import time
from pathlib import Path

import yaml

from conftest import Project
from credfresh.cli import main
from credfresh.credentials import Credentials
from credfresh.credfile import store
from support import children
from support.daemon_runner import DaemonProcess, env_with
from support.notify_listener import NotifyListener
from support.waiting import wait_until


def managed(path: Path) -> dict[str, Credentials]:
    return dict(store.read_managed(path, "test").managed)


def start(project: Project, tmp_path: Path, **env: str) -> DaemonProcess:
    proc = DaemonProcess(project.config_path, env_with(project.env, **env), tmp_path / "d.log")
    proc.wait_event("ready", 10)
    return proc


class TestReload:
    def test_the_poll_validates_only_what_changed(self, project: Project, tmp_path: Path) -> None:
        """The poll (every 0.2 s here) forks no validating child while the config and its
        policy file keep their bytes, and reloads when only the policy file changed (inotify
        reports the config's own name only). The 2 s watch is for an absence: a loaded machine
        that polls less often makes it weaker, never red; the reload then proves the poll ran."""
        policy = project.config_path.parent / "policy.json"
        statement = {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}
        policy.write_text(json.dumps({"Version": "2012-10-17", "Statement": [statement]}))
        project.profile("a", duration_seconds=3600, policy_file="policy.json")
        project.write_config()
        with start(project, tmp_path, CREDFRESH_CONFIG_POLL_INTERVAL="0.2") as proc:
            forked: list[str] = []
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                forked += children(proc.pid)
                time.sleep(0.005)
            assert forked == [], "an unchanged config was validated again"
            statement["Action"] = "s3:PutObject"
            policy.write_text(json.dumps({"Version": "2012-10-17", "Statement": [statement]}))
            (event,) = proc.wait_event("config_reloaded", 10)
            assert event["reason"] == "poll"
            assert event["changed"] == ["a"]

    def test_add_remove_change(self, project: Project, tmp_path: Path) -> None:
        """Added profiles appear, removed ones vanish, changed ones are refreshed: <= 2 s."""
        project.profile("keep", duration_seconds=3600)
        project.profile("gone", duration_seconds=3600)
        project.profile("edit", duration_seconds=3600)
        project.write_config()
        with start(project, tmp_path) as proc:
            before = managed(project.credentials_file)
            del project.document["profiles"]["gone"]
            project.profile("new", duration_seconds=3600)
            project.document["profiles"]["edit"]["role_session_name"] = "edited"
            project.write_config()
            wait_until(
                lambda: (
                    set(managed(project.credentials_file)) == {"keep", "new", "edit"}
                    and managed(project.credentials_file)["edit"].access_key_id
                    != before["edit"].access_key_id
                ),
                2,
                "add, remove and change on disk",
            )
            after = managed(project.credentials_file)
            assert after["keep"].access_key_id == before["keep"].access_key_id
            (event,) = proc.named("config_reloaded")
            assert event["added"] == ["new"]
            assert event["removed"] == ["gone"]
            assert event["changed"] == ["edit"]

    def test_policy_file_content_change(self, project: Project, tmp_path: Path) -> None:
        """Editing a policy file the config names refreshes that profile."""
        policy = tmp_path / "policy.json"
        policy.write_text('{"Version": "2012-10-17", "Statement": []}')
        project.profile("p", duration_seconds=3600, policy_file=str(policy))
        project.write_config()
        with start(project, tmp_path) as proc:
            first = managed(project.credentials_file)["p"]
            policy.write_text(
                '{"Version": "2012-10-17", "Statement": [{"Effect": "Deny", '
                '"Action": "s3:*", "Resource": "*"}]}'
            )
            proc.signal(signal.SIGHUP)
            wait_until(
                lambda: managed(project.credentials_file)["p"].access_key_id != first.access_key_id,
                2,
                "the profile refreshed with the new policy",
            )

    def test_invalid_then_fixed(self, project: Project, tmp_path: Path) -> None:
        """An invalid config is rejected with all its errors; the daemon goes on; a fix applies."""
        project.sts.proxy.lifetime = 6
        project.profile("a")
        project.write_config()
        with start(project, tmp_path) as proc:
            good = dict(project.document)
            project.config_path.write_text(
                yaml.safe_dump({**good, "bogus": 1, "sts": {"max_concurrency": 0}})
            )
            (rejected,) = proc.wait_event("config_rejected", 3)
            assert len(rejected["errors"]) == 2
            proc.wait_event("refreshed", 6, count=2)
            project.profile("b")
            project.write_config(good)
            wait_until(lambda: "b" in managed(project.credentials_file), 2, "the fixed config")

    def test_configmap_swap(self, project: Project, tmp_path: Path) -> None:
        """A Kubernetes ConfigMap update (the ..data symlink swap) is seen."""
        mount = tmp_path / "configmap"
        mount.mkdir()
        project.profile("a", duration_seconds=3600)

        def publish(version: int) -> None:
            data = mount / f"..2026_11_28_{version}"
            data.mkdir()
            (data / "credfresh.yaml").write_text(yaml.safe_dump(project.document))
            (data / "credfresh.yaml").chmod(0o600)
            tmp_link = mount / "..data_tmp"
            tmp_link.symlink_to(data.name)
            tmp_link.replace(mount / "..data")

        publish(1)
        (mount / "credfresh.yaml").symlink_to("..data/credfresh.yaml")
        project.config_path = mount / "credfresh.yaml"
        with start(project, tmp_path):
            project.profile("b", duration_seconds=3600)
            publish(2)
            wait_until(lambda: "b" in managed(project.credentials_file), 2, "the new ConfigMap")

    def test_editor_rename_save_and_recreate(self, project: Project, tmp_path: Path) -> None:
        """A vim-style save (rename away, write anew) and delete + recreate are both seen."""
        project.profile("a", duration_seconds=3600)
        project.write_config()
        with start(project, tmp_path):
            backup = project.config_path.with_name("credfresh.yaml~")
            project.config_path.rename(backup)
            project.profile("b", duration_seconds=3600)
            project.config_path.write_text(yaml.safe_dump(project.document))
            project.config_path.chmod(0o600)
            backup.unlink()
            wait_until(lambda: "b" in managed(project.credentials_file), 2, "the editor save")
            project.config_path.unlink()
            time.sleep(0.2)
            project.profile("c", duration_seconds=3600)
            project.write_config()
            wait_until(lambda: "c" in managed(project.credentials_file), 2, "the recreated file")

    def test_moved_credentials_file(self, project: Project, tmp_path: Path) -> None:
        """A changed credentials_file moves the sections and removes them from the old file."""
        project.profile("a", duration_seconds=3600)
        project.write_config()
        new = tmp_path / "elsewhere" / "credentials"
        with start(project, tmp_path):
            project.document["credentials_file"] = str(new)
            project.write_config()
            wait_until(
                lambda: (
                    new.exists()
                    and "a" in managed(new)
                    and "a" not in managed(project.credentials_file)
                ),
                2,
                "the move",
            )
        assert "[base]" in project.credentials_file.read_text()
        assert oct(new.stat().st_mode & 0o777) == "0o600"


class TestSystemd:
    def test_notify_sequence(self, project: Project, tmp_path: Path) -> None:
        """READY, STATUS, RELOADING/READY on SIGHUP, WATCHDOG at its rate, STOPPING, in order."""
        project.profile("a", duration_seconds=3600)
        project.write_config()
        with NotifyListener() as listener:
            env = {**listener.environ, "WATCHDOG_USEC": "1000000"}
            proc = DaemonProcess(
                project.config_path, env_with(project.env, **env), tmp_path / "d.log"
            )
            with proc:
                listener.wait_for(lambda m: m.fields.get("READY") == "1", 10)
                began = time.monotonic()
                listener.wait_for(lambda m: "1 fresh" in m.fields.get("STATUS", ""), 15)
                listener.wait_for(lambda _: pings(listener) >= 3, 10)
                proc.signal(signal.SIGHUP)
                reloading = listener.wait_for(lambda m: m.fields.get("RELOADING") == "1", 5)
                after = next(i for i, m in enumerate(listener.messages) if m is reloading)
                listener.wait_for(
                    lambda _: any(m.fields.get("READY") for m in listener.messages[after:]), 10
                )
            listener.wait_for(lambda m: m.fields.get("STOPPING") == "1", 5)
            took = time.monotonic() - began
            kinds = [
                key
                for message in listener.messages
                for key in ("READY", "RELOADING", "STOPPING", "WATCHDOG")
                if key in message.fields
            ]
        first_ready = kinds.index("READY")
        reloading_at = kinds.index("RELOADING")
        assert first_ready < reloading_at
        assert "READY" in kinds[reloading_at:]
        assert kinds[-1] == "STOPPING"
        # WATCHDOG_USEC=1 s: a ping every 0.5 s at most (a loaded machine only sends fewer).
        assert 3 <= kinds.count("WATCHDOG") <= took / 0.5 + 3
        reload_msg = next(m for m in listener.messages if "RELOADING" in m.fields)
        assert int(reload_msg.fields["MONOTONIC_USEC"]) > 0


def pings(listener: NotifyListener) -> int:
    return sum("WATCHDOG" in m.fields for m in listener.messages)


class TestDemo:
    def test_demo_shows_refresh_reload_and_recovery(self) -> None:
        """credfresh demo runs the daemon, reloads, shows an error with its hint and recovers."""
        out, err = io.StringIO(), io.StringIO()
        env = {**os.environ, "CREDFRESH_DEMO_LIFETIME": "10"}
        code = main(["demo", "--duration", "14"], stdout=out, stderr=err, environ=env)
        text = out.getvalue()
        assert code == 0, text + err.getvalue()
        assert "GetCallerIdentity as app-chained: arn:aws:sts::" in text
        assert "config_reloaded" in text
        assert "AccessDenied" in text
        assert "trust policy" in text
        assert "recovered=True" in text
