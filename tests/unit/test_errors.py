"""errors.py: every code credfresh raises is in the table, and each error type has one exit."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from credfresh.cli import main
from credfresh.errors import (
    CODES,
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_LOCKED,
    EXIT_STATUS,
    AlreadyRunning,
    ConfigError,
    ConsoleError,
    CredfileError,
    CredfreshError,
    NoCredentials,
    SinkError,
    UsageError,
)

PACKAGE = Path(__file__).resolve().parents[2] / "daemon" / "credfresh"
CODE_LITERAL = re.compile(r'\bcode\s*=\s*"([A-Za-z_]+)"')


def _exit_of(error: CredfreshError) -> int:
    return next(status for kind, status in EXIT_STATUS if isinstance(error, kind))


def test_every_code_raised_is_in_the_table() -> None:
    """A `code="..."` anywhere in the package (devsts aside) has a hint: credfresh's own in
    errors.CODES, a source failure's in sources.classify.HINTS."""
    from credfresh.sources.classify import HINTS

    found = {
        code
        for path in PACKAGE.rglob("*.py")
        if "devsts" not in path.parts
        for code in CODE_LITERAL.findall(path.read_text())
    }
    assert found
    assert found - set(CODES) - set(HINTS) == set()


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (AlreadyRunning("held"), EXIT_LOCKED),
        (ConfigError(["a: b"]), EXIT_CONFIG),
        (UsageError("--x: y"), EXIT_CONFIG),
        (CredfileError("bad", code="unsafe_path"), EXIT_FAILED),
        (NoCredentials.missing("p", "/f"), EXIT_FAILED),
        (ConsoleError("no", code="federation_refused", status=400), EXIT_FAILED),
        (SinkError("HTTP 500"), EXIT_FAILED),
    ],
)
def test_each_type_has_its_exit_status(error: CredfreshError, status: int) -> None:
    """The first matching row of EXIT_STATUS gives the documented exit code."""
    assert _exit_of(error) == status


def test_expired_and_missing_messages() -> None:
    """The fast commands' two failures read as they always did, with their own codes."""
    missing = NoCredentials.missing("p", "/f")
    expired = NoCredentials.expired("p", "2026-01-01T00:00:00Z")
    assert str(missing) == "profile p has no credentials in /f (is credfresh running?)"
    assert str(expired) == (
        "profile p expired at 2026-01-01T00:00:00Z (is credfresh running? see `credfresh status`)"
    )
    assert (missing.code, expired.code) == ("no_credentials", "credentials_expired")


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err, environ={"HOME": "/nonexistent"})
    return code, out.getvalue(), err.getvalue()


def test_cli_prints_usage_errors_without_a_code(tmp_path: Path) -> None:
    """A raised UsageError is exit 2 and `credfresh: message`, before any file is read."""
    code, out, err = _cli("status", "--min-remaining", "soon", "-c", str(tmp_path / "no.yaml"))
    assert (code, out) == (EXIT_CONFIG, "")
    assert err.startswith("credfresh: --min-remaining: ")


def test_cli_prints_file_errors_with_their_code(tmp_path: Path) -> None:
    """A CredfileError is exit 1 and `credfresh: CODE: message`."""
    garbage = tmp_path / "credentials"
    garbage.write_text("garbage\n")
    code, _, err = _cli("credential-process", "p", "--credentials-file", str(garbage))
    assert code == EXIT_FAILED
    assert err.startswith("credfresh: unparseable_file: ")


def test_removed_option_is_a_usage_error() -> None:
    """`run --once-then-exit` was read by nothing and is gone: argparse refuses it (exit 2)."""
    code, _, err = _cli("run", "--once-then-exit")
    assert code == EXIT_CONFIG
    assert "unrecognized arguments: --once-then-exit" in err
