"""`credfresh refresh`'s pure parts (the wire protocol, the daemon's verdicts, the client's
lines) and the control server in process, over real unix sockets."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Collection, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from credfresh.commands import refresh as client
from credfresh.commands.report import failed_lines, refreshed_line
from credfresh.context import SystemClock
from credfresh.credentials import Credentials
from credfresh.engine.ondemand import Ticket
from credfresh.errors import CODES, CredfileError, UsageError
from credfresh.process import control
from credfresh.process import control_wire as wire
from credfresh.sources.classify import Failure, classify
from support.recording import RecordingLogger

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)


def creds(key: str = "ASIAAAAAAAAAAAAA0001") -> Credentials:
    return Credentials(key, "secret", "token", LATER, NOW)


class TestWire:
    def test_socket_sits_next_to_the_state_file(self) -> None:
        """One socket per state file, so configs sharing a directory never share a socket."""
        assert wire.socket_path(Path("/var/lib/credfresh/state.json")) == Path(
            "/var/lib/credfresh/state.json.sock"
        )

    def test_address_fits_sun_path_or_goes_through_the_directory(self) -> None:
        """A short path is used as is; a long one by name inside the open directory; a name
        too long for either is a clear error."""
        short = Path("/run/x/state.json.sock")
        assert wire.unix_address(short, 7) == str(short)
        deep = Path("/" + "d" * 120) / "state.json.sock"
        assert wire.unix_address(deep, 7) == "/proc/self/fd/7/state.json.sock"
        with pytest.raises(ValueError, match="too long for a unix socket"):
            wire.unix_address(Path("/" + "d" * 120) / ("n" * 100), 7)

    def test_request_round_trip(self) -> None:
        """Names keep their order, without repeats; the wait is seconds."""
        line = wire.format_request(wire.Request(("a", "b"), 30.0))
        assert line.endswith(b"\n")
        assert line.count(b"\n") == 1
        assert wire.parse_request(line.strip()) == wire.Request(("a", "b"), 30.0)
        assert wire.parse_request(b'{"profiles":["a","a"],"wait":1}').profiles == ("a",)
        assert wire.parse_request(b'{"wait":1}').profiles == ()

    @pytest.mark.parametrize(
        ("line", "why"),
        [
            (b"not json", "not one JSON line"),
            (b"\xff\xfe", "not one JSON line"),
            (b"[]", "not a JSON object"),
            (b'{"profiles":"a","wait":1}', "profiles"),
            (b'{"profiles":[1],"wait":1}', "profiles"),
            (b'{"profiles":[""],"wait":1}', "profiles"),
            (b'{"profiles":[],"wait":0}', "wait"),
            (b'{"profiles":[],"wait":true}', "wait"),
            (b'{"profiles":[],"wait":"30s"}', "wait"),
            (b'{"profiles":[],"wait":3601}', "wait"),
            (b'{"profiles":[],"wait":1}' + b" " * wire.MAX_REQUEST_BYTES, "over"),
        ],
    )
    def test_bad_requests_say_what_is_wrong(self, line: bytes, why: str) -> None:
        """Each refusal names the field or the limit, never the value sent."""
        with pytest.raises(ValueError, match=why):
            wire.parse_request(line)

    def test_answer_round_trip(self) -> None:
        """Outcomes (landed, failed) and a refusal of the whole request survive the line."""
        failure = classify("AccessDenied", "not allowed")
        answer = wire.Answer(
            outcomes=(wire.Outcome("a", expires_at=LATER), wire.Outcome("b", failure=failure))
        )
        back = wire.parse_answer(wire.format_answer(answer))
        assert back.outcomes[0] == wire.Outcome("a", expires_at=LATER)
        assert back.outcomes[1].failure == Failure(
            "AccessDenied", "not allowed", True, failure.hint
        )
        refused = wire.Answer(error="unknown_profile", message="x", unknown=("x",))
        assert wire.parse_answer(wire.format_answer(refused)) == refused

    def test_broken_answers_are_refused(self) -> None:
        for line in (b"{}", b'{"profiles":[{}]}', b"[1]"):
            with pytest.raises(ValueError, match="answer"):
                wire.parse_answer(line)

    def test_read_line_is_bounded(self) -> None:
        """One line by the deadline, within the budget; a flood, an early close or silence
        is an error, not a hang."""
        clock = SystemClock()
        a, b = socket.socketpair()
        with a, b:
            a.sendall(b"hello\nrest")
            assert wire.read_line(b, 10, clock.monotonic() + 5, clock) == b"hello"
            a.sendall(b"x" * 20)
            with pytest.raises(ValueError, match="over 10 bytes"):
                wire.read_line(b, 10, clock.monotonic() + 5, clock)
            with pytest.raises(TimeoutError):
                wire.read_line(b, 10, clock.monotonic() + 0.05, clock)
            a.shutdown(socket.SHUT_WR)
            with pytest.raises(ValueError, match="closed"):
                wire.read_line(b, 10, clock.monotonic() + 5, clock)


class TestTicket:
    def test_only_a_run_started_after_the_request_counts(self) -> None:
        """A run in flight before the request neither lands nor fails it; a later run's
        landing needs its own credentials (not another write's)."""
        ticket = Ticket(["a", "b"])
        ticket.issued("a", creds())
        ticket.landed("a", creds())
        ticket.failed("b", classify("Throttling"))
        assert ticket.wait(0) == {}
        ticket.started("a")
        ticket.issued("a", creds("ASIAAAAAAAAAAAAA0002"))
        ticket.landed("a", creds())
        assert ticket.wait(0) == {}
        ticket.landed("a", creds("ASIAAAAAAAAAAAAA0002"))
        ticket.started("b")
        ticket.failed("b", classify("Throttling"))
        got = ticket.wait(1.0)
        assert got["a"].access_key_id.endswith("0002")  # type: ignore[union-attr]
        assert got["b"] == classify("Throttling")

    def test_write_failure_and_close_resolve_the_rest(self) -> None:
        ticket = Ticket(["a", "b", "c"])
        for name in ("a", "b"):
            ticket.started(name)
        ticket.issued("a", creds())
        ticket.write_failed(Failure("write_failed", "disk full", False))
        ticket.removed("b", Failure("unknown_profile", "removed", True))
        ticket.close(Failure("daemon_stopping", "", False))
        got = ticket.wait(0)
        assert {n: f.code for n, f in got.items()} == {  # type: ignore[union-attr]
            "a": "write_failed",
            "b": "unknown_profile",
            "c": "daemon_stopping",
        }


class TestVerdicts:
    def test_unknown_names_refuse_the_request_naming_each(self) -> None:
        assert control.unknown_names(["a"], {"a", "b"}) is None
        refused = control.unknown_names(["a", "x", "y"], {"a"})
        assert refused is not None
        assert refused.error == "unknown_profile"
        assert refused.unknown == ("x", "y")
        assert "x, y" in refused.message

    def test_outcomes_in_the_order_asked(self) -> None:
        """Landed, failed, and not in time (`refresh_timeout`, with its hint)."""
        failure = classify("AccessDenied", "no")
        answer = control.outcomes(["a", "b", "c"], {"b": failure, "a": creds()}, 30.0)
        assert [o.name for o in answer.outcomes] == ["a", "b", "c"]
        assert answer.outcomes[0].expires_at == LATER
        assert answer.outcomes[1].failure == failure
        late = answer.outcomes[2].failure
        assert late is not None
        assert late.code == "refresh_timeout"
        assert "30s" in late.message
        assert late.hint == CODES["refresh_timeout"]


class TestClientLines:
    def test_lines_are_onces(self) -> None:
        """The same words as `credfresh once`: stdout for landed, stderr for failures with
        the hint on its own line; exit 1 when any did not land."""
        failure = classify("AccessDenied", "not allowed")
        answer = wire.Answer(
            outcomes=(wire.Outcome("a", expires_at=LATER), wire.Outcome("b", failure=failure))
        )
        out, err, status = client.render(answer, NOW)
        assert out == "refreshed a: expires 2030-01-01T13:00:00Z (in 1h00m)\n"
        assert out == refreshed_line("a", LATER, NOW)
        assert err == (f"failed b: AccessDenied (permanent): not allowed\n  hint: {failure.hint}\n")
        assert err == failed_lines("b", failure)
        assert status == 1
        assert client.render(wire.Answer(outcomes=answer.outcomes[:1]), NOW)[2] == 0
        transient = failed_lines("c", Failure("timeout", "slow", False))
        assert transient == "failed c: timeout (transient): slow\n"

    def test_a_refusal_is_an_error_with_its_hint(self) -> None:
        assert client.answer_error(wire.Answer()) is None
        error = client.answer_error(wire.Answer(error="unknown_profile", message="not: x"))
        assert error is not None
        assert error.code == "unknown_profile"
        assert str(error) == f"not: x\n  hint: {CODES['unknown_profile']}"

    def test_wait_is_a_positive_duration(self) -> None:
        assert client.parse_wait("30s") == 30.0
        assert client.parse_wait("2m") == 120.0
        for bad in ("0s", "soon", "2h"):
            with pytest.raises(UsageError, match="--wait"):
                client.parse_wait(bad)


def serve(
    path: Path, *, euid: int, log: RecordingLogger, results: Mapping[str, Any] | None = None
) -> control.ControlServer:
    def refresh(names: Collection[str], wait: float) -> Mapping[str, Any]:
        return dict(results or {})

    server = control.ControlServer(
        path, euid=euid, refresh=refresh, known=lambda: {"a", "b"}, log=log, clock=SystemClock()
    )
    server.start()
    return server


@pytest.fixture
def deep(tmp_path: Path) -> Path:
    """A state directory whose socket path is longer than sun_path."""
    directory = tmp_path / ("d" * 60) / ("e" * 60)
    directory.mkdir(parents=True)
    return directory / "state.json.sock"


class TestServer:
    def test_long_path_stale_socket_mode_and_removal(self, deep: Path) -> None:
        """Past the 108-byte limit it still binds and answers; a stale socket is replaced;
        the socket is 0600 and gone after stop."""
        directory = os.open(deep.parent, os.O_PATH)
        with socket.socket(socket.AF_UNIX) as stale:
            stale.bind(wire.unix_address(deep, directory))  # bound, never listening
        os.close(directory)
        log = RecordingLogger()
        server = serve(deep, euid=os.geteuid(), log=log, results={"a": creds()})
        try:
            assert stat.S_IMODE(deep.lstat().st_mode) == 0o600
            answer = client.ask(deep, wire.Request(("a",), 5.0), SystemClock())
            assert answer.outcomes == (wire.Outcome("a", expires_at=LATER),)
            unknown = client.ask(deep, wire.Request(("z",), 5.0), SystemClock())
            assert unknown.error == "unknown_profile"
        finally:
            server.stop()
        assert not deep.exists()
        assert [p.name for p in deep.parent.iterdir()] == []

    def test_another_uid_is_refused_and_logged(self, tmp_path: Path) -> None:
        """SO_PEERCRED: a peer whose uid is not the daemon's is refused; the log says the uid."""
        log = RecordingLogger()
        path = tmp_path / "state.json.sock"
        server = serve(path, euid=os.geteuid() + 1, log=log)
        try:
            answer = client.ask(path, wire.Request(("a",), 5.0), SystemClock())
        finally:
            server.stop()
        assert answer.error == "control_refused"
        assert ("control_refused", {"suppressed": 0, "uid": os.geteuid()}) in log.pairs()

    def test_a_bad_request_is_refused(self, tmp_path: Path) -> None:
        log = RecordingLogger()
        path = tmp_path / "state.json.sock"
        server = serve(path, euid=os.geteuid(), log=log)
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.connect(str(path))
                sock.sendall(b"nonsense\n")
                line = wire.read_line(sock, 4096, SystemClock().monotonic() + 5, SystemClock())
        finally:
            server.stop()
        assert wire.parse_answer(line).error == "bad_request"
        assert log.pairs()[-1][0] == "control_request_invalid"

    def test_something_else_in_the_way_is_not_replaced(self, tmp_path: Path) -> None:
        path = tmp_path / "state.json.sock"
        path.write_text("mine")
        with pytest.raises(CredfileError, match="something else is there"):
            serve(path, euid=os.geteuid(), log=RecordingLogger())
        assert path.read_text() == "mine"

    def test_a_socket_still_served_is_not_taken_over(self, tmp_path: Path) -> None:
        """Two configs naming one state file: the second daemon leaves the first's socket, and
        its probe (a connect and close) costs the first no warning."""
        path = tmp_path / "state.json.sock"
        first_log = RecordingLogger()
        first = serve(path, euid=os.geteuid(), log=first_log, results={"a": creds()})
        try:
            with pytest.raises(CredfileError, match="another credfresh serves"):
                serve(path, euid=os.geteuid(), log=RecordingLogger())
            answer = client.ask(path, wire.Request(("a",), 5.0), SystemClock())
            assert answer.outcomes == (wire.Outcome("a", expires_at=LATER),)
        finally:
            first.stop()
        assert not path.exists()
        assert "control_request_invalid" not in first_log.events(), "the probe is no bad request"
