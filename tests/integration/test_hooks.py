"""`on_refresh` hooks in a real `credfresh run`: a command and a signal after each landed
write, once per write for profiles sharing a hook, off the refresh path, never two at once,
with failures logged, counted and alerted after three in a row."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Project, leaks_in
from support.daemon_runner import DaemonProcess, parse_stamp
from support.waiting import wait_until

RECORDER = """
import json, os, sys, time
out = sys.argv[1]
started = time.time()
stdin_target = os.path.realpath("/proc/self/fd/0")
time.sleep(0.3)
with open(out, "a") as handle:
    handle.write(json.dumps({
        "argv": sys.argv[2:], "env": dict(os.environ), "stdin": stdin_target,
        "start": started, "end": time.time(),
    }) + "\\n")
"""

FLAKY = """
import os, sys
if os.path.exists(sys.argv[1]):
    sys.stderr.write("first line\\nboom: cannot reload\\n")
    sys.exit(3)
"""

LISTENER = """
import os, signal, sys, time
pid_file, out = sys.argv[1], sys.argv[2]
def hup(signum, frame):
    with open(out, "a") as handle:
        handle.write("HUP\\n")
signal.signal(signal.SIGHUP, hup)
with open(pid_file + ".tmp", "w") as handle:
    handle.write(f"{os.getpid()}\\n")
os.rename(pid_file + ".tmp", pid_file)
while True:
    time.sleep(3600)
"""


def _script(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A process that counts SIGHUPs, its pid in a pid file (like nginx)."""
    pid_file, out = tmp_path / "app.pid", tmp_path / "hups"
    proc = subprocess.Popen(
        [sys.executable, _script(tmp_path, "listener.py", LISTENER), str(pid_file), str(out)]
    )
    try:
        wait_until(pid_file.exists, 10, "the listener's pid file")
        yield pid_file, out
    finally:
        proc.kill()
        proc.wait()


def test_hooks_run_after_each_landed_write(
    project: Project, tmp_path: Path, listener: tuple[Path, Path], leak_watch: Any
) -> None:
    """a and b share one hook from `defaults`; c signals a pid file; d fails while a flag
    file exists; e hangs past its timeout while its refreshes go on."""
    record = tmp_path / "record.jsonl"
    flag = tmp_path / "failing"
    flag.touch()
    pid_file, hups = listener
    recorder = [sys.executable, _script(tmp_path, "recorder.py", RECORDER), str(record), "x"]
    project.sts.proxy.lifetime = 8
    project.document["defaults"]["on_refresh"] = {"command": recorder}
    project.document["alerts"] = {"after": "1h"}
    project.profile("a")
    project.profile("b")
    project.profile("c", on_refresh={"signal": {"pid_file": str(pid_file), "signal": "HUP"}})
    flaky = [sys.executable, _script(tmp_path, "flaky.py", FLAKY), str(flag)]
    project.profile("d", on_refresh={"command": flaky})
    hang = [sys.executable, "-c", "import time; time.sleep(60)"]
    project.profile("e", on_refresh={"command": hang, "timeout": "5s"})
    project.write_config()
    with DaemonProcess(project.config_path, project.env, tmp_path / "daemon.log") as proc:
        proc.wait_for(lambda events: _alerts(events, "firing") >= 1, 60, "hook_failed alert for d")
        flag.unlink()
        proc.wait_for(lambda events: _alerts(events, "resolved") >= 1, 60, "its resolution")
        wait_until(lambda: len(_records(record)) >= 3, 30, "three runs of the shared hook")
        wait_until(lambda: hups.exists() and hups.read_text().count("HUP") >= 2, 30, "two SIGHUPs")
        proc.wait_for(
            lambda events: (
                sum(
                    e.get("event") == "hook_failed" and "timed out" in e.get("reason", "")
                    for e in events
                )
                >= 2
            ),
            30,
            "e's hook timed out twice",
        )
        assert proc.stop() == 0
    events = proc.events()
    _check_shared_hook(_records(record), project)
    _check_failures(events)
    _check_hang(events)
    leak_watch(record)
    leak_watch(proc.log_path)
    assert not leaks_in(record.read_text())


def _alerts(events: list[dict[str, Any]], status: str) -> int:
    return sum(
        e.get("event") == "alert"
        and e.get("status") == status
        and str(e.get("alert_id", "")).endswith(":hook_failed:d")
        for e in events
    )


def _check_shared_hook(runs: list[dict[str, Any]], project: Project) -> None:
    """One run per write for the profiles that write carried; never two at once."""
    assert runs
    for run in runs:
        assert run["argv"] == ["x"]
        assert run["stdin"] == "/dev/null"
        env = run["env"]
        assert not [k for k in env if k.upper().startswith("AWS_")]
        assert env["CREDFRESH_CREDENTIALS_FILE"] == str(project.credentials_file)
        assert set(env["CREDFRESH_PROFILES"].split(",")) <= {"a", "b"}
    assert any(run["env"]["CREDFRESH_PROFILES"] == "a,b" for run in runs)  # the first write
    spans = sorted((run["start"], run["end"]) for run in runs)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end - 0.05  # one at a time (50 ms of clock slack)


def _check_failures(events: list[dict[str, Any]]) -> None:
    failed = [e for e in events if e.get("event") == "hook_failed" and e["profiles"] == ["d"]]
    assert len(failed) >= 3
    assert failed[0]["exit_status"] == 3
    assert failed[0]["stderr"] == "boom: cannot reload"
    assert [e["failures"] for e in failed[:3]] == [1, 2, 3]
    fired = [e for e in events if e.get("event") == "alert" and e.get("status") == "firing"]
    first_fired = next(e for e in fired if e["alert_id"].endswith(":hook_failed:d"))
    assert first_fired["timestamp"] >= failed[2]["timestamp"]  # not before the third
    ran = [e for e in events if e.get("event") == "hook_ran" and e["profiles"] == ["d"]]
    assert ran, "d's hook succeeded once the flag was gone"


def _check_hang(events: list[dict[str, Any]]) -> None:
    """e's hook hangs until its 5 s timeout; e's refreshes (every ~4 s) land meanwhile: a
    write of e falls inside a run of its hook (start = end - took_ms)."""
    hung = [
        e
        for e in events
        if e.get("event") == "hook_failed" and "e" in (e.get("profiles") or [])
        if "timed out" in e.get("reason", "")
    ]
    assert hung
    assert hung[0]["exit_status"] is None
    runs = [
        (parse_stamp(e["timestamp"]) - e["took_ms"] / 1000, parse_stamp(e["timestamp"]))
        for e in hung
    ]
    written_e = [
        parse_stamp(e["timestamp"])
        for e in events
        if e.get("event") == "file_written" and "e" in (e.get("profiles") or [])
    ]
    assert any(start < when < end for when in written_e for start, end in runs), (
        "no write of e while its hook hung"
    )


def test_pid_file_others_may_write_is_refused(project: Project, tmp_path: Path) -> None:
    """A pid file in a world-writable directory would let any user pick whom the daemon
    signals: `run` refuses the config (as root), naming the file."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    pid_file = shared / "app.pid"
    pid_file.write_text(f"{os.getpid()}\n")
    project.profile("a", on_refresh={"signal": {"pid_file": str(pid_file)}})
    project.write_config()
    result = subprocess.run(
        project.argv("run"),
        env=project.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "refusing to start" in result.stderr
    assert str(shared) in result.stderr
