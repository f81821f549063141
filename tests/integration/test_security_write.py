"""A root daemon's writes cannot be steered by a user who renames directories (issue 15 part 2)."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from credfresh.credfile.atomic import atomic_write
from credfresh.credfile.store import write_profiles
from credfresh.engine import state
from credfresh.errors import CredfileError
from credfresh.process.daemon import InstanceLock
from support import TESTS_DIR
from support.daemon_runner import DaemonProcess, env_with
from support.helpers_credfile import NOBODY, OWNER, SECRET_MARK, child_env, make_creds

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the rules under test are root's"),
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv"),
]

AS_NOBODY = ("setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups")
FOREIGN = "[hand]\naws_access_key_id = AKIAHAND\n"
OTHER = "[other]\naws_access_key_id = AKIAOTHER\n"
HOME_HINT = "run credfresh as that user (the per-user unit) instead"

# Swaps <base>/cur and <base>/alt by rename until the deadline, as fast as it can.
SWAPPER = """
import os, sys, time
base, seconds = sys.argv[1], float(sys.argv[2])
cur, alt, spare = f"{base}/cur", f"{base}/alt", f"{base}/spare"
print("ready", flush=True)
deadline = time.monotonic() + seconds
swaps = 0
failures = 0
while time.monotonic() < deadline:
    try:
        os.rename(cur, spare)
        os.rename(alt, cur)
        os.rename(spare, alt)
        swaps += 1
    except OSError:
        failures += 1
        for src, dst in ((spare, alt), (spare, cur)):
            try:
                os.rename(src, dst)
            except OSError:
                pass
print(failures, swaps, flush=True)
"""


@pytest.fixture
def shared() -> Iterator[Path]:
    """A root-owned 0755 directory outside the 0700 pytest tree, reachable by uid 65534."""
    base = Path(tempfile.mkdtemp(prefix="credfresh-sec-", dir="/tmp"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _dir(path: Path, uid: int, mode: int) -> Path:
    path.mkdir()
    os.chown(path, uid, uid)
    path.chmod(mode)
    return path


def _entries(dir_fd: int) -> dict[str, os.stat_result]:
    """What a directory holds, looked up by a handle so renames above it do not matter."""
    return {
        name: os.stat(name, dir_fd=dir_fd, follow_symlinks=False) for name in os.listdir(dir_fd)
    }


def _read(dir_fd: int, name: str) -> str:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
    except FileNotFoundError:
        return ""
    with os.fdopen(fd) as handle:
        return handle.read()


def _swap(base: Path) -> None:
    os.rename(base / "cur", base / "spare")
    os.rename(base / "alt", base / "cur")
    os.rename(base / "spare", base / "alt")


class TestDirectorySwapRace:
    def test_swapping_user_gets_no_secret(self, shared: Path) -> None:
        """Root writes while uid 65534 swaps two directories under its own: nothing leaks.

        The user owns `user/`, holding root's credentials directory and one of its own; it
        swaps them by rename in a tight loop for 2 s. Every root write must land in root's
        directory or fail (`unsafe_path`/`write_failed`); afterwards no file of the user
        holds a secret, no temp file is left in either directory and root created nothing
        in the user's one.
        """
        user = _dir(shared / "user", NOBODY, 0o755)
        mine = _dir(user / "cur", 0, 0o700)
        theirs = _dir(user / "alt", NOBODY, 0o755)
        (theirs / "credentials").write_text(OTHER)
        os.chown(theirs / "credentials", NOBODY, NOBODY)
        mine_fd = os.open(mine, os.O_RDONLY | os.O_DIRECTORY)
        theirs_fd = os.open(theirs, os.O_RDONLY | os.O_DIRECTORY)
        swapper = subprocess.Popen(
            [*AS_NOBODY, sys.executable, "-c", SWAPPER, str(user), "2.0"],
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        violations: list[str] = []
        codes: dict[str, int] = {}
        messages: set[str] = set()
        try:
            assert swapper.stdout is not None
            assert swapper.stdout.readline().strip() == "ready"
            serial = 0
            while swapper.poll() is None:
                serial += 1
                creds = make_creds(serial)
                try:
                    write_profiles(
                        user / "cur" / "credentials", OWNER, {"p": creds}, lock_timeout=1.0
                    )
                except CredfileError as exc:
                    codes[exc.code] = codes.get(exc.code, 0) + 1
                    messages.add(str(exc))
                    continue
                except OSError as exc:
                    codes[type(exc).__name__] = codes.get(type(exc).__name__, 0) + 1
                    continue
                codes["ok"] = codes.get("ok", 0) + 1
                if creds.secret_access_key not in _read(mine_fd, "credentials"):
                    violations.append(f"write {serial} succeeded but did not land in root's dir")
            swaps = int(swapper.communicate(timeout=30)[0].split()[-1])
            for label, dir_fd in (("root's", mine_fd), ("the user's", theirs_fd)):
                for name, st in _entries(dir_fd).items():
                    if ".credfresh-" in name:
                        violations.append(f"temp file {name} left in {label} directory")
                    if st.st_uid != 0 and SECRET_MARK in _read(dir_fd, name):
                        violations.append(f"{name} in {label} directory is uid {st.st_uid}'s")
            for name, st in _entries(theirs_fd).items():
                if st.st_uid == 0:
                    violations.append(f"root created {name} in the user's directory")
            if SECRET_MARK in _read(theirs_fd, "credentials"):
                violations.append("a secret was written into the user's credentials file")
        finally:
            if swapper.poll() is None:
                swapper.kill()
                swapper.wait()
            os.close(mine_fd)
            os.close(theirs_fd)
        assert swaps > 100, swaps
        assert sum(codes.values()) > 10, codes
        kinds = Counter(re.sub(r"[0-9]+|\.credentials\.credfresh-\S+", "N", v) for v in violations)
        assert not violations, (dict(kinds), codes)
        assert set(codes) <= {"ok", "unsafe_path", "write_failed"}, codes
        assert any(str(user) in message for message in messages)


class TestAncestorRule:
    @pytest.mark.parametrize("kind", ["credentials", "state", "textfile", "pid"])
    def test_user_owned_ancestor_is_refused(self, shared: Path, kind: str) -> None:
        """As root, a file under a directory another user owns is `unsafe_path` naming it."""
        user = _dir(shared / "user", NOBODY, 0o755)
        below = _dir(user / "below", 0, 0o700)
        writers: dict[str, Callable[[], Any]] = {
            "credentials": lambda: write_profiles(
                below / "credentials", OWNER, {"p": make_creds(1)}
            ),
            "state": lambda: state.save(below / "state.json", {}, {}),
            "textfile": lambda: atomic_write(below / "credfresh.prom", b"x 1\n", mode=0o644),
            "pid": lambda: InstanceLock(below / "credentials").acquire(),
        }
        with pytest.raises(CredfileError) as caught:
            writers[kind]()
        assert caught.value.code == "unsafe_path"
        assert f"directory {user} is owned by uid {NOBODY}" in str(caught.value)
        assert os.listdir(below) == []

    def test_group_writable_own_directory_is_refused(self, shared: Path) -> None:
        """As root, the file's own directory must be writable by root alone."""
        directory = _dir(shared / "aws", 0, 0o770)
        with pytest.raises(CredfileError) as caught:
            write_profiles(directory / "credentials", OWNER, {"p": make_creds(1)})
        assert caught.value.code == "unsafe_path"
        assert f"directory {directory} is writable by group or others" in str(caught.value)
        assert os.listdir(directory) == []

    def test_missing_directories_under_a_sticky_one_are_created(self) -> None:
        """A sticky /tmp above root's own new 0700 directories passes the rule."""
        base = Path("/tmp") / f"credfresh-sticky-{os.getpid()}-{time.monotonic_ns()}"
        try:
            write_profiles(base / "aws" / "credentials", OWNER, {"p": make_creds(1)})
            assert (base / "aws").stat().st_mode & 0o777 == 0o700
            assert "[p]" in (base / "aws" / "credentials").read_text()
        finally:
            shutil.rmtree(base, ignore_errors=True)

    def test_root_into_a_users_home_says_why(self, shared: Path) -> None:
        """The refusal names the user's directory and says to run credfresh as that user."""
        home = _dir(shared / "alice", NOBODY, 0o700)
        with pytest.raises(CredfileError) as caught:
            write_profiles(home / ".aws" / "credentials", OWNER, {"p": make_creds(1)})
        assert caught.value.code == "unsafe_path"
        assert str(home) in str(caught.value)
        assert HOME_HINT in str(caught.value)
        assert os.listdir(home) == []


class TestOneHandle:
    def _two_dirs(self, base: Path) -> tuple[int, int]:
        for name, text in (("cur", FOREIGN), ("alt", OTHER)):
            _dir(base / name, 0, 0o700)
            (base / name / "credentials").write_text(text)
        return (
            os.open(base / "cur", os.O_RDONLY | os.O_DIRECTORY),
            os.open(base / "alt", os.O_RDONLY | os.O_DIRECTORY),
        )

    def test_swap_before_rename_lands_in_the_handles_directory(self, shared: Path) -> None:
        """A directory swapped after the temp file is written does not move the write."""
        first_fd, second_fd = self._two_dirs(shared)
        creds = make_creds(7)
        try:
            result = write_profiles(
                shared / "cur" / "credentials",
                OWNER,
                {"p": creds},
                before_commit=lambda attempt: _swap(shared) if attempt == 1 else None,
            )
            assert result.written
            landed = creds.secret_access_key in _read(first_fd, "credentials")
            assert landed, "the write did not land in the directory the handle opened"
            assert _read(first_fd, "credentials").startswith(FOREIGN)
            assert _read(second_fd, "credentials") == OTHER
            assert sorted(_entries(second_fd)) == ["credentials"]
            assert [name for name in _entries(first_fd) if ".credfresh-" in name] == []
        finally:
            os.close(first_fd)
            os.close(second_fd)

    def test_generic_write_keeps_its_directory_too(self, shared: Path) -> None:
        """The state file and metrics textfile path (atomic_write) works in one handle too."""
        first_fd, second_fd = self._two_dirs(shared)
        try:
            assert atomic_write(
                shared / "cur" / "state.json", b"{}\n", before_rename=lambda: _swap(shared)
            )
            assert _read(first_fd, "state.json") == "{}\n"
            assert sorted(_entries(second_fd)) == ["credentials"]
            assert sorted(_entries(first_fd)) == ["credentials", "state.json"]
        finally:
            os.close(first_fd)
            os.close(second_fd)

    def test_target_handle_survives_a_rename_of_its_path(self, shared: Path) -> None:
        """What `open_target` opened stays the directory, whatever its path now names."""
        from credfresh.credfile.handles import open_target

        first_fd, second_fd = self._two_dirs(shared)
        try:
            with open_target(shared / "cur" / "credentials") as target:
                _swap(shared)
                atomic_write(target, b"[x]\n")
            assert _read(first_fd, "credentials") == "[x]\n"
            assert _read(second_fd, "credentials") == OTHER
        finally:
            os.close(first_fd)
            os.close(second_fd)


# As uid 65534 in its own tree: swap the directories after the temp file is synced.
NON_ROOT_SWAP = """
import os, sys
from pathlib import Path
from credfresh.credfile.store import write_profiles
from support.helpers_credfile import OWNER, make_creds
base = Path(sys.argv[1])
keep = os.open(base / "cur", os.O_RDONLY | os.O_DIRECTORY)
def swap(attempt):
    if attempt == 1:
        os.rename(base / "cur", base / "spare")
        os.rename(base / "alt", base / "cur")
        os.rename(base / "spare", base / "alt")
write_profiles(base / "cur" / "credentials", OWNER, {"p": make_creds(3)}, before_commit=swap)
fd = os.open("credentials", os.O_RDONLY, dir_fd=keep)
print("landed" if b"ASIA0000000000000003" in os.read(fd, 1 << 16) else "elsewhere")
"""


class TestOneHandleNonRoot:
    def test_non_root_write_stays_in_its_directory(self, shared: Path) -> None:
        """Without root's ancestor rule a user's own writer still works in one handle."""
        base = _dir(shared / "base", NOBODY, 0o755)
        for name, text in (("cur", FOREIGN), ("alt", OTHER)):
            _dir(base / name, NOBODY, 0o700)
            (base / name / "credentials").write_text(text)
            os.chown(base / name / "credentials", NOBODY, NOBODY)
        env = child_env()
        env["PYTHONPATH"] += os.pathsep + str(TESTS_DIR)
        done = subprocess.run(
            [*AS_NOBODY, sys.executable, "-c", NON_ROOT_SWAP, str(base)],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip() == "landed"
        assert (base / "cur" / "credentials").read_text() == OTHER
        assert sorted(os.listdir(base / "cur")) == ["credentials"]


class TestLockFiles:
    @pytest.mark.parametrize("home_owner", [0, NOBODY])
    def test_user_symlinked_aws_dir_is_refused(self, shared: Path, home_owner: int) -> None:
        """A user's `~/.aws` linked to a root directory makes root refuse, truncating nothing."""
        victim = _dir(shared / "victim", 0, 0o700)
        (victim / "credentials.credfresh.pid").write_text("keep me\n")
        home = _dir(shared / "home", home_owner, 0o755)
        (home / ".aws").symlink_to(victim)
        os.lchown(home / ".aws", NOBODY, NOBODY)
        lock = InstanceLock(home / ".aws" / "credentials")
        with pytest.raises(CredfileError) as caught:
            lock.acquire()
        lock.release()
        assert caught.value.code == "unsafe_path"
        assert (victim / "credentials.credfresh.pid").read_text() == "keep me\n"
        assert sorted(os.listdir(victim)) == ["credentials.credfresh.pid"]

    def test_pid_file_of_another_uid_is_refused(self, shared: Path) -> None:
        """Root does not truncate or write its pid into a pid file another uid owns."""
        directory = _dir(shared / "aws", 0, 0o755)
        pid_file = directory / "credentials.credfresh.pid"
        pid_file.write_text("theirs\n")
        os.chown(pid_file, NOBODY, NOBODY)
        lock = InstanceLock(directory / "credentials")
        with pytest.raises(CredfileError) as caught:
            lock.acquire()
        lock.release()
        assert caught.value.code == "unsafe_path"
        assert f"belongs to uid {NOBODY}" in str(caught.value)
        assert pid_file.read_text() == "theirs\n"

    def test_held_lock_of_another_uid_is_refused_not_waited_on(self, shared: Path) -> None:
        """A `<file>.lock` another uid owns (and holds) fails at once, not after the timeout."""
        directory = _dir(shared / "aws", 0, 0o700)
        lock_path = directory / "credentials.lock"
        holder = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.fchown(holder, NOBODY, NOBODY)
            fcntl.flock(holder, fcntl.LOCK_EX)
            started = time.monotonic()
            with pytest.raises(CredfileError) as caught:
                write_profiles(
                    directory / "credentials", OWNER, {"p": make_creds(1)}, lock_timeout=8.0
                )
            elapsed = time.monotonic() - started
        finally:
            os.close(holder)
        assert caught.value.code == "unsafe_path"
        assert str(lock_path) in str(caught.value)
        assert elapsed < 4.0
        assert not (directory / "credentials").exists()


class TestRootDaemonInAUsersHome:
    def test_run_refuses_a_users_home(self, project: Any, tmp_path: Path, shared: Path) -> None:
        """`credfresh run` as root with its file in a user's home exits 2 and says why."""
        home = _dir(shared / "alice", NOBODY, 0o755)
        _dir(home / ".aws", NOBODY, 0o700)
        project.profile("p", duration_seconds=3600)
        project.document["credentials_file"] = str(home / ".aws" / "credentials")
        project.document["state_file"] = str(tmp_path / "state" / "state.json")
        project.write_config()
        proc = DaemonProcess(project.config_path, env_with(project.env), tmp_path / "d.log")
        try:
            assert proc.proc.wait(30) == 2
        finally:
            proc.stop()
        log = (tmp_path / "d.log").read_text()
        assert str(home) in log
        assert HOME_HINT in log
        assert os.listdir(home / ".aws") == []
        assert project.sts.proxy.calls == 0
