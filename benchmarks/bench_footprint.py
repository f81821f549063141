"""The sidecar's footprint against botocore's own floor, both measured in this run.

Floors: the peak RSS of a Python process that imports botocore and creates one STS client
(what any boto3-based daemon pays), and the wall time of `python -c "import botocore.session"`.
Then `credfresh run` with 10 profiles (spawn -> first STS call, READY=1 cold and with fresh
profiles on disk, peak RSS after 10 refresh cycles with the container endpoint and the health
server on, threads) and with 1,000 profiles (CPU per refresh at 0 ms STS latency, and a cold
start at `max_concurrency` 64 and 50 ms latency against its latency bound). Daemons run with
the sidecar image's environment (`GLIBC_TUNABLES` set, so `credfresh run` does not re-execute
itself). The Roles Anywhere helper's model, one process per profile, is costed with
`peer_helper/main.go`, a standard-library Go stand-in built here when `go` is installed.
"""

from __future__ import annotations

import os
import resource
import secrets
import shutil
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Final

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

CLIENT_FLOOR: Final = (
    "import botocore.session\n"
    "s = botocore.session.get_session()\n"
    "c = s.create_client('sts', region_name='us-east-1', aws_access_key_id='AKIDFLOOR', "
    "aws_secret_access_key='floor')\n"
)
CPU_FLOOR: Final = (
    "import sys, time, botocore.session\n"
    "s = botocore.session.get_session()\n"
    "c = s.create_client('sts', region_name='us-east-1', endpoint_url=sys.argv[1], "
    "aws_access_key_id=sys.argv[2], aws_secret_access_key=sys.argv[3])\n"
    "call = lambda: c.assume_role(RoleArn=sys.argv[4], RoleSessionName='floor')\n"
    "for _ in range(20): call()\n"
    "began = time.process_time()\n"
    "for _ in range(int(sys.argv[5])): call()\n"
    "print(1000 * (time.process_time() - began) / int(sys.argv[5]))\n"
)
# botocore alone with the daemon's concurrency: one client, `workers` threads, `calls` calls
# after one warming call per thread (its connections); prints wall seconds and CPU ms a call.
POOL_FLOOR: Final = (
    "import sys, time, botocore.session, botocore.config\n"
    "from concurrent.futures import ThreadPoolExecutor\n"
    "workers, calls = int(sys.argv[5]), int(sys.argv[6])\n"
    "s = botocore.session.get_session()\n"
    "c = s.create_client('sts', region_name='us-east-1', endpoint_url=sys.argv[1], "
    "aws_access_key_id=sys.argv[2], aws_secret_access_key=sys.argv[3], "
    "config=botocore.config.Config(max_pool_connections=workers, "
    "retries={'total_max_attempts': 1}))\n"
    "call = lambda i: c.assume_role(RoleArn=sys.argv[4], RoleSessionName=f'floor{i}')\n"
    "with ThreadPoolExecutor(workers) as pool:\n"
    "    list(pool.map(call, range(workers)))\n"
    "    cpu, began = time.process_time(), time.perf_counter()\n"
    "    list(pool.map(call, range(calls)))\n"
    "    print(time.perf_counter() - began, 1000 * (time.process_time() - cpu) / calls)\n"
)
FIRST_CALL_FLOOR: Final = (
    "import sys, botocore.session\n"
    "s = botocore.session.get_session()\n"
    "c = s.create_client('sts', region_name='us-east-1', endpoint_url=sys.argv[1], "
    "aws_access_key_id=sys.argv[2], aws_secret_access_key=sys.argv[3])\n"
    "c.assume_role(RoleArn=sys.argv[4], RoleSessionName='floor')\n"
)

# The design card's other libraries, which any credfresh pays for before its own code runs.
STACK_IMPORTS: Final = "import structlog, apscheduler.schedulers.background, watchdog.observers\n"
# The stack doing the daemon's STS work without credfresh: its imports, one client, and
# `threads` x `each` AssumeRole calls on `threads` threads; prints its peak RSS (kB).
STACK_CALLS_FLOOR: Final = (
    STACK_IMPORTS + "import sys, threading, botocore.session\n"
    "s = botocore.session.get_session()\n"
    "c = s.create_client('sts', region_name='us-east-1', endpoint_url=sys.argv[1], "
    "aws_access_key_id=sys.argv[2], aws_secret_access_key=sys.argv[3])\n"
    "threads, each = int(sys.argv[5]), int(sys.argv[6])\n"
    "def work():\n"
    "    for _ in range(each): c.assume_role(RoleArn=sys.argv[4], RoleSessionName='floor')\n"
    "pool = [threading.Thread(target=work) for _ in range(threads)]\n"
    "for t in pool: t.start()\n"
    "for t in pool: t.join()\n"
    "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])\n"
)


def _peak_rss_mb(code: str) -> float:
    """Peak RSS (VmHWM, read by the process itself at its end) of `python -c CODE`."""
    report = "\nprint([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0])"
    done = subprocess.run(
        [sys.executable, "-c", code + report],
        env=base_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout.split()[-2]) / 1024


def _child_cpu(code: str) -> float:
    """CPU seconds (user + system) of `python -c CODE`, from the children's rusage."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", code], env=base_env(), check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def _botocore_load_cpu() -> float:
    """CPU seconds botocore's import and one STS client cost, once per process: start-up a
    daemon whose profiles are all fresh never pays (botocore loads with the first call)."""
    loaded = median(_child_cpu(CLIENT_FLOOR) for _ in range(5))
    return max(0.0, loaded - median(_child_cpu("pass") for _ in range(5)))


def _wall(code: str) -> float:
    began = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=base_env(), check=True)
    return time.perf_counter() - began


def _first_call_floor(stub: Stub, prelude: str = "") -> float:
    """Spawn -> the STS's receipt of the call, for the smallest botocore program (after
    `prelude`, the stack's imports)."""
    walkthrough = stub.walkthrough
    assert walkthrough is not None
    stub.api.reset()
    began = time.time()
    subprocess.run(
        [
            sys.executable,
            "-c",
            prelude + FIRST_CALL_FLOOR,
            stub.url,
            walkthrough.access_key_id,
            walkthrough.secret_access_key,
            walkthrough.role_arn,
        ],
        env=base_env(),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return stub.request_times()[0] - began


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


def _floor_output(stub: Stub, code: str, latency: float, *extra: str) -> list[str]:
    """The words a botocore floor program printed, run against the stub at `latency` with the
    walkthrough's keys and role (then `extra`) as its arguments."""
    walkthrough = stub.walkthrough
    assert walkthrough is not None
    stub.prepare(lifetime=None, latency=latency)
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            stub.url,
            walkthrough.access_key_id,
            walkthrough.secret_access_key,
            walkthrough.role_arn,
            *extra,
        ],
        env=base_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.split()


def _stack_calls_mb(stub: Stub, calls: int) -> float:
    """Peak RSS (MB) of the stack making the 10-profile daemon's `calls` AssumeRole calls on
    as many threads as it has profiles, at the stub's usual latency."""
    each = str(max(1, calls // SMALL))
    return int(_floor_output(stub, STACK_CALLS_FLOOR, 0.05, str(SMALL), each)[-1]) / 1024


def _cpu_floor(stub: Stub, calls: int) -> float:
    """botocore's own CPU per AssumeRole call (ms): one client, one thread, STS at 0 ms."""
    return float(_floor_output(stub, CPU_FLOOR, 0.0, str(calls))[-1])


def _pool_floor(stub: Stub, workers: int, latency: float) -> tuple[float, float]:
    """(wall s, CPU ms a call) of 1,000 AssumeRole calls by botocore alone on `workers`
    threads: what the daemon's concurrency costs before credfresh does anything."""
    wall, cpu = _floor_output(stub, POOL_FLOOR, latency, str(workers), str(LARGE))[-2:]
    return float(wall), float(cpu)


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


def run(stub: Stub, *, runs: int = 5, cycles: int = 10, cold_runs: int = 3) -> Report:
    """Every #20 row with its floor; `runs` start-ups and `cycles` refresh cycles."""
    import_s = median(_wall("import botocore.session") for _ in range(runs + 2))
    client_mb = median(_peak_rss_mb(CLIENT_FLOOR) for _ in range(3))
    bare_mb = median(_peak_rss_mb("pass") for _ in range(3))
    call_floor = median(_first_call_floor(stub) for _ in range(runs))
    stack_call = median(_first_call_floor(stub, STACK_IMPORTS) for _ in range(runs))
    stack_mb = median(_peak_rss_mb(STACK_IMPORTS + CLIENT_FLOOR) for _ in range(3))
    starts = _start_times(stub, runs, lifetime=60.0)
    peak_mb, threads, calls = _small_memory(stub, cycles, lifetime=12.0)
    calls_mb = median(_stack_calls_mb(stub, calls) for _ in range(3))
    cpu_floor = _cpu_floor(stub, 300)
    _, pool_cpu = _pool_floor(stub, 16, 0.0)
    pool_wall = median(
        _pool_floor(stub, COLD_CONCURRENCY, COLD_LATENCY)[0] for _ in range(cold_runs)
    )
    botocore_load = _botocore_load_cpu()
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
    rows = [
        Row(
            f"peak RSS, `credfresh run`, 10 profiles, {cycles} refresh cycles at lifetime 12 s "
            f"({calls} refreshes), container endpoint and health server on; {threads} threads",
            f"{peak_mb:.1f} MB",
            f"<= {RSS_RATIO:g}x the floor",
            f"{floor_rss}; the stack's imports beside it: {stack_mb:.1f} MB; the stack making "
            f"the same {calls} AssumeRole calls on {SMALL} threads: {calls_mb:.1f} MB",
            f"{peak_mb / client_mb:.2f}x ({peak_mb / stack_mb:.2f}x the stack's floor, "
            f"{peak_mb / calls_mb:.2f}x the stack making the same calls)",
            ok=peak_mb <= RSS_RATIO * client_mb,
            why=f"the design card's structlog, APScheduler and watchdog making the daemon's "
            f"STS calls, without any credfresh code, peak at {calls_mb:.1f} MB = "
            f"{calls_mb / client_mb:.2f}x the floor: the target leaves "
            f"{RSS_RATIO * client_mb - calls_mb:.1f} MB for all of credfresh's code and state",
        ),
        Row(
            f"spawn -> first STS call, 10 profiles (median of {runs})",
            f"{first:.3f} s",
            f"<= {FIRST_CALL_RATIO:g}x the floor",
            f"{floor_import}; smallest botocore AssumeRole program: {call_floor:.3f} s; the "
            f"same after the stack's imports (structlog, APScheduler, watchdog): "
            f"{stack_call:.3f} s",
            f"{first / import_s:.2f}x ({first / call_floor:.2f}x the AssumeRole program, "
            f"{first / stack_call:.2f}x it after the stack's imports)",
            ok=first <= FIRST_CALL_RATIO * import_s,
            why="the smallest AssumeRole program after the design card's other imports takes "
            f"{stack_call:.3f} s = {stack_call / import_s:.2f}x the import alone, before any "
            "credfresh code",
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
            f"botocore alone, one client, one thread: {cpu_floor:.2f} ms per AssumeRole; "
            f"on 16 threads: {pool_cpu:.2f} ms",
            f"{cpu_ms / cpu_floor:.2f}x ({cpu_ms / pool_cpu:.2f}x botocore on 16 threads)",
            ok=cpu_ms <= MAX_CPU_MS,
            why=f"botocore's own CPU per AssumeRole call, measured in this run, is "
            f"{cpu_floor:.2f} ms on one thread and {pool_cpu:.2f} ms on the daemon's 16: "
            f"{pool_cpu / MAX_CPU_MS:.0%} of the target before credfresh schedules, merges or "
            "writes anything",
        ),
        Row(
            f"CPU per refresh in steady refresh waves, 1,000 profiles, lifetime 20 s, STS at 0 ms "
            f"({refreshes} refreshes, each write of the whole file included)",
            f"{steady_ms:.2f} ms",
            "-",
            f"botocore alone: {cpu_floor:.2f} ms",
            f"{steady_ms / cpu_floor:.2f}x",
        ),
        Row(
            f"cold start, 1,000 profiles, max_concurrency {COLD_CONCURRENCY}, STS 50 ms: first "
            f"STS call -> all on disk (median of {cold_runs}; spawn -> all on disk {whole:.2f} s)",
            f"{phase:.2f} s",
            f"<= {COLD_RATIO:g}x the latency bound",
            f"latency bound 1,000 x 50 ms / {COLD_CONCURRENCY} = {bound:.2f} s; botocore alone, "
            f"{COLD_CONCURRENCY} threads, the same 1,000 calls: {pool_wall:.2f} s",
            f"{phase / bound:.2f}x ({phase / pool_wall:.2f}x botocore alone)",
            ok=phase <= COLD_RATIO * bound,
            why=f"botocore alone, making the same 1,000 calls on {COLD_CONCURRENCY} threads in one "
            f"interpreter, takes {pool_wall:.2f} s = {pool_wall / bound:.2f}x the latency bound: "
            "its CPU, not the latency, bounds a cold start under the GIL",
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
        f"spawn -> call {call_floor:.3f} s (after the stack's imports: {stack_call:.3f} s); "
        f"botocore CPU per AssumeRole {cpu_floor:.3f} ms (16 threads: {pool_cpu:.3f} ms); "
        f"botocore alone, 1,000 calls on {COLD_CONCURRENCY} threads at 50 ms: {pool_wall:.2f} s."
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
