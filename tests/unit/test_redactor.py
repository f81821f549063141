"""The redactor's shortcuts (short strings, one search for the four shapes) change nothing."""

from __future__ import annotations

import random
import secrets
import string

import pytest

from credfresh.observe import logs
from credfresh.observe.logs import REDACTED, Redactor

KEY_ID = "ASIA" + "".join(random.Random(1).choices(string.ascii_uppercase + string.digits, k=16))
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYzEXAMPLEKY"
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW0ifQ.c2lnbmF0dXJl"
TOKEN = "IQoJb3JpZ2luX2VjE" + "A" * 120
PIECES = [
    KEY_ID,
    SECRET,
    JWT,
    TOKEN,
    "arn:aws:iam::123456789012:role/r0001",
    "2026-12-04T22:10:00.123456Z",
    "refreshed",
    "info",
    "p0001",
    " ",
    "=",
    "/",
    "x" * 39,
    "Y" * 41,
]


def _substituted(value: str) -> str:
    """The four substitutions, always and in their order: what `text` must give."""
    value = logs._JWT.sub(REDACTED, value)
    value = logs._LONG_TOKEN.sub(REDACTED, value)
    value = logs._SECRET_LIKE.sub(REDACTED, value)
    return logs._ACCESS_KEY_ID.sub(r"\1...\2", value)


def _corpus(count: int) -> list[str]:
    rng = random.Random(20)
    found = [*PIECES, ""]
    for _ in range(count):
        found.append("".join(rng.choice(PIECES) for _ in range(rng.randint(1, 4))))
    return found


@pytest.mark.parametrize("value", PIECES)
def test_each_shape_alone_is_found(value: str) -> None:
    assert Redactor().text(value) == _substituted(value)


def test_the_shortcuts_give_what_the_substitutions_give() -> None:
    redactor = Redactor()
    changed = 0
    for value in _corpus(2000):
        expected = _substituted(value)
        assert redactor.text(value) == expected, f"differs for a {len(value)}-character value"
        changed += expected != value
    assert changed > 500, "the corpus must exercise the substitutions"


def test_known_secrets_still_go_first() -> None:
    """A known secret is replaced before the shapes are looked for, with many known or few."""
    for known in (1, 100):
        redactor = Redactor()
        mine = [secrets.token_hex(12) for _ in range(known)]
        redactor.add(*mine)
        text = f"token {mine[-1]} and {JWT}"
        assert redactor.text(text) == f"token {REDACTED} and {REDACTED}"


def test_shorter_than_any_secret_is_untouched() -> None:
    redactor = Redactor()
    redactor.add("abcdefgh")
    assert redactor.text("abcdefg") == "abcdefg"
    assert redactor.text("abcdefgh") == REDACTED


def test_many_known_secrets_are_found_whatever_their_characters() -> None:
    """Past `_SCAN_ALL_BELOW` known secrets only positions inside runs of the characters
    that begin secrets are looked up; a secret of any characters, anywhere, is still found."""
    rng = random.Random(7)
    odd = string.ascii_letters + string.digits + "-_.]^\\[:/+= "
    known = ["".join(rng.choice(odd) for _ in range(rng.randint(8, 30))) for _ in range(150)]
    redactor = Redactor()
    redactor.add(*known)
    around = [*PIECES[4:], "x", "-", "..", "a1"]
    for _ in range(1000):
        chosen = rng.sample(known, rng.randint(1, 3))
        parts = [rng.choice(around)]
        for secret in chosen:
            parts += [secret, rng.choice(around)]
        value = "".join(parts)
        expected = value
        for secret in sorted(known, key=len, reverse=True):
            expected = expected.replace(secret, REDACTED)
        assert redactor.text(value) == _substituted(expected)


def test_a_secret_whose_start_ends_a_run_is_found() -> None:
    """`!` begins no secret, so the run of secret characters ends after exactly eight."""
    redactor = Redactor()
    redactor.add(*(secrets.token_hex(12) for _ in range(100)), "abcdefgh!!x", "zyxwvuts")
    assert redactor.text("-abcdefgh!!x-") == f"-{REDACTED}-"
    assert redactor.text("zyxwvuts") == REDACTED
