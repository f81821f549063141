"""The three ways a batch job consumes a profile, across refreshes, against `credfresh run`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import Project
from support import TESTS_DIR
from support.daemon_runner import DaemonProcess, env_with

CONSUMER = str(TESTS_DIR / "support" / "consumer.py")
LIFETIME = 5
RUN_FOR = 16


def test_three_ways_survive_refreshes(project: Project, tmp_path: Path) -> None:
    """A Session per call, credential_process and the container endpoint all keep working."""
    token = tmp_path / "endpoint-token"
    token.write_text("s3cr3t-endpoint-token-for-tests")  # botocore refuses a trailing newline
    token.chmod(0o600)
    project.sts.proxy.lifetime = LIFETIME
    project.document["container_credentials"] = {
        "listen": "127.0.0.1:0",
        "token_file": str(token),
    }
    for mode in ("session", "process", "container"):
        project.profile(f"app-{mode}", role_session_name=f"batch-{mode}")
    project.write_config()
    aws_config = Path(project.env["AWS_CONFIG_FILE"])
    command = (
        f"{sys.executable} -m credfresh credential-process app-process -c {project.config_path}"
    )
    aws_config.write_text(f"[profile app-process-live]\ncredential_process = {command}\n")
    with DaemonProcess(project.config_path, env_with(project.env), tmp_path / "d.log") as proc:
        proc.wait_event("ready", 10)
        port = proc.named("endpoint_listening")[0]["port"]
        base = {**project.env, "PATH": os.environ.get("PATH", "")}
        jobs = {
            "session": ("app-session", base),
            "process": ("app-process-live", base),
            "container": (
                "",
                {
                    **base,
                    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
                    "AWS_CONFIG_FILE": "/dev/null",
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI": (
                        f"http://127.0.0.1:{port}/v1/credentials/app-container"
                    ),
                    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(token),
                },
            ),
        }
        running = {
            mode: subprocess.Popen(
                [sys.executable, CONSUMER, mode, profile, project.sts.url, str(RUN_FOR)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for mode, (profile, env) in jobs.items()
        }
        results = {}
        for mode, child in running.items():
            out, err = child.communicate(timeout=RUN_FOR + 30)
            assert child.returncode == 0, err[-2000:]
            results[mode] = json.loads(out.strip().splitlines()[-1])
        refreshes = {
            e["profile"] for e in proc.named("refreshed") if e["profile"].startswith("app-")
        }
    assert refreshes == {"app-session", "app-process", "app-container"}
    issued = project.sts.proxy.issued()
    for mode, result in results.items():
        assert result["failures"] == {}, (mode, result)
        assert result["calls"] >= 20
        assert all(f"/batch-{mode}" in arn for arn in result["arns"]), result["arns"]
        used = {
            r.access_key_id
            for r in project.sts.proxy.requests(action="GetCallerIdentity")
            if r.access_key_id
            and (found := project.sts.proxy.issued_for(r.access_key_id)) is not None
            and (found.principal_arn or "").endswith(f"/batch-{mode}")
        }
        assert len(used) >= 3, (mode, len(used))
    assert len(issued) >= 9
