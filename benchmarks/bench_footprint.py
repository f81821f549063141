"""The sidecar's footprint against botocore's own floor, both measured in this run.

Floors (`floors.py`): the peak RSS of a Python process that imports botocore and creates one
STS client (what any boto3-based daemon pays), the wall time of `python -c "import
botocore.session"`, botocore's own calls, and the design card's stack doing the daemon's
refreshes without credfresh (`stack_floor.py`) for the RSS, first-call, CPU and 64-worker
rows. Then `credfresh run` with 10 profiles (spawn -> first STS call, READY=1 cold and with fresh
profiles on disk, peak RSS after 10 refresh cycles with the container endpoint and the health
server on, threads) and with 1,000 profiles (CPU per refresh at 0 ms STS latency, and a cold
start at `max_concurrency` 64 and 50 ms latency against its latency bound). Daemons run with
the sidecar image's environment (`GLIBC_TUNABLES` set, so `credfresh run` does not re-execute
itself). The Roles Anywhere helper's model, one process per profile, is costed with
`peer_helper/main.go`, a standard-library Go stand-in built here when `go` is installed.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from datetime import timedelta
from pathlib import Path
from typing import Final

from floors import (
    CLIENT_FLOOR,
    STACK_IMPORTS,
    botocore_load_cpu,
    cpu_floor,
    first_call_floor,
    peak_rss_mb,
    pool_floor,
    stack_at_work,
    stack_median,
    wall,
)
from harness import (
    BENCH_DIR,
    OUT,
    Daemon,
    Layout,
    Report,
    Row,
    Stub,
    base_env,
    fresh_dir,
    median,
    profile_name,
)
from support.notify_listener import NotifyListener

SMALL: Final = 10
LARGE: Final = 1000
RSS_RATIO: Final = 1.2
FIRST_CALL_RATIO: Final = 1.5
READY_RATIO: Final = 2.0
MAX_CPU_MS: Final = 1.2
COLD_CONCURRENCY: Final = 64
COLD_LATENCY: Final = 0.05
COLD_RATIO: Final = 2.0
SIDECAR_ENV: Final = {"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0"}


def _helper_rss_mb(stub: Stub) -> float | None:
    """VmHWM of the Go stand-in for one Roles Anywhere helper process; None without `go`."""
    from credfresh.devsts.pki import issue

    go = shutil.which("go")
    if go is None:
        return None
    work = fresh_dir("footprint-helper")
    binary = OUT / "peer_helper"
    env = {**base_env(), "GO111MODULE": "off", "CGO_ENABLED": "0", "GOCACHE": str(OUT / "gocache")}
    source = BENCH_DIR / "peer_helper" / "main.go"
    subprocess.run([go, "build", "-o", str(binary), str(source)], env=env, check=True)
    ca = issue("bench CA", ca=True)
    cert, key = issue("bench.example", issuer=ca).write(work, "host")
    proc = subprocess.Popen(
        [str(binary), str(cert), str(key), stub.url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        if not proc.stdout.readline().startswith("ready"):
            return None
        status = Path(f"/proc/{proc.pid}/status").read_text()
        return int(status.split("VmHWM:")[1].split()[0]) / 1024
    finally:
        proc.kill()
        proc.wait()


def _sidecar(layout: Layout, listener: NotifyListener | None = None) -> Daemon:
    """`credfresh run` with the image's environment (and a notify socket when given)."""
    extra = dict(listener.environ) if listener is not None else {}
    return Daemon(layout, env=layout.env(**extra, **SIDECAR_ENV))


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def _small_layout(stub: Stub, name: str, *, outputs: bool = False) -> Layout:
    layout = Layout(fresh_dir(name), stub)
    document = layout.build(SMALL, short_lived=True)
    if outputs:
        token = layout.root / "endpoint.token"
        token.write_text(secrets.token_hex(16))
        token.chmod(0o600)
        document["container_credentials"] = {"listen": "127.0.0.1:0", "token_file": str(token)}
        document["http"] = {"listen": "127.0.0.1:0"}
    layout.write_config(document)
    return layout


def _start_times(stub: Stub, runs: int, lifetime: float) -> dict[str, list[float]]:
    """Per run: spawn -> first STS call and -> READY=1 (cold), then READY=1 with all fresh."""
    found: dict[str, list[float]] = {"first": [], "ready": [], "ready_fresh": []}
    for index in range(runs):
        stub.prepare(lifetime=lifetime)
        layout = _small_layout(stub, f"footprint-start-{index}")
        with (
            NotifyListener() as listener,
            _sidecar(layout, listener) as d,
        ):
            listener.wait_for(lambda m: m.fields.get("READY") == "1", timeout=30)
            found["ready"].append(time.perf_counter() - d.started_mono)
            found["first"].append(stub.request_times()[0] - d.started_at)
        layout.prefill([profile_name(i) for i in range(SMALL)], timedelta(hours=1))
        calls = stub.calls()
        with (
            NotifyListener() as listener,
            _sidecar(layout, listener) as d,
        ):
            listener.wait_for(lambda m: m.fields.get("READY") == "1", timeout=30)
            found["ready_fresh"].append(time.perf_counter() - d.started_mono)
        if stub.calls() != calls:
            raise RuntimeError("a daemon with every profile fresh on disk called STS")
    return found


def _small_memory(stub: Stub, cycles: int, lifetime: float) -> tuple[float, int, int]:
    """(peak RSS MB, threads, refreshes) of 10 profiles through `cycles` refresh cycles."""
    stub.prepare(lifetime=lifetime)
    layout = _small_layout(stub, "footprint-rss", outputs=True)
    with _sidecar(layout) as daemon:
        daemon.on_disk([profile_name(i) for i in range(SMALL)], timeout=60)
        wanted = SMALL * (cycles + 1)
        daemon.wait_for(lambda _: stub.calls() >= wanted, (cycles + 2) * lifetime, "cycles")
        return daemon.memory_kb()["VmHWM"] / 1024, _threads(daemon.pid), stub.calls()


def _cpu_per_refresh(stub: Stub, botocore_load: float) -> tuple[float, float]:
    """(CPU ms per refresh, start-up CPU s): a cold start of 1,000 profiles at STS 0 ms, less
    the CPU of the same daemon starting with all 1,000 fresh on disk and `botocore_load` (the
    fresh start never loads botocore), over 1,000 refreshes."""
    stub.prepare(lifetime=None, latency=0.0)
    layout = Layout(fresh_dir("footprint-cpu"), stub)
    layout.write_config(layout.build(LARGE, max_concurrency=16))
    names = [profile_name(i) for i in range(LARGE)]
    with _sidecar(layout) as daemon:
        daemon.on_disk(names, timeout=120)
        cold = daemon.cpu_seconds()
    with (
        NotifyListener() as listener,
        _sidecar(layout, listener) as d,
    ):
        listener.wait_for(lambda m: m.fields.get("READY") == "1", timeout=60)
        start_up = d.cpu_seconds()
    return 1000 * (cold - start_up - botocore_load) / LARGE, start_up


def _cpu_steady(stub: Stub, lifetime: float, cycles: int) -> tuple[float, int]:
    """(CPU ms per refresh, refreshes) of 1,000 profiles after the first pass, STS at 0 ms:
    every refresh wave at a short lifetime, each write of the whole file included."""
    stub.prepare(lifetime=lifetime, latency=0.0)
    layout = Layout(fresh_dir("footprint-steady"), stub)
    layout.write_config(layout.build(LARGE, short_lived=True, max_concurrency=16))
    with _sidecar(layout) as daemon:
        daemon.on_disk([profile_name(i) for i in range(LARGE)], timeout=120)
        cpu0, calls0 = daemon.cpu_seconds(), stub.calls()
        target = calls0 + cycles * LARGE
        daemon.wait_for(lambda _: stub.calls() >= target, (cycles + 2) * lifetime, "refreshes")
        cpu1, calls1 = daemon.cpu_seconds(), stub.calls()
    refreshes = calls1 - calls0
    return 1000 * (cpu1 - cpu0) / refreshes, refreshes


def _cold_start(stub: Stub) -> tuple[float, float]:
    """(first STS call -> all on disk, spawn -> all on disk) at 64 workers, 50 ms latency."""
    stub.prepare(lifetime=None, latency=COLD_LATENCY)
    layout = Layout(fresh_dir("footprint-cold"), stub)
    layout.write_config(layout.build(LARGE, max_concurrency=COLD_CONCURRENCY))
    with _sidecar(layout) as daemon:
        done = daemon.on_disk([profile_name(i) for i in range(LARGE)], timeout=120)
        first = stub.request_times()[0]
        return done - first, done - daemon.started_at


def _room(floor: float, target: float, unit: str) -> str:
    """What a floor leaves of a target for credfresh's own work, or that it leaves nothing."""
    if floor >= target:
        return f"{floor / target:.0%} of the target before any credfresh code"
    return f"which leaves {target - floor:.2f} {unit} of the target for all of credfresh's work"


def run(stub: Stub, *, runs: int = 5, cycles: int = 10, cold_runs: int = 3) -> Report:
    """Every #20 row with its floor; `runs` start-ups and `cycles` refresh cycles."""
    import_s = median(wall("import botocore.session") for _ in range(runs + 2))
    client_mb = median(peak_rss_mb(CLIENT_FLOOR) for _ in range(3))
    bare_mb = median(peak_rss_mb("pass") for _ in range(3))
    call_floor = median(first_call_floor(stub) for _ in range(runs))
    stack_mb = median(peak_rss_mb(STACK_IMPORTS + CLIENT_FLOOR) for _ in range(3))
    starts = _start_times(stub, runs, lifetime=60.0)
    peak_mb, threads, calls = _small_memory(stub, cycles, lifetime=12.0)
    # The stack at the 10-profile daemon's work: its start, its calls, its peak.
    small = stack_median(
        [
            stack_at_work(stub, workers=16, calls=SMALL, waves=calls // SMALL, latency=0.05)
            for _ in range(runs)
        ]
    )
    cpu_floor_ms = cpu_floor(stub, 300)
    _, pool_cpu = pool_floor(stub, 16, 0.0, LARGE)
    stack_cpu = median(
        stack_at_work(stub, workers=16, calls=LARGE, waves=3, latency=0.0).cpu_ms
        for _ in range(cold_runs)
    )
    pool_wall = median(
        pool_floor(stub, COLD_CONCURRENCY, COLD_LATENCY, LARGE)[0] for _ in range(cold_runs)
    )
    stack_wall = median(
        stack_at_work(
            stub, workers=COLD_CONCURRENCY, calls=LARGE, waves=1, latency=COLD_LATENCY
        ).first_wave
        for _ in range(cold_runs)
    )
    botocore_load = botocore_load_cpu()
    cpu_ms, start_cpu = _cpu_per_refresh(stub, botocore_load)
    steady_ms, refreshes = _cpu_steady(stub, lifetime=20.0, cycles=2 if cycles >= 10 else 1)
    colds = [_cold_start(stub) for _ in range(cold_runs)]
    helper_mb = _helper_rss_mb(stub)
    stub.prepare(lifetime=None)
    first, ready, fresh = (median(starts[k]) for k in ("first", "ready", "ready_fresh"))
    phase = median(c[0] for c in colds)
    whole = median(c[1] for c in colds)
    bound = LARGE * COLD_LATENCY / COLD_CONCURRENCY
    floor_rss = f"botocore + one STS client: {client_mb:.1f} MB (bare interpreter {bare_mb:.1f})"
    floor_import = f'`python -c "import botocore.session"`: median {import_s:.3f} s'
    at_work = (
        "the design card's stack at the daemon's work (stack_floor.py: structlog, APScheduler, "
        "watchdog, two http.server listeners, one STS client; no credfresh code)"
    )
    rows = [
        Row(
            f"peak RSS, `credfresh run`, 10 profiles, {cycles} refresh cycles at lifetime 12 s "
            f"({calls} refreshes), container endpoint and health server on; {threads} threads",
            f"{peak_mb:.1f} MB",
            f"<= {RSS_RATIO:g}x the floor",
            f"{floor_rss}; the stack's imports beside it: {stack_mb:.1f} MB; {at_work}, the "
            f"same {calls} refreshes: {small.peak_mb:.1f} MB",
            f"{peak_mb / client_mb:.2f}x ({peak_mb / small.peak_mb:.2f}x the stack at work)",
            ok=peak_mb <= RSS_RATIO * client_mb,
            why=f"{at_work} peaks at {small.peak_mb:.1f} MB = {small.peak_mb / client_mb:.2f}x "
            f"the floor, {_room(small.peak_mb, RSS_RATIO * client_mb, 'MB')}",
        ),
        Row(
            f"spawn -> first STS call, 10 profiles (median of {runs})",
            f"{first:.3f} s",
            f"<= {FIRST_CALL_RATIO:g}x the floor",
            f"{floor_import}; smallest botocore AssumeRole program: {call_floor:.3f} s; the "
            f"stack at work: {small.first_call:.3f} s",
            f"{first / import_s:.2f}x ({first / call_floor:.2f}x the AssumeRole program, "
            f"{first / small.first_call:.2f}x the stack at work)",
            ok=first <= FIRST_CALL_RATIO * import_s,
            why=f"{at_work}, its libraries loaded and started before its first job, calls STS "
            f"{small.first_call:.3f} s after spawn = {small.first_call / import_s:.2f}x the "
            f"import, {_room(small.first_call, FIRST_CALL_RATIO * import_s, 's')}",
        ),
        Row(
            f"spawn -> READY=1, 10 profiles fresh on disk (median of {runs}; 0 STS calls)",
            f"{fresh:.3f} s",
            f"<= {READY_RATIO:g}x the floor",
            floor_import,
            f"{fresh / import_s:.2f}x",
            ok=fresh <= READY_RATIO * import_s,
        ),
        Row(
            f"spawn -> READY=1, 10 profiles, nothing on disk (median of {runs})",
            f"{ready:.3f} s",
            "-",
            floor_import,
            f"{ready / import_s:.2f}x",
        ),
        Row(
            "CPU per refresh, 1,000 profiles, STS at 0 ms: a cold start's CPU less a start-up "
            f"with all fresh on disk ({start_cpu:.2f} s) and botocore's load (import and one STS "
            f"client, {botocore_load:.2f} s), over 1,000 refreshes",
            f"{cpu_ms:.2f} ms",
            f"<= {MAX_CPU_MS:g} ms",
            f"botocore alone, one client, one thread: {cpu_floor_ms:.2f} ms per AssumeRole; "
            f"on 16 threads: {pool_cpu:.2f} ms; the stack at work on 16 threads: "
            f"{stack_cpu:.2f} ms",
            f"{cpu_ms / cpu_floor_ms:.2f}x ({cpu_ms / pool_cpu:.2f}x botocore on 16 threads, "
            f"{cpu_ms / stack_cpu:.2f}x the stack at work)",
            ok=cpu_ms <= MAX_CPU_MS,
            why=f"{at_work}, one job and one JSON line per refresh on 16 threads, spends "
            f"{stack_cpu:.2f} ms of CPU per refresh (botocore alone {pool_cpu:.2f} ms), "
            f"{_room(stack_cpu, MAX_CPU_MS, 'ms')}",
        ),
        Row(
            f"CPU per refresh in steady refresh waves, 1,000 profiles, lifetime 20 s, STS at 0 ms "
            f"({refreshes} refreshes, each write of the whole file included)",
            f"{steady_ms:.2f} ms",
            "-",
            f"botocore alone: {cpu_floor_ms:.2f} ms",
            f"{steady_ms / cpu_floor_ms:.2f}x",
        ),
        Row(
            f"cold start, 1,000 profiles, max_concurrency {COLD_CONCURRENCY}, STS 50 ms: first "
            f"STS call -> all on disk (median of {cold_runs}; spawn -> all on disk {whole:.2f} s)",
            f"{phase:.2f} s",
            f"<= {COLD_RATIO:g}x the latency bound",
            f"latency bound 1,000 x 50 ms / {COLD_CONCURRENCY} = {bound:.2f} s; botocore alone, "
            f"{COLD_CONCURRENCY} threads, the same 1,000 calls: {pool_wall:.2f} s; the stack at "
            f"work: {stack_wall:.2f} s",
            f"{phase / bound:.2f}x ({phase / pool_wall:.2f}x botocore alone, "
            f"{phase / stack_wall:.2f}x the stack at work)",
            ok=phase <= COLD_RATIO * bound,
            why=f"{at_work}, making the same 1,000 refreshes on {COLD_CONCURRENCY} threads, "
            f"takes {stack_wall:.2f} s from its first job to its last answer (botocore alone "
            f"{pool_wall:.2f} s): {stack_wall / bound:.2f}x the latency bound, "
            f"{_room(stack_wall, COLD_RATIO * bound, 's')}; under the GIL the calls' CPU, not "
            "the latency, bounds a cold start",
        ),
    ]
    if helper_mb is not None:
        rows.append(
            Row(
                "Roles Anywhere helper's model, one process per profile (a standard-library Go "
                "stand-in: certificate loaded, one fetch, serving; the real helper adds the AWS "
                "SDK for Go)",
                f"{helper_mb:.1f} MB per process: 10 profiles {10 * helper_mb:.0f} MB, "
                f"1,000 profiles {LARGE * helper_mb / 1024:.1f} GB",
                "-",
                f"credfresh: one process, {peak_mb:.1f} MB for 10 profiles (1,000: the 10-cycle "
                "row)",
                f"{10 * helper_mb / peak_mb:.2f}x at 10 profiles",
            )
        )
    details = (
        f"Floors: import botocore.session {import_s:.3f} s; botocore + STS client peak RSS "
        f"{client_mb:.1f} MB (with structlog, APScheduler and watchdog imported too: "
        f"{stack_mb:.1f} MB); bare interpreter {bare_mb:.1f} MB; smallest AssumeRole program "
        f"spawn -> call {call_floor:.3f} s; botocore CPU per AssumeRole {cpu_floor_ms:.3f} ms "
        f"(16 threads: {pool_cpu:.3f} ms); botocore alone, 1,000 calls on {COLD_CONCURRENCY} "
        f"threads at 50 ms: {pool_wall:.2f} s. The stack at work (`stack_floor.py`): 10 "
        f"refreshes a wave on 16 threads, spawn -> first call {small.first_call:.3f} s, peak "
        f"{small.peak_mb:.1f} MB; 1,000 refreshes on 16 threads at 0 ms, {stack_cpu:.3f} ms "
        f"of CPU each; on {COLD_CONCURRENCY} threads at 50 ms, {stack_wall:.2f} s."
        "\n\n"
        "spawn -> first STS call (s): " + ", ".join(f"{t:.3f}" for t in starts["first"]) + "\n\n"
        "spawn -> READY=1 cold (s): " + ", ".join(f"{t:.3f}" for t in starts["ready"]) + "\n\n"
        "spawn -> READY=1 fresh (s): "
        + ", ".join(f"{t:.3f}" for t in starts["ready_fresh"])
        + "\n\n"
        "cold start at 64 workers, first call -> all on disk / spawn -> all on disk (s): "
        + ", ".join(f"{a:.2f}/{b:.2f}" for a, b in colds)
    )
    return Report(rows=rows, sections={"Footprint against botocore's floor": details})
