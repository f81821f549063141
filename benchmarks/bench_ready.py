"""10 profiles: spawn -> READY=1 on the notify socket, and the peak RSS over refresh cycles."""

from __future__ import annotations

import time
from typing import Final

from harness import Daemon, Layout, Report, Row, Stub, fresh_dir, median
from support.notify_listener import NotifyListener

PROFILES: Final = 10
MAX_READY_S: Final = 1.5
MAX_PEAK_MB: Final = 70.0


def run(stub: Stub, *, runs: int = 5, lifetime: float = 20.0, soak: float = 45.0) -> Report:
    """`runs` cold starts timed to READY=1; the last keeps running `soak` s for its peak RSS."""
    stub.prepare(lifetime=lifetime)
    ready: list[float] = []
    peak_mb = 0.0
    calls = 0
    for index in range(runs):
        layout = Layout(fresh_dir(f"ready-{index}"), stub)
        layout.write_config(layout.build(PROFILES, short_lived=True))
        with NotifyListener() as listener, Daemon(layout, env=layout.env(**listener.environ)) as d:
            listener.wait_for(lambda m: m.fields.get("READY") == "1", timeout=30)
            ready.append(time.perf_counter() - d.started_mono)
            if index == runs - 1:
                before = stub.calls()
                time.sleep(soak)
                calls = stub.calls() - before
                peak_mb = d.memory_kb()["VmHWM"] / 1024
    report = Report()
    figure = median(ready)
    report.rows.append(
        Row(
            "`credfresh run`, 10 profiles, spawn -> READY=1 (cold: nothing on disk)",
            f"median {figure:.2f} s ({runs} runs)",
            f"<= {MAX_READY_S:g} s",
            ok=figure <= MAX_READY_S,
        )
    )
    report.rows.append(
        Row(
            f"peak RSS of `credfresh run`, 10 profiles (VmHWM after {soak:.0f} s, "
            f"{calls} refreshes at lifetime {lifetime:g} s)",
            f"{peak_mb:.1f} MB",
            f"<= {MAX_PEAK_MB:g} MB",
            ok=peak_mb <= MAX_PEAK_MB,
        )
    )
    report.sections["READY=1"] = "spawn -> READY=1 (s): " + ", ".join(f"{t:.2f}" for t in ready)
    return report
