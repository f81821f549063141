"""1,000 profiles while the stub answers Throttling to 30% of calls: all fresh, few calls."""

from __future__ import annotations

import time
from typing import Final

from credfresh.devsts import RequestRecord
from harness import (
    Daemon,
    Layout,
    Report,
    Row,
    Stub,
    fresh_dir,
    managed_fresh,
    profile_name,
)

PROFILES: Final = 1000
PROBABILITY: Final = 0.3
MAX_RATIO: Final = 2.0


def _first_pass(records: list[RequestRecord]) -> tuple[int, int]:
    """Calls (and throttled ones) each role took up to its first issued credentials."""
    done: set[str] = set()
    calls = throttled = 0
    for record in sorted(records, key=lambda r: r.time):
        role = record.role_arn or ""
        if role in done:
            continue
        calls += 1
        throttled += record.outcome == "error:Throttling"
        if record.status == 200:
            done.add(role)
    return calls, throttled


def run(stub: Stub, *, lifetime: float = 60.0) -> Report:
    """The first pass, then one refresh wave, under 30% Throttling answers."""
    stub.prepare(lifetime=lifetime)
    stub.api.fail("Throttling", probability=PROBABILITY, match={"Action": "AssumeRole"})
    layout = Layout(fresh_dir("throttle"), stub)
    document = layout.build(PROFILES, short_lived=True, retry={"initial": "1s", "max": "8s"})
    layout.write_config(document)
    names = [profile_name(i) for i in range(PROFILES)]
    with Daemon(layout) as daemon:
        last = daemon.on_disk(names, timeout=120)
        first_pass_s = last - daemon.started_at
        deadline = time.monotonic() + 3 * lifetime
        while time.monotonic() < deadline:
            records = stub.api.requests(action="AssumeRole")
            if sum(1 for r in records if r.status == 200) >= 2 * PROFILES:
                break
            time.sleep(0.5)
        present, fresh = managed_fresh(layout, names)
        failures = daemon.named("refresh_failed")
    records = stub.api.requests(action="AssumeRole")
    issued = sum(1 for r in records if r.status == 200)
    throttled = sum(1 for r in records if r.outcome == "error:Throttling")
    first_calls, first_throttled = _first_pass(records)
    worst = max((int(f.get("consecutive_failures", 0)) for f in failures), default=0)
    ratio = first_calls / PROFILES
    overall = len(records) / issued if issued else float("inf")
    ok = present == fresh == PROFILES and ratio <= MAX_RATIO and overall <= MAX_RATIO
    report = Report()
    report.rows.append(
        Row(
            "Throttling on 30% of calls, 1,000 profiles (retry.initial 1 s, max 8 s)",
            f"all fresh in {first_pass_s:.1f} s; {first_calls} calls = {ratio:.2f}x profiles",
            f"all fresh; calls <= {MAX_RATIO:g}x profiles",
            ok=ok,
        )
    )
    report.sections["Throttling"] = (
        f"First pass: {first_calls} AssumeRole calls ({first_throttled} answered Throttling) "
        f"for {PROFILES} profiles, all on disk {first_pass_s:.1f} s after spawn; the most "
        f"consecutive failures of one profile: {worst}. Through one more refresh wave "
        f"(lifetime {lifetime:g} s): {len(records)} calls, {throttled} throttled, {issued} "
        f"credential sets issued ({overall:.2f} calls per issued set); at the end "
        f"{present} sections on disk, {fresh} fresh. botocore's own retries are off "
        "(total_max_attempts 1): every retry is credfresh's jittered backoff."
    )
    return report
