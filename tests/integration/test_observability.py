"""Logs, alerts, health and metrics of a running daemon, end to end over loopback."""

from __future__ import annotations

import io
import itertools
import json
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import urllib3
from prometheus_client.parser import text_string_to_metric_families

from conftest import Project
from credfresh.credentials import parse_time
from credfresh.observe.logs import Logging, Redactor
from support.daemon_runner import DaemonProcess, env_with
from support.waiting import wait_until

README = Path("README.md").read_text()


class Webhook:
    """A loopback webhook receiver that keeps every JSON body it gets."""

    def __init__(self) -> None:
        bodies: list[dict[str, Any]] = []
        self.bodies = bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                bodies.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def of(self, profile: str, alert: str = "sts_error") -> list[dict[str, Any]]:
        return [b for b in self.bodies if b["profile"] == profile and b["alert"] == alert]


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


def command_sink(path: Path) -> list[str]:
    script = (
        "import sys; open(sys.argv[1], 'a').write(sys.stdin.read().replace(chr(10), ' ') + chr(10))"
    )
    return [sys.executable, "-c", script, str(path)]


def command_bodies(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def start(project: Project, tmp_path: Path, name: str = "d.log", **env: str) -> DaemonProcess:
    return DaemonProcess(
        project.config_path,
        env_with(project.env, CREDFRESH_WAKEUP_INTERVAL=env.pop("wakeup", "1"), **env),
        tmp_path / name,
    )


def session(name: str) -> Any:
    return lambda r: r.params.get("RoleSessionName") == f"credfresh-{name}"


class TestAlertLifecycle:
    @pytest.mark.unmeasured  # a timing promise: traced, the daemon is twice as slow
    def test_fire_repeat_escalate_resolve_across_restart(
        self, project: Project, tmp_path: Path, webhook: Webhook, leak_watch: Any
    ) -> None:
        """One FIRE, no early repeat, escalation on expiry, one RESOLVE, across a restart."""
        sink_file = tmp_path / "command-alerts.jsonl"
        leak_watch(sink_file)
        project.sts.proxy.lifetime = 8
        project.document["retry"] = {"initial": "1s", "max": "1s"}
        project.document["alerts"] = {
            "webhook_url": webhook.url,
            "command": command_sink(sink_file),
            "repeat": "3s",
            "after": "1s",
            "expiry_warning": "1s",
        }
        project.profile("app")
        project.write_config()
        with start(project, tmp_path) as proc:
            proc.wait_event("ready", 10)
            project.sts.proxy.fail("AccessDenied", when=session("app"))
            wait_until(lambda: len(webhook.of("app")) >= 1, 8, "the first alert")
            first = webhook.of("app")[0]
            assert first["status"] == "firing"
            assert first["severity"] == "warning"
            assert first["error_code"] == "AccessDenied"
            assert "trust policy" in first["hint"]
            assert first["alert_id"].endswith(":sts_error:app")
            wait_until(
                lambda: any(b["severity"] == "critical" for b in webhook.of("app")),
                10,
                "the escalation when the credentials on disk expire",
            )
        fired_before_restart = len(webhook.of("app"))
        with start(project, tmp_path, name="d2.log") as proc:
            proc.wait_event("started", 10)
            project.sts.proxy.clear_faults()
            wait_until(
                lambda: any(b["status"] == "resolved" for b in webhook.of("app")),
                8,
                "the resolve after recovery",
            )
        resolved = [b for b in webhook.of("app") if b["status"] == "resolved"]
        assert len(resolved) == 1
        lifecycles: dict[str, list[str]] = {}
        for body in webhook.of("app"):
            lifecycles.setdefault(body["alert_id"], []).append(body["transition"])
        sts_error = lifecycles.pop(first["alert_id"])
        # A restart never re-fires: the one lifecycle runs on, fired once, across both runs.
        assert fired_before_restart >= 2
        assert sts_error[0] == "fired"
        assert sts_error[-1] == "resolved"
        assert "escalated" in sts_error
        assert set(sts_error[1:-1]) <= {"repeated", "escalated"}, sts_error
        sent = [
            (b["transition"], parse_time(b["time"]))
            for b in webhook.of("app")
            if b["alert_id"] == first["alert_id"]
        ]
        for (_, before), (transition, at) in itertools.pairwise(sent):
            # No repeat before `repeat` (3 s); the body's time has whole seconds.
            assert transition != "repeated" or (at - before).total_seconds() >= 2, sent
        for transitions in lifecycles.values():
            assert transitions[0] == "fired"
            assert transitions.count("fired") == 1, transitions
        by_command = [b for b in command_bodies(sink_file) if b["profile"] == "app"]
        assert [b["status"] for b in by_command] == [b["status"] for b in webhook.of("app")]
        leak_watch(json.dumps(webhook.bodies))

    def test_each_error_code_fires_once(
        self, project: Project, tmp_path: Path, webhook: Webhook
    ) -> None:
        """Every STS error code gives exactly one firing alert carrying its code."""
        codes = [
            "AccessDenied",
            "MalformedPolicyDocument",
            "PackedPolicyTooLarge",
            "RegionDisabledException",
            "ExpiredToken",
            "InvalidClientTokenId",
            "SignatureDoesNotMatch",
            "ValidationError",
            "Throttling",
        ]
        project.document["retry"] = {"initial": "0.5s", "max": "1s"}
        project.document["alerts"] = {"webhook_url": webhook.url, "after": "1s", "repeat": "1h"}
        for code in codes:
            name = code.lower()
            project.profile(name)
            project.sts.proxy.fail(code, when=session(name))
        project.write_config()
        with start(project, tmp_path) as proc:
            wait_until(lambda: all(webhook.of(code.lower()) for code in codes), 10, "every alert")
            time.sleep(2)
            proc.stop()
        for code in codes:
            alerts = webhook.of(code.lower())
            assert len(alerts) == 1, (code, alerts)
            assert alerts[0]["error_code"] == code


class TestSlowSinks:
    def test_stuck_sinks_delay_no_refresh(self, project: Project, tmp_path: Path) -> None:
        """A webhook that never answers and a command that sleeps delay no refresh."""
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        project.sts.proxy.lifetime = 4
        project.document["retry"] = {"initial": "0.5s", "max": "1s"}
        project.document["alerts"] = {
            "webhook_url": f"http://127.0.0.1:{port}/never",
            "command": [sys.executable, "-c", "import time; time.sleep(3600)"],
        }
        project.profile("broken")
        project.profile("healthy")
        project.write_config()
        project.sts.proxy.fail("AccessDenied", when=session("broken"))
        try:
            with start(project, tmp_path) as proc:
                proc.wait_event("refresh_failed", 10, count=3)
                time.sleep(6)
                refreshed = [e for e in proc.named("refreshed") if e["profile"] == "healthy"]
        finally:
            silent.close()
        assert len(refreshed) >= 3
        assert not [e for e in proc.named("credentials_expired") if e["profile"] == "healthy"]


class TestHealthAndMetrics:
    def test_endpoints_and_textfile(
        self, project: Project, tmp_path: Path, leak_watch: Any
    ) -> None:
        """/healthz, /readyz (all, one, unknown) and /metrics answer; the textfile parses."""
        textfile = tmp_path / "metrics" / "credfresh.prom"
        textfile.parent.mkdir()
        leak_watch(textfile)
        project.document["http"] = {"listen": "127.0.0.1:0"}
        project.document["metrics"] = {"textfile": str(textfile)}
        project.profile("a", duration_seconds=3600)
        project.profile("b", duration_seconds=3600)
        project.write_config()
        http = urllib3.PoolManager()
        with start(project, tmp_path, wakeup="30") as proc:
            proc.wait_event("ready", 10)
            (listening,) = proc.named("http_listening")
            base = f"http://127.0.0.1:{listening['port']}"
            assert http.request("GET", f"{base}/healthz").status == 200
            ready = http.request("GET", f"{base}/readyz")
            assert ready.status == 200
            assert http.request("GET", f"{base}/readyz?profile=a").status == 200
            assert http.request("GET", f"{base}/readyz?profile=zz").status == 404
            metrics = http.request("GET", f"{base}/metrics").data.decode()
            leak_watch(metrics)
            names = {f.name for f in text_string_to_metric_families(metrics)}
            assert {"credfresh_profiles", "credfresh_refresh", "credfresh_file_writes"} <= names
            assert "_created" not in metrics
            assert 'credfresh_refresh_total{profile="a",result="success"} 1.0' in metrics
            wait_until(textfile.exists, 5, "the textfile")
            families = list(text_string_to_metric_families(textfile.read_text()))
            assert any(f.name == "credfresh_credentials_expiry_timestamp_seconds" for f in families)

    def test_readyz_503_lists_failing(self, project: Project, tmp_path: Path) -> None:
        """/readyz is 503 with the failing profiles while one has no credentials."""
        project.document["http"] = {"listen": "127.0.0.1:0"}
        project.profile("ok", duration_seconds=3600)
        project.profile("denied", duration_seconds=3600)
        project.write_config()
        project.sts.proxy.fail("AccessDenied", when=session("denied"))
        with start(project, tmp_path, wakeup="30") as proc:
            proc.wait_event("ready", 10)
            port = proc.named("http_listening")[0]["port"]
            answer = urllib3.PoolManager().request("GET", f"http://127.0.0.1:{port}/readyz")
            assert answer.status == 503
            assert "denied" in json.loads(answer.data)["failing"]


class TestLogs:
    def test_redaction_everywhere(self) -> None:
        """Secrets in exception text, in locals of a failing function and nested values vanish."""
        secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"
        token = "IQoJb3JpZ2luX2VjE" + "A" * 300
        stream = io.StringIO()
        redactor = Redactor()
        redactor.add(secret, token)
        logging = Logging(stream, fmt="json", redactor=redactor)
        logging.install()
        log = logging.get()

        def failing(session_token: str) -> None:
            local_secret = secret  # noqa: F841 - a local that must not be rendered
            raise RuntimeError(f"refresh broke with {session_token}")

        try:
            try:
                failing(token)
            except RuntimeError:
                log.exception("refresh_failed", profile="p")
            log.info("refreshed", details={"innocent": [{"deep": secret}]}, note=f"x {token} y")
            log.info("keys", aws_access_key_id="ASIAABCDEFGHIJKLMNOP")
        finally:
            logging.uninstall()
        output = stream.getvalue()
        assert secret not in output
        assert token not in output
        assert "local_secret" not in output
        assert "ASIA...MNOP" in output
        for line in output.splitlines():
            event = json.loads(line)
            assert event["timestamp"].endswith("Z")
            assert "level" in event

    def test_stdlib_logs_are_json(self) -> None:
        """botocore's stdlib logs come out as JSON lines through the same pipeline."""
        import logging as std

        stream = io.StringIO()
        logging = Logging(stream, fmt="json")
        logging.install()
        try:
            std.getLogger("botocore.credentials").info("Found credentials in shared file")
            std.getLogger("botocore.credentials").warning("Refreshing temporary credentials")
            std.getLogger("botocore.endpoint").debug("signed headers would be here")
        finally:
            logging.uninstall()
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert [line["event"] for line in lines] == ["Refreshing temporary credentials"]
        assert lines[0]["logger"] == "botocore.credentials"

    def test_every_event_is_documented(self) -> None:
        """Each event name the code logs has a row in the README's event table."""
        names: set[str] = set()
        for path in Path("daemon/credfresh").rglob("*.py"):
            if "devsts" in path.parts:
                continue
            text = path.read_text()
            names |= set(
                re.findall(
                    r"\.(?:debug|info|warning|error|critical|exception)\(\s*\"([a-z_]+)\"", text
                )
            )
            names |= set(re.findall(r"(?:_emit\(on_event, |on_event\()\"([a-z_]+)\"", text))
            names |= set(re.findall(r"\blog\(\s*\"([a-z_]+)\"", text))
        missing = sorted(n for n in names if f"| `{n}` |" not in README)
        assert not missing
        for required in (
            "started",
            "ready",
            "refreshed",
            "refresh_failed",
            "file_written",
            "section_restored",
            "config_reloaded",
            "config_rejected",
            "alert_sent",
            "alert_failed",
            "clock_skew",
            "stopping",
        ):
            assert f"| `{required}` |" in README


class TestRedactorScale:
    def test_many_known_secrets_are_found_quickly(self) -> None:
        """With thousands of known secrets, each one is still redacted, by lookup not scan."""
        import secrets as random_secrets

        redactor = Redactor()
        known = [random_secrets.token_hex(20).lower() for _ in range(2000)]
        redactor.add(*known)
        text = f"error: key={known[1234]} and token {known[7]}/tail"
        cleaned = redactor.text(text)
        assert known[1234] not in cleaned
        assert known[7] not in cleaned
        redactor.forget(known[7])
        assert known[7] in redactor.text(known[7] + " ")
