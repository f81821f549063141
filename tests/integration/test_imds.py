"""The IMDSv2 endpoint of `credfresh run`: botocore's own instance-metadata provider refreshes
through it across refreshes, with real STS calls; v1, forwarded requests and other uids are
refused."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import botocore.session
import pytest
from botocore.credentials import InstanceMetadataProvider
from botocore.utils import InstanceMetadataFetcher

from conftest import Project
from support.daemon_runner import DaemonProcess
from support.waiting import wait_until

LIFETIME = 6
NOBODY = 65534
TOKEN = "/latest/api/token"
CREDS = "/latest/meta-data/iam/security-credentials/"
#: botocore stretches instance credentials that expire within its refresh window (10 min
#: plus 2..10 min of jitter) to now + that much ("static stability"), which would keep keys
#: of a few seconds for minutes. A window of minus the jitter's maximum turns that off, so
#: the provider refreshes by `Expiration` as it does for real six-hour instance credentials.
NO_STRETCH = -600
#: A client in another uid's process: the status of a token PUT, on stdout.
OTHER_UID_CLIENT = """
import sys, urllib.error, urllib.request
request = urllib.request.Request(
    sys.argv[1], method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"}
)
try:
    print(urllib.request.urlopen(request, timeout=10).status)
except urllib.error.HTTPError as error:
    print(error.code)
"""


def status_of(request: urllib.request.Request) -> int:
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def answer_ttls(
    port: int, method: str, path: str, headers: dict[str, str]
) -> tuple[int, bytes, set[int]]:
    """One request's status and body, and the IP TTLs of its answer's data packets, seen on a
    raw socket (root) as they arrived."""
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP) as raw:
        raw.settimeout(0.2)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request(method, path, headers=headers)
        assert connection.sock is not None
        ours = connection.sock.getsockname()[1]
        answer = connection.getresponse()
        status, body = answer.status, answer.read()
        connection.close()
        ttls: set[int] = set()
        while True:
            try:
                packet = raw.recv(65535)
            except TimeoutError:
                return status, body, ttls
            header = (packet[0] & 0x0F) * 4
            source, target = struct.unpack("!HH", packet[header : header + 4])
            data_offset = (packet[header + 12] >> 4) * 4
            if (source, target) == (port, ours) and len(packet) > header + data_offset:
                ttls.add(packet[8])


def put_token(base: str, **headers: str) -> urllib.request.Request:
    wanted = {"X-aws-ec2-metadata-token-ttl-seconds": "60", **headers}
    return urllib.request.Request(base + TOKEN, method="PUT", headers=wanted)


@pytest.mark.skipif(os.geteuid() != 0, reason="setpriv to another uid needs root")
def test_botocore_refreshes_through_it_and_others_are_refused(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.sts.proxy.lifetime = LIFETIME
    project.profile("app", role_session_name="imds-app")
    project.document["imds"] = {"listen": "127.0.0.1:0", "profile": "app", "hop_limit": 2}
    project.write_config()
    with DaemonProcess(project.config_path, project.env, tmp_path / "daemon.log") as proc:
        proc.wait_event("ready", 10)
        listening = proc.named("imds_listening")[0]
        assert listening["allow_uids"] == [os.geteuid()]
        base = f"http://127.0.0.1:{listening['port']}"
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", base + "/")
        session = botocore.session.Session()
        fetcher = InstanceMetadataFetcher(
            timeout=5,
            num_attempts=2,
            config={
                "ec2_metadata_service_endpoint": session.get_config_variable(
                    "ec2_metadata_service_endpoint"
                ),
                "ec2_metadata_v1_disabled": True,
                "ec2_credential_refresh_window": NO_STRETCH,
            },
            env={},  # the test process has AWS_EC2_METADATA_DISABLED=true
        )
        credentials = InstanceMetadataProvider(iam_role_fetcher=fetcher).load()
        assert credentials is not None
        keys: list[str] = []
        failures: list[str] = []
        arns: set[str] = set()

        def call() -> bool:
            frozen = credentials.get_frozen_credentials()
            client = boto3.client(
                "sts",
                endpoint_url=project.sts.url,
                region_name="us-east-1",
                aws_access_key_id=frozen.access_key,
                aws_secret_access_key=frozen.secret_key,
                aws_session_token=frozen.token,
            )
            try:
                arns.add(client.get_caller_identity()["Arn"])
            except Exception as exc:  # counted, and named in the verdict
                failures.append(type(exc).__name__)
            assert frozen.access_key is not None
            if frozen.access_key not in keys:
                keys.append(frozen.access_key)
            return len(keys) >= 4

        wait_until(call, 4 * LIFETIME, "four access keys through IMDS", interval=0.2)
        assert failures == []
        assert all(arn.endswith("/imds-app") for arn in arns), arns
        assert all(project.sts.proxy.issued_for(key) is not None for key in keys)

        port = int(listening["port"])
        status, body, ttls = answer_ttls(
            port, "PUT", TOKEN, {"X-aws-ec2-metadata-token-ttl-seconds": "60"}
        )
        assert (status, ttls) == (200, {2})  # hop_limit: 2
        token = body.decode()
        status, body, ttls = answer_ttls(
            port, "GET", CREDS + "app", {"X-aws-ec2-metadata-token": token}
        )
        assert status == 200
        assert ttls
        assert 2 not in ttls  # only the token answer is hop-limited
        document = json.loads(body)
        assert (document["Code"], document["Type"]) == ("Success", "AWS-HMAC")
        assert document["AccountId"] in next(iter(arns))

        assert status_of(urllib.request.Request(base + CREDS + "app")) == 401  # IMDSv1
        assert status_of(put_token(base, **{"X-Forwarded-For": "10.0.0.1"})) == 403
        forwarded_get = urllib.request.Request(
            base + CREDS + "app",
            headers={"X-aws-ec2-metadata-token": token, "X-Forwarded-For": "10.0.0.1"},
        )
        assert status_of(forwarded_get) == 403
        assert status_of(urllib.request.Request(base + "/latest/user-data")) == 404

        other = subprocess.run(
            [
                *("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"),
                *(sys.executable, "-I", "-c", OTHER_UID_CLIENT, base + TOKEN),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert other.stdout.strip() == "403", other.stderr[-2000:]
        refused = proc.wait_for(
            lambda events: any(
                e.get("event") == "imds_refused" and e.get("uid") == NOBODY for e in events
            ),
            10,
            "imds_refused for uid 65534",
        )
        assert proc.stop() == 0
    line = next(e for e in refused if e.get("event") == "imds_refused")
    assert set(line) - {"timestamp", "level", "event", "logger", "suppressed"} == {"uid"}
    reasons = {e["reason"] for e in proc.named("imds_request_refused")}
    assert {"missing_token", "forwarded"} <= reasons
    assert len(proc.named("refreshed")) >= 4


#: In a network namespace of its own with 169.254.169.254 on `lo`: botocore with no setting.
LINK_LOCAL = """
import os, secrets
from datetime import UTC, datetime, timedelta
from botocore.credentials import InstanceMetadataProvider
from botocore.utils import InstanceMetadataFetcher
from credfresh.credentials import Credentials
from credfresh.outputs.imds import ImdsEndpoint

now = datetime.now(UTC)
key = "ASIA" + secrets.token_hex(8).upper()
later = now + timedelta(hours=6)
creds = Credentials(key, secrets.token_hex(20), secrets.token_hex(40), later, now)
endpoint = ImdsEndpoint("169.254.169.254:80", "app", current=lambda name: creds,
                        allow_uids=[os.geteuid()], poll_interval=0.05)
endpoint.start()
fetcher = InstanceMetadataFetcher(timeout=5, env={})
found = InstanceMetadataProvider(iam_role_fetcher=fetcher).load()
print(fetcher.get_base_url(), found is not None and found.access_key == key)
endpoint.stop()
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"),
    reason="a network namespace and port 80 need root, unshare and ip",
)
def test_link_local_address_in_a_network_namespace() -> None:
    """`ip addr add 169.254.169.254/32 dev lo` as the README says, then botocore's default."""
    script = (
        "ip link set lo up && ip addr add 169.254.169.254/32 dev lo && "
        f'exec "{sys.executable}" -c "$0"'
    )
    done = subprocess.run(
        ["unshare", "--net", "sh", "-c", script, LINK_LOCAL],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0 and done.stderr.startswith("unshare: "):
        pytest.skip("no network namespace here: " + done.stderr.strip()[:200])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["http://169.254.169.254/", "True"], done.stderr[-2000:]
