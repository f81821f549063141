"""`credfresh refresh`: ask the running daemon (the one writer of the file) to refresh now and
wait until the new credentials are on disk: after rotating a source key, or before a job.

It talks to the daemon's control socket only (`process/control.py`), so it loads neither
boto3 nor pydantic; with no daemon, `credfresh once` is the way.
"""

from __future__ import annotations

import contextlib
import os
import socket
from typing import TYPE_CHECKING, Final

from credfresh.commands.report import failed_lines, refreshed_line
from credfresh.config.load import read_light
from credfresh.config.model import parse_duration
from credfresh.errors import CODES, EXIT_FAILED, EXIT_OK, CredfreshError, UsageError
from credfresh.process import control_wire as wire

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime
    from pathlib import Path

    from credfresh.context import Clock, Context

DEFAULT_WAIT: Final = "30s"
#: Seconds to connect and send; the answer may take the wait plus ANSWER_MARGIN.
CONNECT_TIMEOUT: Final = 5.0
ANSWER_MARGIN: Final = 5.0


def parse_wait(text: str) -> float:
    try:
        wait = parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"--wait: {exc}") from None
    if not 0 < wait <= wire.MAX_WAIT:
        raise UsageError(f"--wait: expected a duration above 0s, at most {wire.MAX_WAIT:g}s")
    return wait


def no_daemon(path: Path, why: str) -> CredfreshError:
    return CredfreshError(
        f"no credfresh daemon is running for this config ({why}: {path}); start it "
        "(`credfresh run`), or refresh without one: `credfresh once --force`",
        code="no_daemon",
    )


def answer_error(answer: wire.Answer) -> CredfreshError | None:
    """The daemon's refusal of the whole request as an error (exit 1), with its hint."""
    if answer.error is None:
        return None
    hint = CODES.get(answer.error)
    message = answer.message + (f"\n  hint: {hint}" if hint else "")
    return CredfreshError(message, code=answer.error)


def render(answer: wire.Answer, now: datetime) -> tuple[str, str, int]:
    """stdout, stderr and the verdict: one line per profile as `once` prints them, 1 when
    any profile did not refresh."""
    out, err = [], []
    for outcome in answer.outcomes:
        if outcome.failure is not None:
            err.append(failed_lines(outcome.name, outcome.failure))
        elif outcome.expires_at is not None:
            out.append(refreshed_line(outcome.name, outcome.expires_at, now))
    status = EXIT_FAILED if err or len(out) != len(answer.outcomes) else EXIT_OK
    return "".join(out), "".join(err), status


def _connect(sock: socket.socket, path: Path, directory: int) -> None:
    try:
        address = wire.unix_address(path, directory)
    except ValueError as exc:
        raise CredfreshError(str(exc), code="no_daemon") from None
    sock.settimeout(CONNECT_TIMEOUT)
    try:
        sock.connect(address)
    except FileNotFoundError:
        raise no_daemon(path, "no control socket") from None
    except ConnectionRefusedError:
        raise no_daemon(path, "nothing listens on the control socket") from None
    except PermissionError:
        raise denied(path) from None
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise CredfreshError(
            f"could not reach the daemon on {path}: {why}", code="no_daemon"
        ) from None


def ask(path: Path, request: wire.Request, clock: Clock) -> wire.Answer:
    """Send one request to the socket at `path` and read its answer."""
    try:
        directory = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise no_daemon(path, "no control socket") from None
    except PermissionError:
        raise denied(path) from None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
            _connect(sock, path, directory)
            with contextlib.suppress(OSError):  # refused unread: its answer is still there
                sock.sendall(wire.format_request(request))
            deadline = clock.monotonic() + request.wait + ANSWER_MARGIN
            try:
                line = wire.read_line(sock, wire.MAX_ANSWER_BYTES, deadline, clock)
            except TimeoutError:
                raise CredfreshError(
                    f"the daemon did not answer within {request.wait + ANSWER_MARGIN:g}s",
                    code="refresh_timeout",
                ) from None
            except (ValueError, OSError):
                raise CredfreshError(
                    "the daemon closed the connection without an answer (did it stop?)",
                    code="daemon_stopping",
                ) from None
    finally:
        os.close(directory)
    try:
        return wire.parse_answer(line)
    except ValueError as exc:
        raise CredfreshError(f"the daemon's answer: {exc}", code="bad_request") from None


def denied(path: Path) -> CredfreshError:
    return CredfreshError(
        f"permission denied on the control socket {path}: only the daemon's own user may ask "
        "it to refresh (run this as that user)",
        code="control_refused",
    )


def refresh(config_path: Path, names: Sequence[str], wait_text: str, ctx: Context) -> int:
    """Refresh the named profiles (all without names) through the daemon; 1 when any did not
    land, errors (no daemon, a refusal, unknown names) raised for `cli`."""
    wait = parse_wait(wait_text)
    light = read_light(config_path, ctx.environ, ctx.home)
    request = wire.Request(profiles=tuple(dict.fromkeys(names)), wait=wait)
    answer = ask(wire.socket_path(light.state_file), request, ctx.clock)
    error = answer_error(answer)
    if error is not None:
        raise error
    out, err, status = render(answer, ctx.clock.now())
    ctx.out.write(out)
    ctx.err.write(err)
    return status
