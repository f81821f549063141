"""The design card's stack at the daemon's work, without credfresh: the floor of #20's rows.

structlog renders one JSON line per refresh, APScheduler's background scheduler runs each
refresh as a one-shot job on its thread pool (the daemon's concurrency), watchdog watches a
directory, two of `http.server`'s threading servers listen on loopback (the 10-profile RSS
row's health server and credentials endpoint), and one botocore STS client makes the calls.
Nothing else: no config, no credentials file, no state, no deadline. Whatever credfresh
does beyond this is its own cost.

    python stack_floor.py URL KEY SECRET ROLE WORKERS CALLS WAVES WATCH_DIR

runs CALLS refreshes `WAVES` times over (each wave scheduled at once, the next after the
last job of the one before) and prints, on one line: seconds from the first wave's first
job to its last answer, CPU ms per refresh over the waves after the first (the first pays
botocore's connections and the pool's threads), and its peak RSS in kB (VmHWM).
"""

from __future__ import annotations

import sys
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import botocore.config
import botocore.session
import structlog
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer


def main(argv: list[str]) -> None:
    url, key, secret, role = argv[:4]
    workers, calls, waves = (int(value) for value in argv[4:7])
    log = structlog.wrap_logger(
        structlog.PrintLogger(sys.stderr),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
    )
    observer = Observer()
    observer.schedule(FileSystemEventHandler(), argv[7])
    observer.start()
    scheduler = BackgroundScheduler(
        timezone=UTC,
        executors={"default": ThreadPoolExecutor(workers)},
        job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1},
    )
    scheduler.start()
    client: Any = botocore.session.get_session().create_client(
        "sts",
        region_name="us-east-1",
        endpoint_url=url,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=botocore.config.Config(
            max_pool_connections=workers, retries={"total_max_attempts": 1}
        ),
    )
    done = threading.Semaphore(0)

    def refresh(name: str) -> None:
        answer = client.assume_role(RoleArn=role, RoleSessionName=name)
        expires = answer["Credentials"]["Expiration"]
        log.info("refreshed", profile=name, expires_at=expires.isoformat())
        done.release()

    servers: list[ThreadingHTTPServer] = []
    first_wave = 0.0
    cpu = 0.0
    for wave in range(waves):
        if wave == 1:
            cpu = time.process_time()
        began = time.perf_counter()
        now = datetime.now(UTC)
        for index in range(calls):
            name = f"p{index:04d}"
            scheduler.add_job(refresh, "date", run_date=now, args=[name], id=name)
        if wave == 0:  # as the daemon: its listeners start once the first pass is under way
            servers = [ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) for _ in "ab"]
            for server in servers:
                threading.Thread(target=server.serve_forever, daemon=True).start()
        for _ in range(calls):
            done.acquire()
        if wave == 0:
            first_wave = time.perf_counter() - began
    per_call = 1000 * (time.process_time() - cpu) / (calls * (waves - 1)) if waves > 1 else 0.0
    scheduler.shutdown(wait=False)
    observer.stop()
    for server in servers:
        server.shutdown()
    with open("/proc/self/status") as status:
        peak = next(line for line in status if line.startswith("VmHWM")).split()[1]
    print(f"{first_wave:.4f} {per_call:.4f} {peak}")


if __name__ == "__main__":
    main(sys.argv[1:])
