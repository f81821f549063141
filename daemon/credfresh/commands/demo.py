"""`credfresh demo`: the real daemon against an embedded development STS, on loopback only.

The AssumeRole walkthrough (a user, a session-policy role, a chained and a web-identity role)
and a Roles Anywhere profile with a throwaway CA;
midway a hot reload and one injected STS error, to show a hint and the recovery.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import yaml

from credfresh.errors import EXIT_FAILED, EXIT_OK

if TYPE_CHECKING:
    from credfresh.context import Context
    from credfresh.devsts import DevSTS, Walkthrough

DEFAULT_LIFETIME = 60.0
FAKE_WEB_IDENTITY_TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJkZW1vIn0.ZGVtby1zaWduYXR1cmU"  # noqa: S105 - a fake, unsigned demo token


def _say(out: TextIO, text: str) -> None:
    out.write(text + "\n")
    out.flush()


class Demo:
    """One demo run: the dev STS, a temp directory, and a `credfresh run` child process."""

    def __init__(self, sts: DevSTS, root: Path, ctx: Context, lifetime: float) -> None:
        self.sts = sts
        self.root = root
        self.ctx = ctx
        self.out = ctx.out
        self.lifetime = lifetime
        self.config_path = root / "credfresh.yaml"
        self.credentials = root / "aws" / "credentials"
        self.aws_config = root / "aws" / "config"
        self.document: dict[str, Any] = {}
        self.ready = threading.Event()
        self.child: subprocess.Popen[str] | None = None
        self._relay_thread: threading.Thread | None = None

    def prepare(self, wt: Walkthrough) -> None:
        self.credentials.parent.mkdir(mode=0o700)
        fd = os.open(self.credentials, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(
                "# The walkthrough's IAM user: long-term keys, never used by programs directly.\n"
                "[demo-user]\n"
                f"aws_access_key_id = {wt.access_key_id}\n"
                f"aws_secret_access_key = {wt.secret_access_key}\n"
            )
        self.aws_config.write_text("")
        token = self.root / "web-identity-token"
        token.write_text(FAKE_WEB_IDENTITY_TOKEN + "\n")
        roles_anywhere = self._roles_anywhere(wt)
        self.document = {
            "credentials_file": str(self.credentials),
            "state_file": str(self.root / "state.json"),
            "owner": "credfresh-demo",
            "defaults": {
                "region": "us-east-1",
                "source_profile": "demo-user",
                "duration_seconds": 900,
            },
            "sts": {"endpoint_url": self.sts.url, "timeout": "5s"},
            "retry": {"initial": "1s", "max": f"{max(2, int(self.lifetime / 6))}s"},
            "profiles": {
                "app-s3": {
                    "role_arn": wt.role_arn,
                    "role_session_name": wt.chain_session_name,
                    "policy": wt.session_policy,
                },
                "app-chained": {"role_arn": wt.chained_role_arn, "source_profile": "app-s3"},
                "app-web": {
                    "role_arn": wt.web_identity_role_arn,
                    "web_identity_token_file": str(token),
                },
                "host-cert": {"roles_anywhere": roles_anywhere},
            },
        }
        self.write_config()

    def _roles_anywhere(self, wt: Walkthrough) -> dict[str, str]:
        """A throwaway CA as the trust anchor and a host certificate it issued."""
        from credfresh.devsts.pki import issue

        ca = issue("credfresh demo CA", ca=True)
        cert, key = issue("host.demo.example", issuer=ca).write(self.root / "pki", "host")
        account = wt.role_arn.split(":")[4]
        anchor = f"arn:aws:rolesanywhere:us-east-1:{account}:trust-anchor/demo-anchor"
        profile = f"arn:aws:rolesanywhere:us-east-1:{account}:profile/demo-profile"
        self.sts.proxy.roles_anywhere.add_trust_anchor(anchor, ca.pem)
        self.sts.proxy.roles_anywhere.add_profile(profile, [wt.role_arn])
        return {
            "certificate": str(cert),
            "private_key": str(key),
            "trust_anchor_arn": anchor,
            "profile_arn": profile,
            "role_arn": wt.role_arn,
            "endpoint_url": self.sts.url,
        }

    def write_config(self) -> None:
        temp = self.config_path.with_name(".credfresh.yaml.tmp")
        temp.write_text(yaml.safe_dump(self.document, sort_keys=False))
        temp.chmod(0o600)
        temp.replace(self.config_path)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in self.ctx.environ.items() if not k.startswith("AWS_")}
        env.update(
            AWS_SHARED_CREDENTIALS_FILE=str(self.credentials),
            AWS_CONFIG_FILE=str(self.aws_config),
            AWS_EC2_METADATA_DISABLED="true",
            CREDFRESH_WAKEUP_INTERVAL=str(max(2, int(self.lifetime / 10))),
            PYTHONUNBUFFERED="1",
        )
        return env

    def start_daemon(self) -> None:
        args = ("run", "-c", str(self.config_path), "--log-format", "console")
        self.child = subprocess.Popen(
            [sys.executable, "-m", "credfresh", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env(),
            start_new_session=True,
        )
        assert self.child.stdout is not None  # PIPE was asked for
        self._relay_thread = threading.Thread(
            target=self._relay, args=(self.child.stdout,), daemon=True
        )
        self._relay_thread.start()

    def _relay(self, stream: TextIO) -> None:
        for line in stream:
            _say(self.out, "  daemon | " + line.rstrip())
            if " ready " in line or line.rstrip().endswith("ready"):
                self.ready.set()

    def status_table(self) -> None:
        from credfresh.commands.status import status
        from credfresh.context import Context

        buffer = io.StringIO()
        ctx = Context(buffer, buffer, self.env(), clock=self.ctx.clock, euid=self.ctx.euid)
        status(self.config_path, [], "0s", as_json=False, ctx=ctx)
        _say(self.out, "\n" + buffer.getvalue())

    def prove(self) -> bool:
        """A real GetCallerIdentity with each profile's credentials from the file."""
        import boto3
        import botocore.session

        ok = True
        for name in self.document["profiles"]:
            core = botocore.session.Session(profile=name)
            core.set_config_variable("credentials_file", str(self.credentials))
            core.set_config_variable("config_file", str(self.aws_config))
            session = boto3.Session(botocore_session=core, region_name="us-east-1")
            try:
                arn = session.client("sts", endpoint_url=self.sts.url).get_caller_identity()["Arn"]
            except Exception as exc:  # the demo reports, never crashes
                _say(self.out, f"  GetCallerIdentity as {name}: FAILED ({type(exc).__name__})")
                ok = False
            else:
                _say(self.out, f"  GetCallerIdentity as {name}: {arn}")
        return ok

    def stop(self) -> int:
        if self.child is None:
            return 0
        if self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)
            try:
                self.child.wait(10)
            except subprocess.TimeoutExpired:
                self.child.kill()
        code = self.child.wait()
        if self._relay_thread is not None:
            self._relay_thread.join(timeout=2)
        if self.child.stdout is not None:
            self.child.stdout.close()
        return code


def _script(demo: Demo, stop: threading.Event) -> int:
    out = demo.out
    lifetime = demo.lifetime
    if not demo.ready.wait(30) or stop.is_set():
        _say(out, "credfresh did not become ready; see the daemon's lines above")
        return EXIT_FAILED
    _say(out, "\n== Every profile is on disk. The status table (`credfresh status`):")
    demo.status_table()
    _say(out, "== Proving the written credentials work:")
    ok = demo.prove()
    clock = demo.ctx.clock
    began = clock.monotonic()
    steps = [(lifetime / 3, "reload"), (lifetime / 3 + 1, "error"), (lifetime * 0.9, "status")]
    for at, step in steps:
        if stop.wait(max(0.0, at - (clock.monotonic() - began))):
            return EXIT_OK if ok else EXIT_FAILED
        if step == "reload":
            _say(out, "\n== Editing the config: adding profile app-added (watch the hot reload)")
            demo.document["profiles"]["app-added"] = {"role_arn": demo.sts.walkthrough.role_arn}  # type: ignore[union-attr]
            demo.write_config()
        elif step == "error":
            _say(
                out,
                "\n== Injecting one AccessDenied for app-s3's next refresh (watch the hint, "
                "the one alert, and its resolution once the fix is on disk)",
            )
            demo.sts.proxy.fail(
                "AccessDenied",
                times=1,
                when={"RoleSessionName": demo.document["profiles"]["app-s3"]["role_session_name"]},
            )
        else:
            _say(out, "\n== Status now:")
            demo.status_table()
    while not stop.wait(lifetime):
        _say(out, "\n== Status now:")
        demo.status_table()
    return EXIT_OK if ok else EXIT_FAILED


def main(*, duration: float | None, ctx: Context) -> int:
    """Run the demo for `duration` seconds (None: until Ctrl-C)."""
    try:
        from credfresh.devsts import DevSTS
    except ImportError as exc:
        ctx.err.write(
            f"credfresh demo needs the demo extra: pip install 'credfresh[demo]' ({exc})\n"
        )
        return EXIT_FAILED
    out = ctx.out
    lifetime = float(ctx.environ.get("CREDFRESH_DEMO_LIFETIME") or DEFAULT_LIFETIME)
    stop = threading.Event()
    with (
        tempfile.TemporaryDirectory(prefix="credfresh-demo-") as tmp,
        DevSTS(mode="moto", lifetime=lifetime) as sts,
    ):
        wt = sts.setup_walkthrough()
        demo = Demo(sts, Path(tmp), ctx, lifetime)
        demo.prepare(wt)
        until = f" (or after {duration:.0f} s)" if duration else ""
        _say(
            out,
            "credfresh demo: the real daemon against a development STS on loopback "
            f"({sts.url}); no AWS account is used.\n"
            f"  config:            {demo.config_path}\n"
            f"  credentials file:  {demo.credentials}\n"
            f"  IAM user:          {wt.user_arn} (its key is the source profile demo-user)\n"
            f"  credentials live:  {lifetime:.0f} s, so refreshes come every "
            f"~{lifetime / 2:.0f} s\n  stop with Ctrl-C{until}\n",
        )
        demo.start_daemon()
        if duration is not None:
            timer = threading.Timer(duration, stop.set)
            timer.daemon = True
            timer.start()
        previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
        try:
            code = _script(demo, stop)
        finally:
            signal.signal(signal.SIGINT, previous)
            daemon_code = demo.stop()
        _say(
            out,
            f"\ncredfresh demo finished (daemon exit status {daemon_code}); the temporary "
            "directory is removed.",
        )
        return code if daemon_code == 0 else EXIT_FAILED
