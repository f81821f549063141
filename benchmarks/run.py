"""`make bench`: every scenario against the stub STS; prints the table, writes results.md."""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import BENCH_DIR, WORK, Report, Row, Stub, compile_bytecode, load

RESULTS: Final = BENCH_DIR / "results.md"
HEADER: Final = (
    "| scenario | figure | target | peer figure | ratio | verdict |\n|---|---|---|---|---|---|"
)


def _credfile(stub: Stub, quick: bool) -> Report:
    import bench_credfile

    found = bench_credfile.measure()
    p50 = found["p50_ms"]
    return Report(
        rows=[
            Row(
                f"write of a 1,000-section file, {found['kib']:.0f} KiB, 10 sections changed "
                "(bench_credfile.py, no daemon)",
                f"p50 {p50:.1f} ms, p95 {found['p95_ms']:.1f} ms",
                f"p50 <= {bench_credfile.TARGET_MS:g} ms",
                ok=p50 <= bench_credfile.TARGET_MS,
                why=""
                if p50 <= bench_credfile.TARGET_MS
                else "`credfile._check_result` re-parses the whole merged file with "
                "RawConfigParser, about two thirds of a write (PROFILE.md, change 2)",
            )
        ]
    )


def _ready(stub: Stub, quick: bool) -> Report:
    import bench_ready

    return bench_ready.run(stub, runs=3 if quick else 5, soak=20.0 if quick else 45.0)


def _coldstart(stub: Stub, quick: bool) -> Report:
    import bench_coldstart

    if quick:
        return bench_coldstart.run(stub, runs=1, boto3_sample=50, cli_sample=2)
    return bench_coldstart.run(stub)


def _idle(stub: Stub, quick: bool) -> Report:
    import bench_idle

    if quick:
        return bench_idle.run(stub, idle_seconds=15.0, process_runs=5, status_runs=3, edits=3)
    return bench_idle.run(stub)


def _credential_process(stub: Stub, quick: bool) -> Report:
    import bench_credential_process

    return bench_credential_process.run(stub, runs=11 if quick else 41)


def _throttle(stub: Stub, quick: bool) -> Report:
    import bench_throttle

    return bench_throttle.run(stub)


def _cycles(stub: Stub, quick: bool) -> Report:
    import bench_cycles

    return bench_cycles.run(stub, cycles=3 if quick else 10)


def _roles_anywhere(stub: Stub, quick: bool) -> Report:
    import bench_roles_anywhere

    return bench_roles_anywhere.run(stub, rounds=3 if quick else 5)


def _footprint(stub: Stub, quick: bool) -> Report:
    import bench_footprint

    if quick:
        return bench_footprint.run(stub, runs=3, cycles=3, cold_runs=1)
    return bench_footprint.run(stub)


def _profile(stub: Stub, quick: bool) -> Report:
    import bench_profile

    return bench_profile.run(stub, last=4 if quick else 6)


SCENARIOS: Final[dict[str, Callable[[Stub, bool], Report]]] = {
    "credfile": _credfile,
    "ready": _ready,
    "coldstart": _coldstart,
    "idle": _idle,
    "credential_process": _credential_process,
    "throttle": _throttle,
    "cycles": _cycles,
    "roles_anywhere": _roles_anywhere,
    "footprint": _footprint,
    "profile": _profile,
}
# The profile (py-spy and tracemalloc, a few minutes) runs only when asked for by name.
DEFAULT: Final = [name for name in SCENARIOS if name != "profile"]


def render(rows: list[Row], sections: dict[str, str], meta: list[str]) -> str:
    """The whole results.md: the table, what missed and why, then each scenario's details."""
    out = ["# Benchmark results", "", *meta, "", HEADER, *(row.line() for row in rows), ""]
    missed = [row for row in rows if row.ok is False]
    if missed:
        out += ["## Targets not met", ""]
        for row in missed:
            why = f" Why: {row.why}" if row.why else ""
            out.append(f"- {row.scenario}: {row.figure} (target {row.target}).{why}")
        out += ["", "benchmarks/PROFILE.md has the profiles and the proposed daemon changes.", ""]
    out += [
        "## Load while measuring",
        "",
        "The 1/5/15-minute load averages when each row was taken:",
        "",
    ]
    out += [f"- {row.scenario}: {row.load_avg}" for row in rows]
    out.append("")
    for title, text in sections.items():
        out += [f"## {title}", "", text, ""]
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the chosen scenarios (all by default) and report; exit 1 only with --strict."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default="", help="comma-separated, of: " + ",".join(SCENARIOS))
    parser.add_argument("--quick", action="store_true", help="fewer runs and cycles (a smoke)")
    parser.add_argument("--no-write", action="store_true", help="do not rewrite results.md")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    chosen = [name for name in args.only.split(",") if name] or DEFAULT
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}")
    began = time.monotonic()
    start_load = load()
    shutil.rmtree(WORK, ignore_errors=True)
    compile_bytecode()
    rows: list[Row] = []
    sections: dict[str, str] = {}
    print(HEADER, flush=True)
    with Stub(latency=0.05) as stub:
        for name in chosen:
            report = SCENARIOS[name](stub, args.quick)
            for row in report.rows:
                print(f"{row.line()} <!-- load {row.load_avg} -->", flush=True)
            rows += report.rows
            sections.update(report.sections)
    shutil.rmtree(WORK, ignore_errors=True)
    elapsed = time.monotonic() - began
    meta = [
        f"Generated by `make bench` (`benchmarks/run.py{' --quick' if args.quick else ''}`) on "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, total runtime {elapsed:.0f} s, load 1/5/15 "
        f"{start_load} at the start and {load()} at the end (the machine is shared).",
        "",
        "The STS is the development STS's stub (`python -m credfresh.devsts --mode stub`) in "
        "its own process: 50 ms added latency, unique credentials per call, a call counter. "
        "Daemons run as `python -m credfresh run --log-format json`, from bytecode compiled "
        "first as `pip install` and the image leave it, with 1,000 profiles "
        "(one role each) unless a row says otherwise; `max_concurrency` 16; source profile "
        "`[base]` from the credentials file; no instance metadata. Where a row names a "
        "lifetime, the stub issued credentials living that long so that refresh cycles fit "
        "in minutes.",
    ]
    print()
    print(HEADER)
    for row in rows:
        print(row.line())
    missed = [row for row in rows if row.ok is False]
    print(
        f"\n{len(rows) - len(missed)} of {len(rows)} rows met or informative; "
        f"{len(missed)} target(s) not met; {elapsed:.0f} s."
    )
    if not args.no_write:
        RESULTS.write_text(render(rows, sections, meta))
        print(f"wrote {RESULTS.relative_to(BENCH_DIR.parent)}")
    return 1 if missed and args.strict else 0


if __name__ == "__main__":
    raise SystemExit(main())
