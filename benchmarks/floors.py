"""Floors for #20's rows: programs that do a part of the daemon's work with botocore (and the
design card's stack) and nothing of credfresh, each run against the same stub as the daemon.

- botocore alone: the import, one client's peak RSS, one client's first call, its CPU per
  AssumeRole on one thread and on a pool of threads;
- the design card's stack at the daemon's work (`stack_floor.py`): structlog, APScheduler,
  watchdog, two `http.server` listeners and one client, making refreshes as one-shot jobs.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from statistics import median
from typing import Final

from harness import BENCH_DIR, Stub, base_env, fresh_dir

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
# The design card's other libraries, which any credfresh pays for before its own code runs.
STACK_IMPORTS: Final = "import structlog, apscheduler.schedulers.background, watchdog.observers\n"


def peak_rss_mb(code: str) -> float:
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


def child_cpu(code: str) -> float:
    """CPU seconds (user + system) of `python -c CODE`, from the children's rusage."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", code], env=base_env(), check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def botocore_load_cpu() -> float:
    """CPU seconds botocore's import and one STS client cost, once per process: start-up a
    daemon whose profiles are all fresh never pays (botocore loads with the first call)."""
    loaded = median(child_cpu(CLIENT_FLOOR) for _ in range(5))
    return max(0.0, loaded - median(child_cpu("pass") for _ in range(5)))


def wall(code: str) -> float:
    began = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=base_env(), check=True)
    return time.perf_counter() - began


def against_stub(stub: Stub, program: list[str], *extra: str) -> tuple[float, str]:
    """Run `python PROGRAM URL KEY SECRET ROLE EXTRA...` with the walkthrough's keys and role
    against the stub: (the time it was spawned, what it printed)."""
    walkthrough = stub.walkthrough
    assert walkthrough is not None
    began = time.time()
    done = subprocess.run(
        [
            sys.executable,
            *program,
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
    return began, done.stdout


def first_call_floor(stub: Stub, prelude: str = "") -> float:
    """Spawn -> the STS's receipt of the call, for the smallest botocore program (after
    `prelude`, the stack's imports)."""
    stub.api.reset()
    began, _ = against_stub(stub, ["-c", prelude + FIRST_CALL_FLOOR])
    return stub.request_times()[0] - began


def floor_output(stub: Stub, code: str, latency: float, *extra: str) -> list[str]:
    """The words a botocore floor program printed, run against the stub at `latency` with
    `extra` after the usual arguments."""
    stub.prepare(lifetime=None, latency=latency)
    return against_stub(stub, ["-c", code], *extra)[1].split()


def cpu_floor(stub: Stub, calls: int) -> float:
    """botocore's own CPU per AssumeRole call (ms): one client, one thread, STS at 0 ms."""
    return float(floor_output(stub, CPU_FLOOR, 0.0, str(calls))[-1])


def pool_floor(stub: Stub, workers: int, latency: float, calls: int) -> tuple[float, float]:
    """(wall s, CPU ms a call) of `calls` AssumeRole calls by botocore alone on `workers`
    threads: what the daemon's concurrency costs before credfresh does anything."""
    wall, cpu = floor_output(stub, POOL_FLOOR, latency, str(workers), str(calls))[-2:]
    return float(wall), float(cpu)


STACK_FLOOR: Final = BENCH_DIR / "stack_floor.py"


@dataclass(frozen=True)
class StackRun:
    """One run of `stack_floor.py`: spawn -> the stub's receipt of its first call, the first
    wave's first job -> last answer, CPU ms per refresh after the first wave, peak RSS."""

    first_call: float
    first_wave: float
    cpu_ms: float
    peak_mb: float


def stack_at_work(stub: Stub, *, workers: int, calls: int, waves: int, latency: float) -> StackRun:
    """The design card's stack making `waves` waves of `calls` refreshes on `workers` threads,
    the stub at `latency`."""
    stub.prepare(lifetime=None, latency=latency)
    stub.api.reset()
    watched = str(fresh_dir("stack-floor"))
    began, out = against_stub(stub, [str(STACK_FLOOR)], *map(str, (workers, calls, waves)), watched)
    wave, cpu, peak = out.split()[-3:]
    return StackRun(stub.request_times()[0] - began, float(wave), float(cpu), int(peak) / 1024)


def stack_median(runs: list[StackRun]) -> StackRun:
    """Each figure's median over the runs."""
    return StackRun(*(median(getattr(r, f) for r in runs) for f in StackRun.__dataclass_fields__))
