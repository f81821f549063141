"""Copied profiles end to end: a credential_process source and the default chain (a container
credentials endpoint, as Pod Identity serves), each copied by `credfresh run` into the file
and used for a real GetCallerIdentity; long-term keys copied as a static set that follows a
rotation of the source key; and the loop refusal."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest

import conftest
from conftest import Project
from credfresh.config.model import Profile, StsSettings
from credfresh.context import SystemClock
from credfresh.credfile import store as credfile
from credfresh.devsts.service import DevSTS
from credfresh.devsts.walkthrough import SETUP_ACCESS_KEY_ID, SETUP_SECRET
from credfresh.sources.classify import SourceError
from credfresh.sources.copy import CopySource, is_credfresh_section
from support.daemon_runner import DaemonProcess, env_with
from support.waiting import wait_until

PROCESS = """\
import json, sys
import boto3
client = boto3.client(
    "sts", endpoint_url=sys.argv[1], region_name="us-east-1",
    aws_access_key_id=sys.argv[2], aws_secret_access_key=sys.argv[3],
)
creds = client.assume_role(RoleArn=sys.argv[4], RoleSessionName="from-process")["Credentials"]
print(json.dumps({
    "Version": 1,
    "AccessKeyId": creds["AccessKeyId"],
    "SecretAccessKey": creds["SecretAccessKey"],
    "SessionToken": creds["SessionToken"],
    "Expiration": creds["Expiration"].isoformat(),
}))
"""


def assumed(project: Project, session: str) -> dict[str, Any]:
    client = boto3.client(
        "sts",
        endpoint_url=project.sts.url,
        region_name="us-east-1",
        aws_access_key_id=project.walkthrough.access_key_id,
        aws_secret_access_key=project.walkthrough.secret_access_key,
    )
    found = client.assume_role(RoleArn=project.walkthrough.role_arn, RoleSessionName=session)
    return dict(found["Credentials"])


def caller(project: Project, section: Any) -> str:
    client = boto3.client(
        "sts",
        endpoint_url=project.sts.url,
        region_name="us-east-1",
        aws_access_key_id=section.access_key_id,
        aws_secret_access_key=section.secret_access_key,
        aws_session_token=section.session_token or None,
    )
    return str(client.get_caller_identity()["Arn"])


CONSUMER = """\
import sys
import boto3
session = boto3.session.Session(profile_name=sys.argv[1])
client = session.client("sts", endpoint_url=sys.argv[2], region_name="us-east-1")
frozen = session.get_credentials().get_frozen_credentials()
print(client.get_caller_identity()["Arn"], frozen.token is None)
"""


@pytest.fixture
def process_profile(project: Project) -> str:
    """`[profile proc]` in the AWS config: a credential_process that assumes a role."""
    script = project.root / "helper.py"
    script.write_text(PROCESS)
    args = [
        sys.executable,
        str(script),
        project.sts.url,
        project.walkthrough.access_key_id,
        project.walkthrough.secret_access_key,
        project.walkthrough.role_arn,
    ]
    Path(project.env["AWS_CONFIG_FILE"]).write_text(
        "[profile proc]\ncredential_process = " + " ".join(args) + "\n"
    )
    return "proc"


class ContainerEndpoint(ThreadingHTTPServer):
    """The container credentials endpoint botocore's default chain asks: fresh role
    credentials from the development STS at every call."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self.calls = 0
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: ContainerEndpoint

    def do_GET(self) -> None:
        self.server.calls += 1
        creds = assumed(self.server.project, f"pod-{self.server.calls}")
        body = json.dumps(
            {
                "AccessKeyId": creds["AccessKeyId"],
                "SecretAccessKey": creds["SecretAccessKey"],
                "Token": creds["SessionToken"],
                "Expiration": creds["Expiration"].strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        return


@pytest.fixture
def container_endpoint(project: Project) -> Iterator[ContainerEndpoint]:
    server = ContainerEndpoint(project)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def copy_profile(name: str, source: str) -> Profile:
    return Profile(
        name=name,
        role_arn="",
        refresh_before=None,
        role_session_name="unused",
        duration_seconds=3600,
        region="us-east-1",
        source_profile=source,
        copy=True,
    )


def copier(project: Project, timeout: float = 10.0) -> CopySource:
    return CopySource(
        StsSettings(timeout=timeout),
        credentials_file=str(project.credentials_file),
        clock=SystemClock(),
    )


class TestSource:
    def test_process_source_is_copied(self, project: Project, process_profile: str) -> None:
        source = copier(project, 20.0)
        first = source.fetch(copy_profile("copied", process_profile)).credentials
        second = source.fetch(copy_profile("copied", process_profile)).credentials
        assert first.access_key_id != second.access_key_id  # each fetch asks the source
        assert first.session_token
        assert "from-process" in caller(project, first)

    def test_static_keys_are_copied_and_watched(self, project: Project) -> None:
        """Long-term keys give a static set; only an edit of the user's sections (not of
        credfresh's own) counts as a change; a credfresh section is a loop."""
        source = copier(project)
        profile = copy_profile("copied", "base")
        creds = source.fetch(profile).credentials
        assert creds.static
        assert (creds.access_key_id, creds.session_token) == (
            project.walkthrough.access_key_id,
            "",
        )
        assert not source.source_changed(profile)
        with project.credentials_file.open("a") as handle:
            handle.write(
                "\n[mine]\naws_access_key_id = A\naws_secret_access_key = B\n"
                "x_credfresh_owner = test\n"
            )
        assert not source.source_changed(profile)
        assert is_credfresh_section(str(project.credentials_file), "mine")
        assert not is_credfresh_section(str(project.credentials_file), "base")
        Path(project.env["AWS_CONFIG_FILE"]).write_text("[profile other]\nregion = eu-west-1\n")
        assert source.source_changed(profile)
        with pytest.raises(SourceError) as refused:
            source.fetch(copy_profile("copied", "mine"))
        assert refused.value.failure.code == "copy_loop"

    def test_missing_profile(self, project: Project) -> None:
        source = copier(project)
        with pytest.raises(SourceError) as refused:
            source.fetch(copy_profile("copied", "nowhere"))
        assert refused.value.failure.code == "source_profile_not_found"
        assert refused.value.failure.permanent


class TestDaemon:
    def test_process_and_default_chain_copies_and_a_role_on_top(
        self,
        project: Project,
        tmp_path: Path,
        process_profile: str,
        container_endpoint: ContainerEndpoint,
    ) -> None:
        project.document["sts"]["timeout"] = "20s"
        project.document["profiles"] = {
            "from-process": {"source_profile": process_profile},
            "from-chain": {"source_profile": "default-chain"},
            "on-top": {
                "role_arn": project.walkthrough.chained_role_arn,
                "source_profile": "from-chain",
            },
        }
        project.write_config()
        port = container_endpoint.server_address[1]
        env = env_with(
            project.env,
            AWS_CONTAINER_CREDENTIALS_FULL_URI=f"http://127.0.0.1:{port}/creds",
        )
        with DaemonProcess(project.config_path, env, tmp_path / "daemon.log") as proc:
            proc.wait_event("ready", 60)
            view = credfile.read_managed(project.credentials_file, "test").managed
            assert proc.stop() == 0
        assert set(view) == {"from-process", "from-chain", "on-top"}
        assert "from-process" in caller(project, view["from-process"])
        assert "pod-" in caller(project, view["from-chain"])
        assert "chained" in caller(project, view["on-top"])
        assert container_endpoint.calls >= 1


class TestStaticCopy:
    def test_static_keys_follow_the_source_without_a_restart(
        self, project: Project, sts: DevSTS, tmp_path: Path
    ) -> None:
        """A copy of an AWS profile holding an IAM user's long-term key: its section has the
        keys only and works for GetCallerIdentity; credential-process prints no SessionToken
        or Expiration and a real boto3 credential_process consumer uses it; the container
        endpoint refuses it; /readyz counts it ready; after the key is rotated in the AWS
        file the copy follows."""
        original = sts.walkthrough
        own = sts.setup_walkthrough(prefix="static-copy")
        sts.walkthrough = original
        conftest.SECRETS[own.secret_access_key] = "the static source secret"
        iam = boto3.client(
            "iam",
            endpoint_url=sts.upstream_url,
            region_name="us-east-1",
            aws_access_key_id=SETUP_ACCESS_KEY_ID,
            aws_secret_access_key=SETUP_SECRET,
        )
        keys = f"[keys]\naws_access_key_id = {own.access_key_id}\n"
        keys += f"aws_secret_access_key = {own.secret_access_key}\n"
        with project.credentials_file.open("a") as handle:
            handle.write("\n" + keys)
        token = tmp_path / "endpoint-token"
        token.write_text("s3cr3t-endpoint-token-for-tests")
        token.chmod(0o600)
        project.document["container_credentials"] = {
            "listen": "127.0.0.1:0",
            "token_file": str(token),
        }
        project.document["http"] = {"listen": "127.0.0.1:0"}
        project.document["profiles"] = {"copy": {"source_profile": "keys"}}
        project.write_config()
        config = str(project.config_path)
        command = f"{sys.executable} -m credfresh credential-process copy -c {config}"
        Path(project.env["AWS_CONFIG_FILE"]).write_text(
            f"[profile consumer]\ncredential_process = {command}\n"
        )
        env = env_with(project.env, CREDFRESH_WAKEUP_INTERVAL="1")
        with DaemonProcess(project.config_path, env, tmp_path / "daemon.log") as proc:
            proc.wait_event("ready", 30)
            section = credfile.read_managed(project.credentials_file, "test").managed["copy"]
            assert section.static
            assert section.access_key_id == own.access_key_id
            assert caller(project, section) == own.user_arn
            text = project.credentials_file.read_text()
            copied = text[text.index("[copy]") :]
            assert "aws_session_token" not in copied
            assert "x_security_token_expires" not in copied
            printed = subprocess.run(
                [sys.executable, "-m", "credfresh", "credential-process", "copy", "-c", config],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            assert sorted(json.loads(printed)) == ["AccessKeyId", "SecretAccessKey", "Version"]
            script = tmp_path / "consumer.py"
            script.write_text(CONSUMER)
            used = subprocess.run(
                [sys.executable, str(script), "consumer", project.sts.url],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            assert used == [own.user_arn, "True"]
            health = proc.named("http_listening")[0]["port"]
            with urllib.request.urlopen(
                f"http://127.0.0.1:{health}/readyz?profile=copy", timeout=10
            ) as ready:
                assert json.loads(ready.read()) == {
                    "profile": "copy",
                    "ready": True,
                    "expires_at": None,
                }
            port = proc.named("endpoint_listening")[0]["port"]
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/credentials/copy",
                headers={"Authorization": "s3cr3t-endpoint-token-for-tests"},
            )
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=10)
            assert refused.value.code == 503
            assert json.loads(refused.value.read())["reason"] == "static_keys"

            new_key = iam.create_access_key(UserName=own.user_name)["AccessKey"]
            conftest.SECRETS[new_key["SecretAccessKey"]] = "the rotated static secret"
            iam.delete_access_key(UserName=own.user_name, AccessKeyId=own.access_key_id)
            text = project.credentials_file.read_text()
            rotated = keys.replace(own.access_key_id, new_key["AccessKeyId"]).replace(
                own.secret_access_key, new_key["SecretAccessKey"]
            )
            staged = project.credentials_file.with_name("credentials.rotating")
            staged.write_text(text.replace(keys, rotated))  # as a tool that rewrites it would:
            staged.chmod(0o600)
            staged.replace(project.credentials_file)  # whole, never half-written for a reader

            def followed() -> bool:
                view = credfile.read_managed(project.credentials_file, "test").managed
                return bool(view["copy"].access_key_id == new_key["AccessKeyId"])

            wait_until(followed, 15, "the copy holds the rotated key")
            section = credfile.read_managed(project.credentials_file, "test").managed["copy"]
            assert caller(project, section) == own.user_arn
            refreshed = proc.named("refreshed")
            assert [e["expires_at"] for e in refreshed] == ["never", "never"]
            assert not [e for e in proc.events() if "expir" in str(e.get("event"))]
            assert proc.stop() == 0
