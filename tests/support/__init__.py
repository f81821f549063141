"""Helpers shared by the tests and the benchmarks: the daemon runner, the waits, the checks.

Importable as `support` because pytest puts tests/ on sys.path (`pythonpath` in
pyproject.toml); benchmarks add tests/ themselves. The paths below are the one place that
knows where the repository's parts are, for tests that start child interpreters.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DAEMON_DIR = REPO / "daemon"
TESTS_DIR = REPO / "tests"


def examples(full: int) -> int:
    """A property test's example count: a third in `make test`, all of it in `make props`.

    `CREDFRESH_PROPERTY_SCALE` (default 0.34) scales every count; `make props` sets 1.
    """
    scale = float(os.environ.get("CREDFRESH_PROPERTY_SCALE", "0.34"))
    return max(10, round(full * scale))


def coverage_environ() -> dict[str, str]:
    """This process's COVERAGE_* variables: a child given a clean environment is measured too."""
    return {key: value for key, value in os.environ.items() if key.startswith("COVERAGE_")}


def unmeasured_environ() -> dict[str, str]:
    """This process's environment without COVERAGE_*: for a child whose imports or timing are
    the thing tested, or that is SIGKILLed (it would save no data anyway)."""
    return {key: value for key, value in os.environ.items() if not key.startswith("COVERAGE_")}


def stderr_of(code: str, timeout: float = 60.0) -> str:
    """What `python -c CODE` wrote to stderr, run unmeasured: for a check of what a command
    imports (coverage's own imports would count as the command's)."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env=unmeasured_environ(),
    ).stderr


__all__ = [
    "DAEMON_DIR",
    "REPO",
    "TESTS_DIR",
    "coverage_environ",
    "examples",
    "stderr_of",
    "unmeasured_environ",
]


def children(parent: int | None = None) -> list[str]:
    """The pids of the children of `parent` (this process) still around (zombies included)."""
    parent = os.getpid() if parent is None else parent
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                found.append(entry.name)
    return found
