"""`credfresh credential-process` against its stdlib floor, side by side, interleaved.

Each round runs the floor script (benchmarks/credential_process_floor.py) and then
credfresh on the same credentials file, so load on the shared machine hits both alike; the
figure is the ratio of the medians. Two files: 10 profiles (start-up dominates) and 1,000
(parsing dominates). No daemon and no STS: the sections are prefilled.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Final

from harness import BENCH_DIR, Layout, Report, Row, Stub, fresh_dir, load, median, profile_name

FLOOR: Final = BENCH_DIR / "credential_process_floor.py"
MAX_RATIO: Final = 2.0
SIZES: Final = (10, 1000)


def _credfresh() -> list[str]:
    """The console script beside this interpreter (what SDK configs name), else `-m`."""
    script = Path(sys.executable).with_name("credfresh")
    return [str(script)] if script.exists() else [sys.executable, "-m", "credfresh"]


def _once(argv: list[str], env: dict[str, str]) -> tuple[float, bytes]:
    began = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, check=False)
    took = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"{argv[:3]} exited {done.returncode}: {done.stderr[-300:]!r}")
    return took, done.stdout


def measure(stub: Stub, profiles: int, runs: int) -> tuple[list[float], list[float]]:
    """Seconds of `runs` interleaved runs of the floor and of credfresh (same file, same JSON)."""
    layout = Layout(fresh_dir(f"credential-process-{profiles}"), stub)
    names = [profile_name(i) for i in range(profiles)]
    layout.prefill(names, valid_for=timedelta(hours=1))
    layout.write_config(layout.build(profiles))
    env = layout.env()
    wanted = names[profiles // 2]
    floor_argv = [sys.executable, str(FLOOR), wanted, str(layout.credentials)]
    ours_argv = [*_credfresh(), "credential-process", wanted, "-c", str(layout.config)]
    floor_times, ours_times = [], []
    for _ in range(runs):
        took, floor_out = _once(floor_argv, env)
        floor_times.append(took)
        took, ours_out = _once(ours_argv, env)
        ours_times.append(took)
        if floor_out != ours_out:
            raise RuntimeError("credfresh and the floor printed different JSON")
    return floor_times, ours_times


def run(stub: Stub, *, runs: int = 41) -> Report:
    """One row per file size: credfresh's median, the floor's, their ratio."""
    report = Report()
    details = []
    for profiles in SIZES:
        taken_at = load()
        floor_times, ours_times = measure(stub, profiles, runs)
        floor_s, ours_s = median(floor_times), median(ours_times)
        ratio = ours_s / floor_s
        report.rows.append(
            Row(
                f"`credfresh credential-process`, whole process, {profiles:,}-section file "
                f"(console script, {runs} runs interleaved with the floor)",
                f"median {ours_s * 1000:.0f} ms",
                f"<= {MAX_RATIO:g}x the stdlib floor",
                peer=f"floor (configparser + json): median {floor_s * 1000:.0f} ms",
                ratio=f"{ratio:.2f}x",
                ok=ratio <= MAX_RATIO,
                load_avg=taken_at,
            )
        )
        details.append(
            f"{profiles:,} sections: credfresh (ms) "
            + ", ".join(f"{t * 1000:.0f}" for t in ours_times)
            + "; floor (ms) "
            + ", ".join(f"{t * 1000:.0f}" for t in floor_times)
        )
    report.sections["credential-process against its floor"] = (
        "Each round runs `benchmarks/credential_process_floor.py` (configparser reads the "
        "file, json prints the same document) and then `credfresh credential-process` on the "
        "same file, and checks that both printed the same bytes. " + ". ".join(details) + "."
    )
    return report
