"""The daemon's config loader: validation in a forked child gives what in-process gives."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from credfresh import forked
from credfresh.config import isolated
from credfresh.config.validate import load_config
from credfresh.errors import ConfigError
from support import children

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "credfresh.example.yaml"


class TestLoadIsolated:
    def test_same_config_as_in_process(self) -> None:
        before = children()
        got = isolated.load_isolated(EXAMPLE, os.environ, Path.home())
        assert got == load_config(EXAMPLE, os.environ, Path.home())
        assert children() == before

    def test_same_problems_as_in_process(self, tmp_path: Path) -> None:
        path = tmp_path / "bad.yaml"
        path.write_text("profiles:\n  app: {role_arn: nope, colour: red}\n")
        with pytest.raises(ConfigError) as in_process:
            load_config(path, os.environ, Path.home())
        with pytest.raises(ConfigError) as forked:
            isolated.load_isolated(path, os.environ, Path.home())
        assert forked.value.problems == in_process.value.problems
        assert str(forked.value) == str(in_process.value)

    def test_missing_file_is_the_same_error(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError) as forked:
            isolated.load_isolated(tmp_path / "none.yaml", os.environ, Path.home())
        assert forked.value.problems == [f"(file): not found: {tmp_path / 'none.yaml'}"]

    def test_no_fork_validates_in_process(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def refuse() -> int:
            raise OSError(11, "Resource temporarily unavailable")

        monkeypatch.setattr(os, "fork", refuse)
        assert isolated.load_isolated(EXAMPLE, os.environ, Path.home()).profiles

    def test_garbage_or_silence_falls_back(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for data in (b"", b"not a pickle", pickle.dumps(("other", 1))):
            monkeypatch.setattr(forked, "read_all", lambda fd, patience, d=data: d)
            assert isolated.load_isolated(EXAMPLE, os.environ, Path.home()).profiles

    def test_a_stuck_child_is_killed_and_reaped(self, monkeypatch: pytest.MonkeyPatch) -> None:
        before = children()
        monkeypatch.setattr(isolated, "CHILD_TIMEOUT", 0.0)
        assert isolated.load_isolated(EXAMPLE, os.environ, Path.home()).profiles
        assert children() == before

    def test_the_daemon_process_never_imports_pydantic(self, tmp_path: Path) -> None:
        code = (
            "import os, sys, pathlib\n"
            "from credfresh.config.isolated import load_isolated\n"
            f"c = load_isolated(pathlib.Path({str(EXAMPLE)!r}), os.environ, pathlib.Path.home())\n"
            "print(len(c.profiles), 'pydantic' in sys.modules, 'pydantic_core' in sys.modules)\n"
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT / "daemon")}
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        count, *loaded = done.stdout.split()
        assert int(count) > 0
        assert loaded == ["False", "False"]


class TestUnchangedOnDisk:
    """The 60 s poll's question, answered without a child: the same bytes as the config in
    force (the file and each policy file), or not."""

    ARN = "arn:aws:iam::123456789012:role/app"

    def _config(self, tmp_path: Path) -> tuple[Path, Path]:
        policy = tmp_path / "policy.json"
        policy.write_text('{"Version": "2012-10-17", "Statement": []}')
        path = tmp_path / "credfresh.yaml"
        path.write_text(
            "profiles:\n"
            f"  a: {{role_arn: '{self.ARN}', policy_file: policy.json}}\n"
            f"  b: {{role_arn: '{self.ARN}', policy_file: policy.json}}\n"
            f"  c: {{role_arn: '{self.ARN}'}}\n"
        )
        return path, policy

    def test_same_bytes_same_config(self, tmp_path: Path) -> None:
        path, policy = self._config(tmp_path)
        config = isolated.load_isolated(path, os.environ, Path.home())
        assert config.policy_files == (policy,)
        assert isolated.unchanged_on_disk(config)
        path.write_bytes(path.read_bytes())
        assert isolated.unchanged_on_disk(config)

    def test_any_change_or_absence_is_a_change(self, tmp_path: Path) -> None:
        path, policy = self._config(tmp_path)
        config = isolated.load_isolated(path, os.environ, Path.home())
        text = policy.read_text()
        policy.write_text(text.replace("[]", "[ ]"))
        assert not isolated.unchanged_on_disk(config)
        policy.write_text(text)
        path.write_text(path.read_text() + "# a comment\n")
        assert not isolated.unchanged_on_disk(config)
        path.unlink()
        assert not isolated.unchanged_on_disk(config)


# Run in a fresh interpreter, so that no other test has imported the libraries already.
START_UP = """
import io, json, sys, pathlib
from credfresh import forked
from credfresh.config import isolated
from credfresh.context import Context
from credfresh.process import daemon

order = []

class Recording:
    def settled(self, *, collect=False):
        loaded = all(name in sys.modules for name in daemon.RUN_LIBRARIES)
        order.append(f"settled with the libraries loaded: {loaded}")

    def dropping(self):
        order.append("dropping")

result = isolated.Pending.result

def recorded(pending):
    order.append("config")
    return result(pending)

daemon.FrozenHeap = Recording
isolated.Pending.result = recorded
out, err = io.StringIO(), io.StringIO()
code = daemon.main(pathlib.Path(sys.argv[1]), log_format="json", log_level=None,
                   ctx=Context(out, err, {}))
print(json.dumps({"code": code, "order": order}))
"""


class TestStartUp:
    def test_run_loads_its_libraries_and_freezes_them_before_the_config(
        self, tmp_path: Path
    ) -> None:
        """`run` imports APScheduler and watchdog, then freezes the heap, before it takes the
        config from the validating child (a bad config ends the start there)."""
        path = tmp_path / "credfresh.yaml"
        path.write_text("profiles: [not, a, mapping]\n")
        path.chmod(0o600)
        env = {**os.environ, "PYTHONPATH": str(ROOT / "daemon")}
        done = subprocess.run(
            [sys.executable, "-c", START_UP, str(path)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        found = json.loads(done.stdout.splitlines()[-1])
        assert found["code"] == 2, done.stderr
        assert found["order"] == ["settled with the libraries loaded: True", "config"]
