"""The sidecar pattern with real containers: `make image-test`, after `make image`.

Two containers of localhost/credfresh:dev on the host network (the development STS listens on
the host's loopback): credfresh as the image runs it (read-only root, uid 10001, no
capabilities, no new privileges, the config a ConfigMap-shaped directory mounted read-only,
a web-identity token as IRSA mounts it), and an app that reads the shared `.aws` directory
read-only with a new boto3 Session per unit of work, while the STS issues short credentials
and refuses expired ones. Not in `make test`: tests/image is outside pytest's testpaths.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import Project
from support import TESTS_DIR
from support.daemon_runner import DaemonProcess
from support.engine import (
    IMAGE,
    UID,
    ConfigMapDir,
    engine,
    healthcheck,
    image_exists,
    remove,
    run_argv,
    tmpfs,
    volume,
)
from support.waiting import wait_until

pytestmark = pytest.mark.image

LIFETIME = 10  # seconds each issued credential lives: a refresh about every 5 s
CYCLES = 3
PORT = 9464  # the port the image's HEALTHCHECK asks
GRACE = 10  # `stop`'s grace period (seconds) before SIGKILL
TOKEN_DIR = "/var/run/secrets/eks.amazonaws.com/serviceaccount"


@pytest.fixture
def names() -> Iterator[list[str]]:
    """Container names to remove after the test, whatever happened to them."""
    started: list[str] = []
    yield started
    for name in started:
        remove(name)


@pytest.fixture(autouse=True)
def _image() -> None:
    assert image_exists(), f"{IMAGE} is not built: run `make image` first"
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", PORT)) != 0, f"port {PORT} is in use on the host"


def config(project: Project, profiles: list[str]) -> str:
    document = {
        "credentials_file": "/home/credfresh/.aws/credentials",
        "state_file": "/var/lib/credfresh/state.json",
        "owner": "pod-test",
        "http": {"listen": f"127.0.0.1:{PORT}"},
        "defaults": {"region": "us-east-1", "duration_seconds": 3600},
        "sts": {"endpoint_url": project.sts.url, "timeout": "3s"},
        "retry": {"initial": "1s", "max": "2s"},
        "profiles": {
            name: {
                "role_arn": project.walkthrough.web_identity_role_arn,
                "role_session_name": name,
                "web_identity_token_file": f"{TOKEN_DIR}/token",
            }
            for name in profiles
        },
    }
    return yaml.safe_dump(document, sort_keys=False)


def readyz() -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/readyz", timeout=2) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def sections(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return {line.strip()[1:-1] for line in path.read_text().splitlines() if line.startswith("[")}


def written(proc: DaemonProcess, profile: str) -> list[dict[str, Any]]:
    return [e for e in proc.named("file_written") if profile in (e.get("profiles") or ())]


def app_lines(app: DaemonProcess) -> list[dict[str, Any]]:
    return [e for e in app.events() if "key" in e or "error" in e]


def stop(name: str, proc: DaemonProcess) -> tuple[int, float]:
    """`stop` with the grace period; the container's exit code and the seconds taken."""
    started = time.monotonic()
    done = engine("stop", "--time", str(GRACE), name, timeout=GRACE + 30)
    assert done.returncode == 0, done.stderr
    code = proc.proc.wait(timeout=30)
    return code, time.monotonic() - started


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    """The pod's volumes as host directories: `.aws` (the emptyDir both containers share) owned
    by the image's uid, the service-account token, and the config's ConfigMap directory."""
    pod = tmp_path / "pod"  # the project fixture has its own aws/ in tmp_path
    pod.mkdir()
    aws = pod / "aws"
    aws.mkdir(mode=0o700)
    os.chown(aws, UID, UID)
    token_dir = pod / "serviceaccount"
    token_dir.mkdir(mode=0o755)
    (token_dir / "token").write_text("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJwb2QifQ.c2lnbmF0dXJl\n")
    (token_dir / "token").chmod(0o644)
    return {"aws": aws, "token": token_dir, "config": pod / "config"}


def test_pod_pattern(
    project: Project,
    layout: dict[str, Path],
    names: list[str],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """Ready only with credentials on disk, healthy, zero app errors over three refresh cycles,
    a ConfigMap swap adds a profile without a restart, and `stop` exits 0 in time."""
    sts = project.sts
    sts.proxy.lifetime = LIFETIME
    credentials = layout["aws"] / "credentials"
    config_map = ConfigMapDir(layout["config"])
    config_map.publish({"config.yaml": config(project, ["app"])})
    # STS refuses (transiently) until the test has seen /readyz say "not ready".
    held = sts.proxy.fail("Throttling", when={"Action": "AssumeRoleWithWebIdentity"})

    sidecar = f"credfresh-{uuid.uuid4().hex[:8]}"
    names.append(sidecar)
    stack = contextlib.ExitStack()
    request.addfinalizer(stack.close)
    proc = DaemonProcess(
        Path("/etc/credfresh/config.yaml"),
        {"PATH": os.environ.get("PATH", "")},
        tmp_path / "credfresh.log",
        command=run_argv(
            sidecar,
            *volume(layout["config"], "/etc/credfresh", read_only=True),
            *volume(layout["aws"], "/home/credfresh/.aws"),
            *volume(layout["token"], TOKEN_DIR, read_only=True),
            *tmpfs("/var/lib/credfresh"),
        ),
    )
    stack.enter_context(proc)
    proc.wait_event("started", 30)
    wait_until(lambda: held.hits >= 1 and readyz() == 503, 30, "/readyz 503 while STS refuses")
    assert "app" not in sections(credentials)
    sts.proxy.remove_fault(held)
    wait_until(lambda: readyz() == 200, 30, "/readyz 200")
    assert "app" in sections(credentials), "ready before the credentials were in the volume"
    health = healthcheck(sidecar)
    assert health.returncode == 0, health.stdout + health.stderr

    app_name = f"app-{uuid.uuid4().hex[:8]}"
    names.append(app_name)
    app = DaemonProcess(
        Path("/dev/null"),
        {"PATH": os.environ.get("PATH", "")},
        tmp_path / "app.log",
        command=run_argv(
            app_name,
            *volume(layout["aws"], "/aws", read_only=True),
            *volume(TESTS_DIR / "image" / "app_loop.py", "/app/loop.py", read_only=True),
            "--env",
            "AWS_SHARED_CREDENTIALS_FILE=/aws/credentials",
            "--env",
            "AWS_PROFILE=app",
            "--env",
            "AWS_EC2_METADATA_DISABLED=true",
            "--env",
            "HOME=/tmp",
            "--entrypoint",
            "/opt/credfresh/bin/python",
            args=("/app/loop.py", sts.url),
        ),
    )
    stack.enter_context(app)
    wait_until(lambda: app_lines(app), 60, "the app's first unit of work")
    before = len(written(proc, "app"))

    # A ConfigMap update while the app runs: the kubelet's `..data` swap adds a profile.
    config_map.publish({"config.yaml": config(project, ["app", "extra"])})
    proc.wait_for(lambda _: bool(written(proc, "extra")), 30, "the added profile on disk")
    assert "extra" in sections(credentials)

    proc.wait_for(
        lambda _: len(written(proc, "app")) >= before + CYCLES, CYCLES * LIFETIME, "refreshes"
    )
    seen = len(app_lines(app))
    wait_until(lambda: len(app_lines(app)) > seen + 2, 30, "the app working after them")
    code, _ = stop(app_name, app)
    assert code == 0
    lines = app_lines(app)
    errors = [line["error"] for line in lines if "error" in line]
    assert errors == [], f"{len(errors)} of {len(lines)} units failed: {sorted(set(errors))}"
    keys = {line["key"] for line in lines}
    assert len(keys) >= CYCLES, f"the app used {len(keys)} credentials over {CYCLES} refreshes"
    calls = [r for r in sts.proxy.requests() if r.action == "GetCallerIdentity"]
    assert len(calls) >= len(lines)
    assert all(r.outcome == "forwarded" for r in calls), {r.outcome for r in calls}
    assert len(proc.named("started")) == 1, "the config swap restarted credfresh"
    reloaded = proc.named("config_reloaded")
    assert any("extra" in (e.get("added") or ()) for e in reloaded), reloaded

    code, took = stop(sidecar, proc)
    assert code == 0
    assert took < GRACE, f"stop took {took:.1f} s: SIGKILL after the grace period"
    assert [e.get("clean") for e in proc.named("stopped")] == [True]
