"""Shared plumbing for the benchmark scenarios: stub STS, project layouts, daemons, rows."""

from __future__ import annotations

import dataclasses
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import yaml

ROOT: Final = Path(__file__).resolve().parents[1]
# BENCH_DAEMON_DIR runs the suite against a patched copy of daemon/ (to try a change).
DAEMON_DIR: Final = Path(os.environ.get("BENCH_DAEMON_DIR") or ROOT / "daemon").resolve()
BENCH_DIR: Final = ROOT / "benchmarks"
OUT: Final = BENCH_DIR / "out"
WORK: Final = OUT / "work"

TESTS_DIR: Final = ROOT / "tests"
for _path in (DAEMON_DIR, TESTS_DIR):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from credfresh.credentials import Credentials  # noqa: E402 - after the path set-up
from credfresh.devsts import RemoteDevSTS, Walkthrough  # noqa: E402
from support.daemon_runner import DaemonProcess, terminate  # noqa: E402

OWNER: Final = "bench"
ACCOUNT: Final = "123456789012"


# ----- small helpers ---------------------------------------------------------------------


def profile_name(index: int) -> str:
    """The benchmark's profile names: p0000, p0001, ..."""
    return f"p{index:04d}"


def role_arn(index: int) -> str:
    """One role per profile, so the stub's per-role counts tell profiles apart."""
    return f"arn:aws:iam::{ACCOUNT}:role/bench-{index:04d}"


def median(values: Iterable[float]) -> float:
    """Median of a non-empty collection."""
    return float(statistics.median(list(values)))


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return float(ordered[rank - 1])


def load() -> str:
    """The 1/5/15-minute load averages, to note beside each measurement (2 shared cores)."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}/{five:.2f}/{fifteen:.2f}"


def compile_bytecode() -> None:
    """Compile the daemon's bytecode, as `pip install` does (and so the image): the
    floors' botocore has its `.pyc` files, and the daemon compiling ~100 modules from
    source at every start would be measured as start-up. `PYTHONDONTWRITEBYTECODE`, set on
    these machines, keeps Python from writing them itself."""
    import compileall

    if not compileall.compile_dir(DAEMON_DIR / "credfresh", quiet=1):
        raise RuntimeError(f"the daemon's sources under {DAEMON_DIR} do not compile")


def fresh_dir(name: str) -> Path:
    """An empty working directory under benchmarks/out/work (gitignored)."""
    path = WORK / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, mode=0o700)
    return path


def base_env() -> dict[str, str]:
    """This environment without AWS or credfresh settings, pointed at the source tree."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "CREDFRESH_", "NOTIFY_SOCKET"))
    }
    existing = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(DAEMON_DIR) + (os.pathsep + existing if existing else "")
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclasses.dataclass
class Row:
    """One line of the results table; `ok` is None for rows that only inform."""

    scenario: str
    figure: str
    target: str
    peer: str = "-"
    ratio: str = "-"
    ok: bool | None = None
    why: str = ""
    load_avg: str = dataclasses.field(default_factory=load)

    @property
    def verdict(self) -> str:
        return {True: "met", False: "**NOT MET**", None: "info"}[self.ok]

    def line(self) -> str:
        cells = [self.scenario, self.figure, self.target, self.peer, self.ratio, self.verdict]
        return "| " + " | ".join(cells) + " |"


@dataclasses.dataclass
class Report:
    """What one scenario hands back: table rows and free-form sections for results.md."""

    rows: list[Row] = dataclasses.field(default_factory=list)
    sections: dict[str, str] = dataclasses.field(default_factory=dict)


# ----- the stub STS ----------------------------------------------------------------------


class Stub:
    """`python -m credfresh.devsts --mode stub` in its own process, steered over HTTP."""

    def __init__(self, *, latency: float = 0.05, seed: int = 11) -> None:
        self.latency = latency
        self.seed = seed
        self._proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.remote: RemoteDevSTS | None = None
        self.walkthrough: Walkthrough | None = None

    def __enter__(self) -> Stub:
        argv = [
            sys.executable,
            "-m",
            "credfresh.devsts",
            "--mode",
            "stub",
            "--latency",
            str(self.latency),
            "--seed",
            str(self.seed),
        ]
        self._proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=base_env()
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().strip()
        if not line.startswith("url="):
            self.__exit__(None, None, None)
            raise RuntimeError(f"the stub STS did not start (printed {line!r})")
        self.url = line.split("=", 1)[1]
        self.remote = RemoteDevSTS(self.url)
        self.walkthrough = self.remote.setup_walkthrough()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._proc is not None:
            terminate(self._proc, 5)

    @property
    def api(self) -> RemoteDevSTS:
        assert self.remote is not None
        return self.remote

    def prepare(self, *, lifetime: float | None, latency: float | None = None) -> None:
        """Clear faults and records, then set the issued lifetime and the added latency."""
        self.api.reset()
        self.api.seed(self.seed)
        self.api.configure(lifetime=lifetime, latency=self.latency if latency is None else latency)

    def calls(self) -> int:
        return int(self.api.counts().total)

    def request_times(self) -> list[float]:
        """Arrival times (epoch s) of every AssumeRole call since the last reset."""
        return sorted(record.time for record in self.api.requests(action="AssumeRole"))


# ----- a project on disk -----------------------------------------------------------------


class Layout:
    """A config, credentials file (with the stub user's key as `[base]`) and environment."""

    def __init__(self, root: Path, stub: Stub) -> None:
        walkthrough = stub.walkthrough
        assert walkthrough is not None
        self.root = root
        self.stub = stub
        self.aws = root / "aws"
        self.aws.mkdir(mode=0o700, exist_ok=True)
        self.credentials = self.aws / "credentials"
        self.credentials.write_text(
            "# hand-written source profile\n[base]\n"
            f"aws_access_key_id = {walkthrough.access_key_id}\n"
            f"aws_secret_access_key = {walkthrough.secret_access_key}\n"
        )
        self.credentials.chmod(0o600)
        self.aws_config = self.aws / "config"
        self.aws_config.write_text("")
        self.config = root / "etc" / "credfresh.yaml"
        self.config.parent.mkdir(mode=0o700, exist_ok=True)
        self.state = root / "state" / "state.json"
        self.document: dict[str, Any] = {}

    def build(
        self,
        profiles: int,
        *,
        max_concurrency: int = 16,
        short_lived: bool = False,
        retry: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """The config document for `profiles` profiles against the stub.

        `short_lived` quiets the expiry-warning alert, which would otherwise fire for every
        profile when the stub issues credentials living seconds rather than minutes.
        """
        document: dict[str, Any] = {
            "credentials_file": str(self.credentials),
            "state_file": str(self.state),
            "owner": OWNER,
            "defaults": {"region": "us-east-1", "source_profile": "base", "duration_seconds": 900},
            "sts": {"endpoint_url": self.stub.url, "max_concurrency": max_concurrency},
            "retry": dict(retry or {"initial": "1s", "max": "8s"}),
            "profiles": {profile_name(i): {"role_arn": role_arn(i)} for i in range(profiles)},
        }
        if short_lived:
            document["alerts"] = {"expiry_warning": "2s"}
        return document

    def write_config(self, document: Mapping[str, Any]) -> float:
        """Replace the config atomically (as editors and config management do); return when."""
        self.document = dict(document)
        tmp = self.config.with_name(self.config.name + ".tmp")
        tmp.write_text(yaml.safe_dump(self.document, sort_keys=False))
        tmp.chmod(0o600)
        now = time.time()
        tmp.replace(self.config)
        return now

    def prefill(self, profiles: Iterable[str], valid_for: timedelta) -> None:
        """Write fresh-looking managed sections, as a previous run of the daemon would."""
        from credfresh.credfile.store import write_profiles

        now = datetime.now(UTC)
        creds = {
            name: fake_credentials(serial, now, valid_for) for serial, name in enumerate(profiles)
        }
        write_profiles(self.credentials, OWNER, creds)

    def env(self, **extra: str) -> dict[str, str]:
        env = base_env()
        env.update(
            HOME=str(self.root),
            AWS_SHARED_CREDENTIALS_FILE=str(self.credentials),
            AWS_CONFIG_FILE=str(self.aws_config),
        )
        env.update(extra)
        return env

    def argv(self, *args: str, launcher: Sequence[str] | None = None) -> list[str]:
        """`python -m credfresh ARGS -c CONFIG`, or the same through another launcher."""
        start = list(launcher) if launcher else [sys.executable, "-m", "credfresh"]
        return [*start, *args, "-c", str(self.config)]


def fake_credentials(serial: int, now: datetime, valid_for: timedelta) -> Credentials:
    """A credential set shaped like STS's (token about 400 characters, like the stub's)."""
    return Credentials(
        access_key_id=f"ASIAPREFILL{serial:09d}",
        secret_access_key=f"prefill/{serial:032d}",
        session_token=("IQoJb3JpZ2luX2VjE" + f"{serial:010d}" * 41)[:420],
        expiration=now + valid_for,
        issued=now,
        principal_arn=f"arn:aws:sts::{ACCOUNT}:assumed-role/bench-{serial:04d}/prefill",
    )


# ----- the daemon as a process -----------------------------------------------------------


class Daemon(DaemonProcess):
    """`credfresh run` for a benchmark layout: tests/support's runner, logging to root/NAME.log."""

    def __init__(
        self,
        layout: Layout,
        *,
        env: Mapping[str, str] | None = None,
        argv_prefix: Sequence[str] = (),
        launcher: Sequence[str] | None = None,
        name: str = "daemon",
    ) -> None:
        super().__init__(
            layout.config,
            dict(env) if env is not None else layout.env(),
            layout.root / f"{name}.log",
            argv_prefix=argv_prefix,
            launcher=launcher,
        )

    def stop(self, timeout: float = 15.0) -> int:
        return super().stop(timeout)


def managed_fresh(layout: Layout, names: Iterable[str]) -> tuple[int, int]:
    """(sections of these names this owner has on disk, how many of them are unexpired)."""
    from credfresh.credfile.store import read_managed

    view = read_managed(layout.credentials, OWNER)
    now = datetime.now(UTC)
    wanted = [view.managed.get(name) for name in names]
    present = [creds for creds in wanted if creds is not None]
    return len(present), sum(1 for creds in present if creds.valid_at(now))


def time_command(argv: Sequence[str], env: Mapping[str, str], runs: int) -> list[float]:
    """Wall-clock seconds of `runs` whole-process runs of a command (each must exit 0)."""
    timings = []
    for _ in range(runs):
        began = time.perf_counter()
        done = subprocess.run(argv, env=dict(env), capture_output=True, check=False)
        timings.append(time.perf_counter() - began)
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv[:4])} ... exited {done.returncode}: "
                f"{done.stderr.decode(errors='replace')[-300:]}"
            )
    return timings
