"""The secrets rule over the whole run: no issued secret in anything credfresh printed.

Runs last (the `whole_run` marker; conftest moves it to the end): it scans every output the
session captured (logs, status output, error messages, exceptions) and every daemon log, state
file, alert body and metrics file left under the session's temp directory, against every
secret the development STS issued and the walkthrough user's source secret.
"""

from __future__ import annotations

import pytest

import conftest
from credfresh.devsts import DevSTS

SCANNED_SUFFIXES = (".log", ".json", ".jsonl", ".prom")

pytestmark = pytest.mark.whole_run


def test_guard_catches_a_planted_secret(sts: DevSTS) -> None:
    """The guard itself works: a planted issued secret is found, and named only by kind."""
    conftest.remember_secrets(sts)
    secret = next(iter(conftest.SECRETS))
    found = conftest.leaks_in(f"some log line {secret} more")
    assert found
    assert all(secret not in label for label in found)


def test_no_secret_in_any_output(sts: DevSTS, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every output of the session's scenarios is free of issued and source secrets."""
    conftest.remember_secrets(sts)
    assert conftest.SECRETS, "the session issued no credentials: nothing was checked"
    leaks: dict[str, list[str]] = {}
    for index, text in enumerate(conftest.SEEN):
        for label in conftest.leaks_in(text):
            leaks.setdefault(label, []).append(f"captured output #{index}")
    root = tmp_path_factory.getbasetemp()
    scanned = 0
    for path in root.rglob("*"):
        if not path.is_file() or path.suffix not in SCANNED_SUFFIXES:
            continue
        scanned += 1
        text = path.read_text(errors="replace")
        for label in conftest.leaks_in(text):
            leaks.setdefault(label, []).append(str(path.relative_to(root)))
    assert scanned > 0
    assert not leaks, f"secrets appeared: { {k: v[:5] for k, v in leaks.items()} }"
