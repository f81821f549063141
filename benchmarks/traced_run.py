"""`credfresh ...` under tracemalloc: each SIGUSR2 dumps a snapshot (for bench_profile.py)."""

from __future__ import annotations

import os
import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType


def main() -> int:
    """Start tracing, install the dump handler, then hand over to credfresh's CLI."""
    out = Path(os.environ["BENCH_SNAPSHOT_DIR"])
    tracemalloc.start(int(os.environ.get("BENCH_TRACE_FRAMES", "10")))
    dumps = 0

    def dump(signum: int, frame: FrameType | None) -> None:
        nonlocal dumps
        dumps += 1
        target = out / f"snapshot-{dumps}.pickle"
        tracemalloc.take_snapshot().dump(str(target.with_suffix(".tmp")))
        target.with_suffix(".tmp").replace(target)

    signal.signal(signal.SIGUSR2, dump)
    from credfresh.cli import main as cli_main

    return int(cli_main(sys.argv[1:]))


if __name__ == "__main__":
    raise SystemExit(main())
