"""Where time and memory go at 1,000 profiles: py-spy GIL samples and tracemalloc snapshots."""

from __future__ import annotations

import collections
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Final

from harness import (
    BENCH_DIR,
    OUT,
    Daemon,
    Layout,
    Report,
    Stub,
    fresh_dir,
    profile_name,
)

PROFILES: Final = 1000
TOP: Final = 25
_LINE_NO = re.compile(r":\d+\)")


def py_spy() -> str | None:
    """py-spy beside this interpreter or on PATH (`pip install py-spy`)."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def summarize(raw: Path, top: int = TOP) -> str:
    """Cumulative and self shares of py-spy's collapsed stacks, line numbers folded."""
    own: collections.Counter[str] = collections.Counter()
    total_by: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = [_LINE_NO.sub(")", frame) for frame in stack.split(";")]
        own[frames[-1]] += samples
        for frame in set(frames):
            total_by[frame] += samples
    if not total:
        return "(no samples)"
    lines = [f"{total} samples while holding the GIL. Cumulative:", "```"]
    lines += [
        f"{n / total * 100:5.1f}%  {frame}"
        for frame, n in total_by.most_common(top * 2)
        if "threading.py" not in frame and "<frozen" not in frame
    ][:top]
    lines += ["```", "Self:", "```"]
    lines += [f"{n / total * 100:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    lines.append("```")
    return "\n".join(lines)


def _cold_start(stub: Stub, spy: str, out: Path) -> str:
    stub.prepare(lifetime=None)
    layout = Layout(fresh_dir("profile-cold"), stub)
    layout.write_config(layout.build(PROFILES))
    raw = out / "coldstart.raw"
    prefix = [spy, "record", "--gil", "-r", "250", "--format", "raw", "-o", str(raw)]
    daemon = Daemon(layout, argv_prefix=[*prefix, "--nonblocking", "--"])
    try:
        daemon.on_disk([profile_name(i) for i in range(PROFILES)], timeout=120)
    finally:
        # Stop the daemon itself (its pid is in its log); py-spy then writes the file and exits.
        started = daemon.named("started")
        if started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(started[0]["pid"]), signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            daemon.proc.wait(30)
        daemon.stop()
    return summarize(raw)


def _wait_calls(stub: Stub, daemon: Daemon, calls: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while stub.calls() < calls:
        if time.monotonic() > deadline or daemon.proc.poll() is not None:
            raise RuntimeError(f"{stub.calls()} of {calls} STS calls after {timeout:g} s")
        time.sleep(0.25)


def _cycles_cpu(stub: Stub, spy: str, out: Path, lifetime: float) -> str:
    stub.prepare(lifetime=lifetime)
    layout = Layout(fresh_dir("profile-cycles"), stub)
    layout.write_config(layout.build(PROFILES, short_lived=True))
    raw = out / "cycles.raw"
    with Daemon(layout) as daemon:
        _wait_calls(stub, daemon, 2 * PROFILES, 120)
        seconds = round(2 * lifetime)
        record = [spy, "record", "--gil", "-r", "100", "-d", str(seconds), "--format", "raw"]
        subprocess.run(
            [*record, "-o", str(raw), "-p", str(daemon.pid), "--nonblocking"],
            capture_output=True,
            check=False,
        )
    return summarize(raw)


def _snapshot(daemon: Daemon, directory: Path, number: int) -> tracemalloc.Snapshot:
    daemon.proc.send_signal(signal.SIGUSR2)
    target = directory / f"snapshot-{number}.pickle"
    deadline = time.monotonic() + 120
    while not target.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"no tracemalloc snapshot {number}")
        time.sleep(0.2)
    return tracemalloc.Snapshot.load(str(target))


def _memory(stub: Stub, out: Path, lifetime: float, first: int, last: int) -> str:
    stub.prepare(lifetime=lifetime)
    layout = Layout(fresh_dir("profile-memory"), stub)
    layout.write_config(layout.build(PROFILES, short_lived=True))
    snaps = out / "snapshots"
    shutil.rmtree(snaps, ignore_errors=True)
    snaps.mkdir(parents=True)
    env = layout.env(BENCH_SNAPSHOT_DIR=str(snaps))
    launcher = [sys.executable, str(BENCH_DIR / "traced_run.py")]
    timeout = (last + 2) * lifetime * 2 + 60
    with Daemon(layout, env=env, launcher=launcher) as daemon:
        _wait_calls(stub, daemon, (first + 1) * PROFILES, timeout)
        before = _snapshot(daemon, snaps, 1)
        _wait_calls(stub, daemon, (last + 1) * PROFILES, timeout)
        after = _snapshot(daemon, snaps, 2)
    filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
    before, after = before.filter_traces(filters), after.filter_traces(filters)
    held = sum(stat.size for stat in after.statistics("filename"))
    lines = [
        f"Traced Python memory at cycle {last}: {held / 2**20:.1f} MiB. Growth from cycle "
        f"{first} to {last}, by line:",
        "```",
    ]
    for stat in after.compare_to(before, "lineno")[:TOP]:
        frame = stat.traceback[0]
        where = f"{_short(frame.filename)}:{frame.lineno}"
        lines.append(f"{stat.size_diff / 1024:+9.0f} KiB {stat.count_diff:+8d} blocks  {where}")
    lines += ["```", f"Held at cycle {last}, by file:", "```"]
    for held_stat in after.statistics("filename")[:15]:
        where = _short(held_stat.traceback[0].filename)
        lines.append(f"{held_stat.size / 1024:9.0f} KiB {held_stat.count:8d} blocks  {where}")
    lines.append("```")
    return "\n".join(lines)


def _short(filename: str) -> str:
    for marker in ("site-packages" + os.sep, "daemon" + os.sep, "lib" + os.sep):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def run(stub: Stub, *, lifetime: float = 30.0, first: int = 2, last: int = 6) -> Report:
    """Profile the first pass and steady refreshes (CPU), and memory growth over cycles."""
    out = OUT / "profile"
    out.mkdir(parents=True, exist_ok=True)
    report = Report()
    spy = py_spy()
    if spy is None:
        report.sections["Profile: CPU"] = "py-spy is not installed (`pip install py-spy`)."
    else:
        report.sections["Profile: first pass (GIL samples)"] = _cold_start(stub, spy, out)
        report.sections[f"Profile: refresh cycles at lifetime {lifetime:g} s (GIL samples)"] = (
            _cycles_cpu(stub, spy, out, lifetime)
        )
    report.sections["Profile: memory (tracemalloc)"] = _memory(stub, out, lifetime, first, last)
    (out / "profile.md").write_text(
        "\n\n".join(f"## {title}\n\n{text}" for title, text in report.sections.items()) + "\n"
    )
    return report
