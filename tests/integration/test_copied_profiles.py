"""Copied profiles end to end: a credential_process source and the default chain (a container
credentials endpoint, as Pod Identity serves), each copied by `credfresh run` into the file
and used for a real GetCallerIdentity; and the loop and no-expiry refusals."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest

from conftest import Project
from credfresh.config.model import Profile, StsSettings
from credfresh.context import SystemClock
from credfresh.credfile import store as credfile
from credfresh.sources.classify import SourceError
from credfresh.sources.copy import CopySource, is_credfresh_section
from support.daemon_runner import DaemonProcess, env_with

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
        aws_session_token=section.session_token,
    )
    return str(client.get_caller_identity()["Arn"])


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

    def test_static_keys_are_refused_and_loops_detected(self, project: Project) -> None:
        source = copier(project)
        with pytest.raises(SourceError) as refused:
            source.fetch(copy_profile("copied", "base"))
        assert refused.value.failure.code == "copy_without_expiry"
        assert not is_credfresh_section(str(project.credentials_file), "base")
        with project.credentials_file.open("a") as handle:
            handle.write("[mine]\naws_access_key_id = A\nx_credfresh_owner = test\n")
        assert is_credfresh_section(str(project.credentials_file), "mine")

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
