"""Shared fixtures: the development STS, a per-test project layout, and the secrets guard.

The secrets guard collects every secret the development STS issued and the walkthrough
user's source secret; after each test it scans everything the test printed or logged, its
failure text, and every file registered with `leak_watch`, and fails the test (naming only
the kind of secret) when one appears.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import coverage
import pytest
import yaml

from credfresh.devsts import DevSTS, Walkthrough
from support import coverage_environ

os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
for _name in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
    os.environ.pop(_name, None)

SECRETS: dict[str, str] = {}
WATCHED: list[Path] = []
TEXTS: list[str] = []
SEEN: list[str] = []  # every captured output of the session, for the `whole_run` tests


def remember_secrets(sts: DevSTS) -> None:
    for issued in sts.proxy.issued():
        SECRETS[issued.secret_access_key] = "an issued secret access key"
        SECRETS[issued.session_token] = "an issued session token"
    if sts.walkthrough is not None:
        SECRETS[sts.walkthrough.secret_access_key] = "the source secret access key"


def leaks_in(text: str) -> list[str]:
    return sorted({label for secret, label in SECRETS.items() if secret and secret in text})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Move the `whole_run` tests to the end, wherever they live: they scan all other output.

    The torture tests are `unmeasured`: they time real processes and SIGKILL them.
    """
    for item in items:
        if "torture" in item.path.parts:
            item.add_marker(pytest.mark.unmeasured)
    items.sort(key=lambda item: item.get_closest_marker("whole_run") is not None)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    """Run an `unmeasured` test (setup to teardown) with coverage paused, children included.

    Tracing slows Python two-fold; a test whose promise is a timing keeps its real speed.
    """
    cov = coverage.Coverage.current()
    if cov is None or item.get_closest_marker("unmeasured") is None:
        return (yield)
    saved = os.environ.pop("COVERAGE_PROCESS_CONFIG", None)
    cov.stop()
    try:
        return (yield)
    finally:
        cov.start()
        if saved is not None:
            os.environ["COVERAGE_PROCESS_CONFIG"] = saved


@pytest.fixture(scope="session")
def sts_server() -> Iterator[DevSTS]:
    with DevSTS(mode="moto") as sts:
        sts.setup_walkthrough()
        yield sts
        remember_secrets(sts)


@pytest.fixture
def sts(sts_server: DevSTS) -> Iterator[DevSTS]:
    """The session's moto-backed development STS, with faults and records reset per test."""
    sts_server.reset()
    yield sts_server
    remember_secrets(sts_server)
    sts_server.reset()


@pytest.fixture
def leak_watch() -> Any:
    """Register a file or a text whose content the secrets guard scans after the test."""

    def watch(item: Path | str) -> None:
        if isinstance(item, Path):
            WATCHED.append(item)
        else:
            TEXTS.append(item)

    return watch


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when != "teardown":
        return report
    texts = [content for _, content in report.sections]
    texts.extend(TEXTS)
    for path in WATCHED:
        try:
            texts.append(path.read_text(errors="replace"))
        except OSError:
            continue
    TEXTS.clear()
    WATCHED.clear()
    SEEN.extend(texts)
    found = sorted({label for text in texts for label in leaks_in(text)})
    if found and report.passed:
        report.outcome = "failed"
        report.longrepr = f"secrets guard: {', '.join(found)} appeared in the test's output"
    return report


@dataclass
class Project:
    """A config, credentials file and environment in a temp dir, pointed at the dev STS."""

    root: Path
    sts: DevSTS
    walkthrough: Walkthrough
    config_path: Path
    credentials_file: Path
    env: dict[str, str]
    document: dict[str, Any] = field(default_factory=dict)

    def write_config(self, document: dict[str, Any] | None = None) -> Path:
        if document is not None:
            self.document = document
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(self.document, sort_keys=False))
        tmp.chmod(0o600)
        tmp.replace(self.config_path)
        return self.config_path

    def profile(self, name: str, **keys: Any) -> None:
        self.document.setdefault("profiles", {})[name] = {
            "role_arn": self.walkthrough.role_arn,
            **keys,
        }

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "credfresh", *args, "-c", str(self.config_path)]


@pytest.fixture
def project(
    tmp_path: Path, sts: DevSTS, monkeypatch: pytest.MonkeyPatch, leak_watch: Any
) -> Project:
    """A project whose source profile `base` holds the walkthrough user's long-term key."""
    walkthrough = sts.walkthrough
    assert walkthrough is not None
    aws = tmp_path / "aws"
    aws.mkdir(mode=0o700)
    credentials = aws / "credentials"
    credentials.write_text(
        "# managed by hand\n[base]\n"
        f"aws_access_key_id = {walkthrough.access_key_id}\n"
        f"aws_secret_access_key = {walkthrough.secret_access_key}\n"
    )
    credentials.chmod(0o600)
    aws_config = aws / "config"
    aws_config.write_text("")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "AWS_SHARED_CREDENTIALS_FILE": str(credentials),
        "AWS_CONFIG_FILE": str(aws_config),
        "AWS_EC2_METADATA_DISABLED": "true",
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        **coverage_environ(),
    }
    for key in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "HOME"):
        monkeypatch.setenv(key, env[key])
    config_path = tmp_path / "credfresh.yaml"
    project = Project(
        root=tmp_path,
        sts=sts,
        walkthrough=walkthrough,
        config_path=config_path,
        credentials_file=credentials,
        env=env,
        document={
            "credentials_file": str(credentials),
            "state_file": str(tmp_path / "state" / "state.json"),
            "owner": "test",
            "defaults": {"region": "us-east-1", "source_profile": "base", "duration_seconds": 900},
            "sts": {"endpoint_url": sts.url, "timeout": "3s"},
            "retry": {"initial": "1s", "max": "5s"},
            "profiles": {},
        },
    )
    leak_watch(tmp_path / "state" / "state.json")
    return project
