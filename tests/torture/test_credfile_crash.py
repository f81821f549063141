"""Crash, concurrency and locking tests of the credentials-file writer, with real processes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from botocore.configloader import raw_config_parse

from credfresh.credfile.format import merge, view_of
from credfresh.credfile.store import read_managed, write_profiles
from credfresh.errors import CredfileError
from support.helpers_credfile import OWNER, child_env, make_creds

# Unmanaged content the writers must never disturb: comments, odd spacing, another owner.
BASE = (
    "# keep me\n"
    "[default]\n"
    "aws_access_key_id = AKIAHAND\n"
    "  ; indented comment\n"
    "region=eu-west-1\n"
    "\n"
    "[team]\n"
    "x_credfresh_owner = someone-else\n"
    "aws_access_key_id : AKIATEAM\n"
    "\n"
    + "".join(f"[filler-{i}]\nk = {'v' * 200}\n  continued\n\n" for i in range(60))
    + "; last comment\n"
)

# Writes forever: random batches of updates and removals over twelve profiles.
CRASH_CHILD = """
import itertools, random, sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from credfresh.credentials import Credentials
from credfresh.credfile.store import write_profiles

path, seed = Path(sys.argv[1]), int(sys.argv[2])
rng = random.Random(seed)
names = [f"crash-{i}" for i in range(12)]
now = datetime(2026, 11, 28, 15, 0, tzinfo=UTC)
print("ready", flush=True)
for serial in itertools.count():
    chosen = rng.sample(names, rng.randint(1, 6))
    cut = rng.randint(0, len(chosen))
    updates = {
        name: Credentials(f"ASIA{serial:016d}", "s" * 40, "t" * rng.randint(300, 900),
                          now + timedelta(hours=1), now)
        for name in chosen[:cut]
    }
    write_profiles(path, "test-owner", updates, chosen[cut:])
"""

# Writes its own ten profiles 200 times; the serial tells which write won.
WORKER_CHILD = """
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from credfresh.credentials import Credentials
from credfresh.credfile.store import write_profiles

path, worker = Path(sys.argv[1]), int(sys.argv[2])
now = datetime(2026, 11, 28, 15, 0, tzinfo=UTC)
for serial in range(200):
    creds = Credentials(f"ASIA{worker:04d}{serial:012d}", "s" * 40, "t" * 400,
                        now + timedelta(hours=1), now)
    result = write_profiles(path, "test-owner", {f"w{worker}-{serial % 10}": creds})
    assert result.written
"""

HOLDER_CHILD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""


def _spawn(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _unmanaged(text: str) -> str:
    """The file with all of our sections removed: must always equal BASE."""
    mine = set(view_of(text, OWNER).managed) | set(view_of(text, OWNER).damaged)
    return merge(text, OWNER, {}, mine).text


def _crash_rounds(path: Path, seconds: float, seed: int) -> int:
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    kills = 0
    while time.monotonic() < deadline:
        child = _spawn(CRASH_CHILD, str(path), str(rng.randrange(1 << 30)))
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n", child.stderr.read() if child.stderr else ""
        time.sleep(rng.uniform(0, 0.06))
        child.send_signal(signal.SIGKILL)
        child.communicate()
        assert child.returncode == -signal.SIGKILL, "the writer died on its own"
        kills += 1
        text = path.read_text()
        raw_config_parse(str(path))  # raises if botocore could not read it
        assert _unmanaged(text) == BASE
        assert not view_of(text, OWNER).damaged
    return kills


def _check_crash_leftovers(path: Path) -> None:
    """Every temp file left by a killed writer goes at the next write."""
    write_profiles(path, OWNER, {"after-crash": make_creds(1)})
    assert [name for name in os.listdir(path.parent) if ".credfresh-" in name] == []
    assert _unmanaged(path.read_text()) == BASE


class TestCrash:
    def test_sigkill_at_random_points_never_breaks_the_file(self, tmp_path: Path) -> None:
        """Killing writers mid-flight leaves a parseable file with every unmanaged byte."""
        path = tmp_path / "credentials"
        path.write_text(BASE)
        kills = _crash_rounds(path, seconds=5.0, seed=1)
        assert kills >= 10
        _check_crash_leftovers(path)

    @pytest.mark.slow
    def test_sigkill_torture(self, tmp_path: Path) -> None:
        """The same for a minute, for `make torture`."""
        path = tmp_path / "credentials"
        path.write_text(BASE)
        _crash_rounds(path, seconds=60.0, seed=2)
        _check_crash_leftovers(path)


class TestConcurrency:
    def test_four_writers_lose_no_update(self, tmp_path: Path) -> None:
        """Four processes writing their own profiles 200 times each: every last write survives."""
        path = tmp_path / "credentials"
        path.write_text(BASE)
        workers = [_spawn(WORKER_CHILD, str(path), str(worker)) for worker in range(4)]
        for child in workers:
            _, stderr = child.communicate(timeout=120)
            assert child.returncode == 0, stderr
        view = read_managed(path, OWNER)
        expected = {
            f"w{worker}-{slot}": f"ASIA{worker:04d}{190 + slot:012d}"
            for worker in range(4)
            for slot in range(10)
        }
        assert {name: creds.access_key_id for name, creds in view.managed.items()} == expected
        assert _unmanaged(path.read_text()) == BASE


class TestLock:
    def test_lock_held_by_another_process_times_out(self, tmp_path: Path) -> None:
        """A writer waits for the flock at most `lock_timeout`, then fails without writing."""
        path = tmp_path / "credentials"
        path.write_text(BASE)
        holder = _spawn(HOLDER_CHILD, f"{path}.lock")
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline() == "locked\n"
            began = time.monotonic()
            with pytest.raises(CredfileError) as caught:
                write_profiles(path, OWNER, {"p": make_creds(1)}, lock_timeout=0.5)
            waited = time.monotonic() - began
        finally:
            holder.kill()
            holder.communicate()
        assert caught.value.code == "write_failed"
        assert "lock" in caught.value.message
        assert 0.5 <= waited < 3.0
        assert path.read_text() == BASE
        assert write_profiles(path, OWNER, {"p": make_creds(1)}).written
