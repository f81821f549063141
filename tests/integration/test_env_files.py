"""`env_file`: `credfresh run` writes a profile's env file after the credentials file, 0600,
and rewrites it at each refresh; what it holds works for a real GetCallerIdentity."""

from __future__ import annotations

import stat
from pathlib import Path

import boto3

from conftest import Project
from credfresh.credfile import store as credfile
from support.daemon_runner import DaemonProcess
from support.env_readers import docker_reader, systemd_reader


def test_written_after_the_file_and_rewritten_at_each_refresh(
    project: Project, tmp_path: Path
) -> None:
    env_file = tmp_path / "env" / "app.env"
    env_file.parent.mkdir()
    project.sts.proxy.lifetime = 20
    project.profile("app", env_file=str(env_file))
    project.profile("other")
    project.write_config()
    with DaemonProcess(project.config_path, project.env, tmp_path / "daemon.log") as proc:
        proc.wait_event("ready", 30)
        proc.wait_for(
            lambda events: (
                sum(
                    e.get("event") == "env_file_written" and e.get("profile") == "app"
                    for e in events
                )
                >= 2
            ),
            60,
            "the env file written at start and again after a refresh",
        )
        assert proc.stop() == 0
    events = proc.named("env_file_written") + proc.named("file_written")
    written = proc.named("env_file_written")
    assert len(written) >= 2  # another refresh may land before the stop
    assert {e["profile"] for e in written} == {"app"}  # `other` has no env file
    first_file = min(e["timestamp"] for e in events if e.get("event") == "file_written")
    assert first_file <= proc.named("env_file_written")[0]["timestamp"]
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    text = env_file.read_text()
    values = docker_reader(text)
    assert values == systemd_reader(text)
    section = credfile.read_managed(project.credentials_file, "test").managed["app"]
    assert values["AWS_ACCESS_KEY_ID"] == section.access_key_id
    assert values["AWS_REGION"] == "us-east-1"
    client = boto3.client(
        "sts",
        endpoint_url=project.sts.url,
        region_name=values["AWS_REGION"],
        aws_access_key_id=values["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=values["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=values["AWS_SESSION_TOKEN"],
    )
    assert values["AWS_ACCOUNT_ID"] in client.get_caller_identity()["Arn"]
