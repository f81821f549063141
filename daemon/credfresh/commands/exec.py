"""`credfresh exec`: run one command with credentials that stay fresh while it runs.

The named profiles are refreshed in this process (the daemon's engine and sources over an
in-memory store, `process.wiring.build_exec`) and served to the child alone, on a container
credentials endpoint on 127.0.0.1 with a random port and a random token in a 0600 file in a
new 0700 directory. No credentials file, env file, hook, state file or lock: it runs beside a
daemon of the same config. The decisions are `commands.exec_rules`'.

Signals: SIGINT, SIGTERM, SIGHUP, SIGQUIT and SIGCHLD are blocked in every thread from the
start and taken with `sigtimedwait` on the main thread, so each is seen with its sender's
`si_code` (a terminal's Ctrl-C reached the child already) and none is lost before the child
exists; the child gets the mask and dispositions it would have had. One exec started with
ignored (`nohup`, a script's `cmd &`) leaves ignored: blocked, it would still be queued and
taken, and the child would lose the ignoring it inherits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from credfresh.commands import exec_rules as rules
from credfresh.errors import CODES, EXIT_FAILED, ConfigError, CredfreshError, UsageError

if TYPE_CHECKING:
    from credfresh.config.model import Config
    from credfresh.context import Context
    from credfresh.engine.engine import Engine
    from credfresh.engine.state import ProfileState
    from credfresh.observe.logs import BoundLogger, Logging

DEFAULT_START_TIMEOUT: Final = "5m"
STOP_GRACE: Final = 2.0
#: How often the start wait looks at the engine, and the child wait's safety net (SIGCHLD
#: wakes it at once).
START_POLL: Final = 0.1
CHILD_POLL: Final = 1.0
#: Reset to the default in the child: Python ignores SIGPIPE and SIGXFSZ. (Signals with a
#: handler, SIGINT's, are reset by the exec itself; ignored ones stay ignored.)
CHILD_DEFAULTS: Final = (signal.SIGPIPE, signal.SIGXFSZ)
EXIT_NOT_EXECUTABLE: Final = 126
EXIT_NOT_FOUND: Final = 127


@dataclasses.dataclass(frozen=True)
class Request:
    """What the command line asked for."""

    config_path: Path
    profiles: Sequence[str]
    argv: Sequence[str]
    start_timeout: str | None = None
    log_format: str | None = None
    log_level: str | None = None


def main(request: Request, ctx: Context) -> int:
    """Run the command; its exit status (128+N for signal N), 1 when its credentials never
    came, 126/127 when it cannot be started. Usage and config errors are raised (exit 2)."""
    from credfresh.config.model import parse_duration
    from credfresh.observe.logs import Logging

    try:
        command = rules.command_of(request.argv)
        timeout = parse_duration(request.start_timeout or DEFAULT_START_TIMEOUT)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if timeout <= 0:
        raise UsageError("exec: --start-timeout must be more than 0s")
    forwarded = tuple(s for s in rules.FORWARDED if signal.getsignal(s) != signal.SIG_IGN)
    waited = (*forwarded, signal.SIGCHLD)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, waited)  # before any thread exists
    logging = Logging(ctx.err, fmt=request.log_format, level=request.log_level)
    logging.install()
    try:
        config, chosen = _load(request, ctx, logging.get())
        with _private_token(ctx.environ) as (token_file, token):
            logging.redactor.add(token)
            run = Run(config, chosen, command, token_file, timeout, mask, forwarded)
            return _serve_and_run(run, ctx, logging)
    finally:
        # Signals that came after the child ended are dropped, not delivered on unblocking:
        # exec exits with the child's status.
        while signal.sigtimedwait(waited, 0) is not None:
            pass
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        logging.uninstall()


def _load(request: Request, ctx: Context, log: BoundLogger) -> tuple[Config, list[str]]:
    """The config cut down to the named profiles and their sources; as root, refused when
    others could change a file it steers (the daemon's rule)."""
    from credfresh import trust
    from credfresh.commands.status import select
    from credfresh.config.validate import load_config
    from credfresh.process.daemon import check_config_permissions

    path = request.config_path
    if ctx.euid == 0 and (unsafe := trust.path_problems(path, 0)):
        raise ConfigError(unsafe, path=str(path))
    config = load_config(path, ctx.environ, ctx.home, ctx.clock.now())
    chosen = select(request.profiles, config.profiles, path)
    try:
        rules.endpoint_variables(chosen)
    except ValueError as exc:
        raise UsageError(f"exec: {exc}") from None
    problems = check_config_permissions(config, ctx.euid, ctx.environ)
    if problems and ctx.euid == 0:
        raise ConfigError(problems, path=str(path))
    for problem in problems:
        log.warning("config_permissions", message=problem)
    for warning in config.warnings:
        log.warning("config_warning", message=warning)
    profiles = rules.scoped(config.profiles, chosen)
    return dataclasses.replace(config, profiles=profiles), chosen


@contextlib.contextmanager
def _private_token(environ: Mapping[str, str]) -> Iterator[tuple[Path, str]]:
    """A random token in a 0600 file in a new 0700 directory, both gone when the block ends."""
    parent = environ.get("TMPDIR") or None
    try:
        directory = Path(tempfile.mkdtemp(prefix="credfresh-exec-", dir=parent))
    except OSError as exc:
        where = parent or tempfile.gettempdir()
        raise CredfreshError(
            f"exec: cannot make a private directory in {where}: {exc.strerror}",
            code="write_failed",
        ) from None
    try:
        token = secrets.token_urlsafe(32)
        path = directory / "token"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
        with open(fd, "w", encoding="ascii") as handle:
            handle.write(token)  # no newline: botocore refuses a token file ending in one
        yield path, token
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class Run:
    """One run's parts: the cut-down config, the served profiles (the first one's endpoint is
    the default), the command, the token file, the start timeout and the original mask."""

    config: Config
    chosen: Sequence[str]
    command: Sequence[str]
    token_file: Path
    timeout: float
    mask: set[int | signal.Signals]
    #: The signals exec forwards: those of `rules.FORWARDED` it was not started ignoring.
    forwarded: tuple[signal.Signals, ...] = rules.FORWARDED


def _serve_and_run(run: Run, ctx: Context, logging: Logging) -> int:
    """Refresh, serve, wait for the first credentials, run the child; stop all afterwards."""
    from credfresh.outputs.container import CredentialsEndpoint
    from credfresh.process import wiring

    config, chosen, token_file = run.config, run.chosen, run.token_file
    log = logging.get()
    engine = wiring.build_exec(config, ctx, logging)
    served = frozenset(chosen)
    endpoint = CredentialsEndpoint(
        "127.0.0.1:0",
        token_file,
        known=served.__contains__,
        current=engine.on_disk,
        log=log,
        clock=ctx.clock,
    )
    idle = False
    try:
        engine.start({})
        endpoint.start()
        log.info("exec_started", profiles=list(chosen), port=endpoint.port)
        status = _wait_ready(engine, run, ctx, log)
        if status is None:
            env = rules.child_environment(
                ctx.environ,
                endpoints=[(name, rules.endpoint_url(endpoint.url, name)) for name in chosen],
                token_file=str(token_file),
                region=config.profiles[chosen[0]].region,
                shared_file=shared_file_for(ctx.environ, ctx.home, config),
            )
            status = _run_child(run, env, ctx, log)
    finally:
        endpoint.stop()
        idle = engine.stop(grace=STOP_GRACE)
    if not idle:  # an STS call still hangs on a helper thread: do not wait for it
        _flush(ctx)
        shutil.rmtree(token_file.parent, ignore_errors=True)
        os._exit(status)
    return status


def _wait_ready(engine: Engine, run: Run, ctx: Context, log: BoundLogger) -> int | None:
    """None once every profile holds credentials; else the exit status: 1 for a permanent
    failure or the start timeout (each reported), 128+N for a signal N meanwhile."""
    names = list(run.config.profiles)
    deadline = ctx.clock.monotonic() + run.timeout
    while True:
        snap = engine.snapshot()
        verdict, which = rules.start_verdict(
            names, snap.on_disk, snap.states, ctx.clock.now(), run.chosen
        )
        if verdict == "ready":
            return None
        timed_out = ctx.clock.monotonic() >= deadline
        if verdict == "static_keys":
            log.error("exec_start_failed", profiles=which, reason=verdict)
            for name in which:
                ctx.err.write(f"credfresh: exec: {name}: {CODES['static_keys']}\n")
            ctx.err.write("credfresh: exec: the command was not run\n")
            return EXIT_FAILED
        if verdict == "failed" or timed_out:
            reason = "permanent_error" if verdict == "failed" else "start_timeout"
            log.error("exec_start_failed", profiles=which, reason=reason)
            _report(which, snap.states, run.timeout if timed_out else None, ctx)
            return EXIT_FAILED
        info = signal.sigtimedwait(run.forwarded, START_POLL)
        if info is not None:
            log.info("exec_interrupted", signal=signal.Signals(info.si_signo).name)
            return 128 + info.si_signo


def _report(
    names: Sequence[str], states: Mapping[str, ProfileState], timeout: float | None, ctx: Context
) -> None:
    """Each profile without credentials, with STS's error code and its hint; no child ran."""
    from credfresh.config.model import format_duration
    from credfresh.sources.classify import classify

    for name in names:
        state = states.get(name)
        code = state.last_error_code if state else None
        head = f"credfresh: exec: {name}: "
        if timeout is not None:
            head += f"no credentials within {format_duration(timeout)}"
            head += f"; last error {code}" if code else ""
        elif code:
            head += code
        kind = "permanent" if state and state.last_error_permanent else "transient"
        message = state.last_error_message if state else None
        ctx.err.write(head + (f" ({kind}): {message}" if code and message else "") + "\n")
        hint = classify(code, message or "").hint if code else None
        if hint:
            ctx.err.write(f"  hint: {hint}\n")
    ctx.err.write("credfresh: exec: the command was not run\n")


def shared_file_for(environ: Mapping[str, str], home: Path, config: Config) -> str | None:
    """The child's AWS_SHARED_CREDENTIALS_FILE under `rules.shared_credentials_file`: is the
    file the SDK would read credfresh's own, and has it a `[default]` section?"""
    from credfresh.context import expand_user
    from credfresh.credfile.format import decode, view_of
    from credfresh.errors import CredfreshError

    current = environ.get(rules.SHARED_CREDENTIALS_FILE) or None
    read = expand_user(current, str(home)) if current else str(home / ".aws" / "credentials")
    try:
        ours = os.path.samefile(read, config.credentials_file)
    except OSError:
        ours = False
    has_default = True
    if ours:
        try:
            view = view_of(decode(Path(read).read_bytes()), config.owner)
            has_default = "default" in {*view.managed, *view.foreign, *view.damaged}
        except (OSError, CredfreshError):
            has_default = True  # unreadable now: the SDK may read it later, so do not trust it
    return rules.shared_credentials_file(current, is_credfresh_file=ours, has_default=has_default)


def _run_child(run: Run, env: Mapping[str, str], ctx: Context, log: BoundLogger) -> int:
    """Spawn the command with the original signal mask, forward signals, reap it."""
    name = run.command[0]
    program = name if "/" in name else shutil.which(name, path=env.get("PATH", os.defpath))
    if program is None:
        ctx.err.write(f"credfresh: exec: {name}: command not found\n")
        return EXIT_NOT_FOUND
    try:
        pid = os.posix_spawn(
            program, list(run.command), env, setsigmask=run.mask, setsigdef=CHILD_DEFAULTS
        )
    except OSError as exc:
        ctx.err.write(f"credfresh: exec: {name}: {exc.strerror or type(exc).__name__}\n")
        return EXIT_NOT_FOUND if isinstance(exc, FileNotFoundError) else EXIT_NOT_EXECUTABLE
    log.info("exec_child_started", pid=pid, program=os.path.basename(name))
    while True:
        info = signal.sigtimedwait((*run.forwarded, signal.SIGCHLD), CHILD_POLL)
        if (
            info is not None
            and info.si_signo != signal.SIGCHLD
            and rules.should_forward(info.si_code, child_in_our_group=True)
        ):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, info.si_signo)
            log.info("exec_signal_forwarded", pid=pid, signal=signal.Signals(info.si_signo).name)
        done, wait_status = os.waitpid(pid, os.WNOHANG)
        if done:
            status = rules.exit_status(wait_status)
            log.info("exec_child_exited", pid=pid, status=status)
            return status


def _flush(ctx: Context) -> None:
    for stream in (ctx.out, ctx.err, sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
