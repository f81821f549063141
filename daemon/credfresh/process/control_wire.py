"""The control socket's protocol: where the socket is, one JSON line asked, one answered
(pure), and the bounded line reader both ends use.

`credfresh refresh` imports this: it stays light (no boto3, no pydantic).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from credfresh.credentials import format_time, parse_time
from credfresh.sources.classify import Failure

if TYPE_CHECKING:
    import socket
    from datetime import datetime

    from credfresh.context import Clock

#: Bytes of one request line at most (a few hundred profile names fit).
MAX_REQUEST_BYTES: Final = 16 * 1024
#: Bytes of one answer line at most (each outcome carries a message of 300 characters or less).
MAX_ANSWER_BYTES: Final = 1024 * 1024
#: Longest wait a request may ask for, in seconds.
MAX_WAIT: Final = 3600.0
MAX_NAME: Final = 128
#: `sockaddr_un.sun_path` holds 108 bytes with its terminating NUL.
SUN_PATH_MAX: Final = 107
SOCKET_SUFFIX: Final = ".sock"


def socket_path(state_file: Path) -> Path:
    """The daemon's control socket: next to its state file (one per config, whatever the
    directory holds besides)."""
    return state_file.with_name(state_file.name + SOCKET_SUFFIX)


def unix_address(path: Path, directory_fd: int) -> str:
    """The address to bind or connect: the path when it fits `sun_path`, else its name inside
    the already open directory through `/proc/self/fd`; ValueError when neither fits."""
    if len(str(path).encode()) <= SUN_PATH_MAX:
        return str(path)
    short = f"/proc/self/fd/{directory_fd}/{path.name}"
    if len(short.encode()) > SUN_PATH_MAX:
        raise ValueError(
            f"the control socket's name {path.name!r} is too long for a unix socket "
            f"({SUN_PATH_MAX} bytes): choose a shorter state_file name"
        )
    return short


@dataclasses.dataclass(frozen=True)
class Request:
    """Refresh these profiles (none: every configured one) and wait up to `wait` seconds."""

    profiles: tuple[str, ...]
    wait: float


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One profile's verdict: new credentials on disk until `expires_at`, or a `failure`
    (neither: the wait ran out first)."""

    name: str
    expires_at: datetime | None = None  # of what landed on disk
    failure: Failure | None = None


@dataclasses.dataclass(frozen=True)
class Answer:
    """The per-profile outcomes, or a refusal of the whole request (`error` is its code)."""

    outcomes: tuple[Outcome, ...] = ()
    error: str | None = None
    message: str = ""
    unknown: tuple[str, ...] = ()


def _line(document: object) -> bytes:
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode() + b"\n"


def _document(line: bytes, limit: int, what: str) -> dict[str, Any]:
    if len(line) > limit:
        raise ValueError(f"{what} over {limit} bytes")
    try:
        document = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ValueError(f"{what} is not one JSON line") from None
    if not isinstance(document, dict):
        raise ValueError(f"{what} is not a JSON object")
    return document


def format_request(request: Request) -> bytes:
    return _line({"profiles": list(request.profiles), "wait": request.wait})


def parse_request(line: bytes) -> Request:
    """The request a client sent; ValueError saying what is wrong (never echoing it)."""
    document = _document(line, MAX_REQUEST_BYTES, "request")
    names = document.get("profiles", [])
    wait = document.get("wait")
    if not isinstance(names, list) or not all(
        isinstance(n, str) and 0 < len(n) <= MAX_NAME for n in names
    ):
        raise ValueError(f"profiles: expected a list of names of 1 to {MAX_NAME} characters")
    if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 < wait <= MAX_WAIT:
        raise ValueError(f"wait: expected seconds above 0, at most {MAX_WAIT:g}")
    return Request(profiles=tuple(dict.fromkeys(names)), wait=float(wait))


def _outcome_json(outcome: Outcome) -> dict[str, Any]:
    found: dict[str, Any] = {"profile": outcome.name}
    if outcome.expires_at is not None:
        found["expires_at"] = format_time(outcome.expires_at)
    if outcome.failure is not None:
        failure = outcome.failure
        found["error"] = {
            "code": failure.code,
            "message": failure.message,
            "permanent": failure.permanent,
            "hint": failure.hint,
        }
    return found


def format_answer(answer: Answer) -> bytes:
    if answer.error is not None:
        return _line(
            {"error": answer.error, "message": answer.message, "unknown": list(answer.unknown)}
        )
    return _line({"profiles": [_outcome_json(o) for o in answer.outcomes]})


def _outcome(item: object) -> Outcome:
    if not isinstance(item, dict) or not isinstance(item.get("profile"), str):
        raise ValueError("answer: each profile needs a name")
    expires = item.get("expires_at")
    error = item.get("error")
    failure = None
    if isinstance(error, dict):
        hint = error.get("hint")
        failure = Failure(
            code=str(error.get("code")),
            message=str(error.get("message", "")),
            permanent=error.get("permanent") is True,
            hint=hint if isinstance(hint, str) else None,
        )
    return Outcome(
        name=item["profile"],
        expires_at=parse_time(expires) if isinstance(expires, str) else None,
        failure=failure,
    )


def parse_answer(line: bytes) -> Answer:
    """The daemon's answer; ValueError when it is not one."""
    document = _document(line, MAX_ANSWER_BYTES, "answer")
    error = document.get("error")
    if isinstance(error, str):
        unknown = document.get("unknown")
        return Answer(
            error=error,
            message=str(document.get("message", "")),
            unknown=tuple(str(n) for n in unknown) if isinstance(unknown, list) else (),
        )
    items = document.get("profiles")
    if not isinstance(items, list):
        raise ValueError("answer: no profiles")
    return Answer(outcomes=tuple(_outcome(item) for item in items))


class PeerGone(ValueError):
    """The peer closed without sending a byte: another daemon's liveness probe, not a bad
    request worth a warning."""


def read_line(sock: socket.socket, limit: int, deadline: float, clock: Clock) -> bytes:
    """One line of at most `limit` bytes by `deadline` (monotonic): a trickling or silent
    peer gets TimeoutError, a flood or an early close ValueError."""
    data = b""
    while b"\n" not in data:
        remaining = deadline - clock.monotonic()
        if remaining <= 0:
            raise TimeoutError("no full line in time")
        sock.settimeout(remaining)
        chunk = sock.recv(64 * 1024)
        if not chunk:
            if not data:
                raise PeerGone("the peer closed without a request")
            raise ValueError("the peer closed before a full line")
        data += chunk
        if len(data) > limit + 1:
            raise ValueError(f"over {limit} bytes")
    line, _, _ = data.partition(b"\n")
    if len(line) > limit:
        raise ValueError(f"over {limit} bytes")
    return line
