"""CPU of one Roles Anywhere refresh against one AssumeRole refresh, side by side.

Both sources run in this process against the stub STS (its own process, 50 ms latency),
each fetching the same number of credential sets in alternating rounds; the figure is this
process's CPU time (every thread) per fetch: signing, the HTTP exchange, parsing, checks.
Target: a Roles Anywhere refresh costs at most 2x an AssumeRole refresh.
"""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from credfresh.config.model import Profile, RolesAnywhereSpec, StsSettings
from credfresh.context import SystemClock
from credfresh.credentials import Credentials
from credfresh.devsts.pki import issue
from credfresh.sources.assume_role import StsSource
from credfresh.sources.base import Source
from credfresh.sources.roles_anywhere import RolesAnywhereSource
from harness import Report, Row, Stub, median

TARGET_RATIO: Final = 2.0
ACCOUNT: Final = "123456789012"


def _cpu_per_fetch(source: Source, profile: Profile, parent: Credentials | None, n: int) -> float:
    started = time.process_time()
    for _ in range(n):
        source.fetch(profile, parent)
    return (time.process_time() - started) / n


def run(stub: Stub, *, rounds: int = 5, per_round: int = 40) -> Report:
    stub.prepare(lifetime=None)
    walkthrough = stub.walkthrough
    assert walkthrough is not None
    root = Path(tempfile.mkdtemp(prefix="credfresh-bench-ra-"))
    ca = issue("bench CA", ca=True)
    cert, key = issue("bench.example", issuer=ca).write(root, "host")
    anchor = f"arn:aws:rolesanywhere:us-east-1:{ACCOUNT}:trust-anchor/{uuid.uuid4()}"
    ra_profile = f"arn:aws:rolesanywhere:us-east-1:{ACCOUNT}:profile/{uuid.uuid4()}"
    stub.api.call("POST", "rolesanywhere", {"trust_anchor_arn": anchor, "ca_pem": ca.pem})
    stub.api.call(
        "POST", "rolesanywhere", {"profile_arn": ra_profile, "role_arns": [walkthrough.role_arn]}
    )
    settings = StsSettings(timeout=10.0, roles_anywhere_rate=1000.0)
    common = {
        "refresh_before": None,
        "role_session_name": "bench",
        "duration_seconds": 3600,
        "region": "us-east-1",
        "endpoint_url": stub.url,
    }
    sts_profile = Profile(
        name="sts",
        role_arn=walkthrough.role_arn,
        source_profile="base",
        chained=True,
        **common,  # type: ignore[arg-type]
    )
    spec = RolesAnywhereSpec(
        certificate=cert,
        private_key=key,
        trust_anchor_arn=anchor,
        profile_arn=ra_profile,
        role_arn=walkthrough.role_arn,
        endpoint_url=stub.url,
    )
    ra = Profile(name="ra", role_arn=walkthrough.role_arn, roles_anywhere=spec, **common)  # type: ignore[arg-type]
    now = datetime.now(UTC)
    parent = Credentials(
        access_key_id=walkthrough.access_key_id,
        secret_access_key=walkthrough.secret_access_key,
        session_token="unused-session-token",
        expiration=now.replace(year=now.year + 1),
        issued=now,
    )
    clock = SystemClock()
    sts_source = StsSource(settings, clock=clock)
    ra_source = RolesAnywhereSource(
        settings, clock=clock, on_reload_failed=lambda *_: None, sleep=time.sleep
    )
    sts_source.fetch(sts_profile, parent)  # warm both: imports, clients, connections
    ra_source.fetch(ra, None)
    sts_cpu, ra_cpu = [], []
    for _ in range(rounds):
        sts_cpu.append(_cpu_per_fetch(sts_source, sts_profile, parent, per_round))
        ra_cpu.append(_cpu_per_fetch(ra_source, ra, None, per_round))
    sts_ms, ra_ms = median(sts_cpu) * 1000, median(ra_cpu) * 1000
    ratio = ra_ms / sts_ms
    return Report(
        rows=[
            Row(
                "Roles Anywhere refresh CPU (RSA 2048, CreateSession signed and checked) vs an "
                f"AssumeRole refresh, in-process, {rounds} x {per_round} alternating",
                f"{ra_ms:.2f} ms CPU per refresh",
                f"<= {TARGET_RATIO:g}x AssumeRole",
                peer=f"AssumeRole: {sts_ms:.2f} ms CPU per refresh",
                ratio=f"{ratio:.2f}x",
                ok=ratio <= TARGET_RATIO,
            )
        ]
    )
