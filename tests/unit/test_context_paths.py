"""Context and its path expansion: the environment given, never the process's."""

from __future__ import annotations

import io
import os
import pwd
from pathlib import Path

import pytest

from credfresh.context import Context, expand_user, expand_vars
from credfresh.process.allocator import tune_malloc


def test_home_comes_from_the_given_environment() -> None:
    """`Context.home` is $HOME of the Context's environ, the password database without one."""
    sink = io.StringIO()
    assert Context(sink, sink, {"HOME": "/h"}).home == Path("/h")
    assert Context(sink, sink, {}, home=Path("/given")).home == Path("/given")
    assert Context(sink, sink, {"HOME": ""}).home == Path.home()


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("~", "/home/given"),
        ("~/", "/home/given/"),
        ("~/.aws/credentials", "/home/given/.aws/credentials"),
        ("/abs/~", "/abs/~"),
        ("rel", "rel"),
        ("~root/x", os.path.expanduser("~root/x")),
    ],
)
def test_expand_user_is_expanduser_with_the_given_home(path: str, expected: str) -> None:
    """Same answer as os.path.expanduser, with the home passed in."""
    assert expand_user(path, "/home/given/") == expected


def test_expand_user_without_home_uses_the_password_database() -> None:
    """No home given: the user's entry, as Path.home() falls back to."""
    assert expand_user("~/x", None) == pwd.getpwuid(os.getuid()).pw_dir + "/x"


@pytest.mark.parametrize("path", ["$A/b", "${A}/b", "$MISSING/b", "${}", "a$", "$A$A", "no vars"])
def test_expand_vars_matches_expandvars(path: str) -> None:
    """Same answer as os.path.expandvars would give with the mapping as the environment."""
    environ = {"A": "/x"}
    expected = {
        "$A/b": "/x/b",
        "${A}/b": "/x/b",
        "$MISSING/b": "$MISSING/b",
        "${}": "${}",
        "a$": "a$",
        "$A$A": "/x/x",
        "no vars": "no vars",
    }
    assert expand_vars(path, environ) == expected[path]


def test_tune_malloc_leaves_a_users_setting_alone() -> None:
    """A MALLOC_* variable in the environ given means the user tunes glibc: nothing is set."""
    assert tune_malloc({"MALLOC_ARENA_MAX": "4"}) is False
