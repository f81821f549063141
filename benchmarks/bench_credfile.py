"""Time one credentials-file write: 10 changed sections in a 1,000-section file (p50 <= 50 ms)."""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "daemon"))

from credfresh.credentials import Credentials
from credfresh.credfile.store import read_managed, write_profiles

OWNER = "bench"
SECTIONS = 1000
UPDATED = 10
RUNS = 50
TARGET_MS = 50.0
# A real STS session token is 700-1000 characters; the file is then about 1 MB.
TOKEN_CHARS = 900


def _creds(serial: int, now: datetime) -> Credentials:
    return Credentials(
        access_key_id=f"ASIA{serial:016d}",
        secret_access_key=f"{serial:040d}",
        session_token=("IQoJb3JpZ2luX2VjE" + f"{serial:08d}" * 200)[:TOKEN_CHARS],
        expiration=now + timedelta(hours=1),
        issued=now,
        principal_arn=f"arn:aws:sts::123456789012:assumed-role/app/credfresh-{serial}",
    )


def measure() -> dict[str, float]:
    """Fill a file with 1,000 managed sections, then time writes of 10 changed ones."""
    now = datetime(2026, 11, 28, 15, 0, tzinfo=UTC)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "credentials"
        path.write_text("# hand-written\n[default]\nregion = eu-west-1\n")
        write_profiles(path, OWNER, {f"p{i:04d}": _creds(i, now) for i in range(SECTIONS)})
        size = path.stat().st_size
        timings: list[float] = []
        for run in range(RUNS):
            start = SECTIONS // 2 - UPDATED // 2
            updates = {
                f"p{i:04d}": _creds(i + 10_000 * (run + 1), now) for i in range(start, start + 10)
            }
            began = time.perf_counter()
            result = write_profiles(path, OWNER, updates)
            timings.append((time.perf_counter() - began) * 1000)
            assert result.written
        began = time.perf_counter()
        view = read_managed(path, OWNER)
        read_ms = (time.perf_counter() - began) * 1000
        assert len(view.managed) == SECTIONS
    return {
        "p50_ms": statistics.median(timings),
        "p95_ms": sorted(timings)[int(RUNS * 0.95) - 1],
        "read_ms": read_ms,
        "kib": size / 1024,
    }


def main() -> int:
    """Print the one-line summary; exit 1 when the p50 misses the target."""
    found = measure()
    p50 = found["p50_ms"]
    verdict = "ok" if p50 <= TARGET_MS else "SLOW"
    print(
        f"credfile write: {UPDATED} of {SECTIONS} sections, {found['kib']:.0f} KiB file, "
        f"{RUNS} runs: p50 {p50:.1f} ms, p95 {found['p95_ms']:.1f} ms, "
        f"read_managed {found['read_ms']:.1f} ms (target p50 <= {TARGET_MS:g} ms: {verdict})"
    )
    return 0 if p50 <= TARGET_MS else 1


if __name__ == "__main__":
    raise SystemExit(main())
