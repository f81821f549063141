"""Helpers shared by the tests and the benchmarks: the daemon runner, the waits, the checks.

Importable as `support` because pytest puts tests/ on sys.path (`pythonpath` in
pyproject.toml); benchmarks add tests/ themselves. The paths below are the one place that
knows where the repository's parts are, for tests that start child interpreters.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DAEMON_DIR = REPO / "daemon"
TESTS_DIR = REPO / "tests"

__all__ = ["DAEMON_DIR", "REPO", "TESTS_DIR"]
