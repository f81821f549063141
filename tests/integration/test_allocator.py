"""glibc tcache off for `credfresh run`: the decision, and the real process after re-exec."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import Project
from credfresh.process.allocator import TCACHE_TUNABLE, TUNABLES, is_glibc, tunables_env
from support.daemon_runner import DaemonProcess, env_with


class TestTunablesEnv:
    def test_adds_the_setting(self) -> None:
        env = tunables_env({"PATH": "/bin"})
        assert env == {"PATH": "/bin", TUNABLES: f"{TCACHE_TUNABLE}=0"}

    def test_keeps_other_tunables(self) -> None:
        env = tunables_env({TUNABLES: "glibc.malloc.mxfast=0"})
        assert env is not None
        assert env[TUNABLES] == f"glibc.malloc.mxfast=0:{TCACHE_TUNABLE}=0"

    @pytest.mark.parametrize(
        "environ",
        [
            {TUNABLES: f"{TCACHE_TUNABLE}=0"},
            {TUNABLES: f"glibc.malloc.mxfast=0:{TCACHE_TUNABLE}=7"},
            {"MALLOC_ARENA_MAX": "4"},
        ],
        ids=["already-set", "users-own-count", "malloc-variable"],
    )
    def test_the_users_setting_wins(self, environ: dict[str, str]) -> None:
        """Also what stops a second re-exec: after one, the setting is there."""
        assert tunables_env(environ) is None

    def test_a_similar_name_is_not_the_setting(self) -> None:
        env = tunables_env({TUNABLES: "glibc.malloc.tcache_count_x=1"})
        assert env is not None
        assert env[TUNABLES].endswith(f":{TCACHE_TUNABLE}=0")


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    pairs = (item.decode().partition("=") for item in raw if item)
    return {key: value for key, _, value in pairs}


@pytest.mark.skipif(not is_glibc(), reason="the tunable is glibc's")
@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, f"{TCACHE_TUNABLE}=0"),
        ({TUNABLES: f"{TCACHE_TUNABLE}=7"}, f"{TCACHE_TUNABLE}=7"),
        ({"MALLOC_ARENA_MAX": "4"}, None),
    ],
    ids=["default", "users-tunable", "malloc-variable"],
)
def test_run_reexecutes_once_in_place(
    project: Project, tmp_path: Path, extra: dict[str, str], expected: str | None
) -> None:
    """The daemon that answers is the process that was started (same pid, so systemd and a
    container runtime keep tracking it), running with the tunable, and it re-executed once.
    """
    project.profile("a")
    project.write_config()
    env = {k: v for k, v in project.env.items() if k != TUNABLES and not k.startswith("MALLOC_")}
    with DaemonProcess(project.config_path, env_with(env, **extra), tmp_path / "d.log") as proc:
        proc.wait_event("ready", 15)
        assert environ_of(proc.proc.pid).get(TUNABLES) == expected
        assert proc.proc.poll() is None
        assert proc.stop() == 0
    started = [e for e in proc.events() if e.get("event") == "started"]
    assert [e["pid"] for e in started] == [proc.proc.pid]
