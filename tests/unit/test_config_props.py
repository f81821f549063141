"""Property tests: any document gives a valid config or a ConfigError, never another exception."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from credfresh.config.load import parse_document
from credfresh.config.validate import build_config
from credfresh.errors import ConfigError
from support import examples

# Thousands of generated cases: the rules they check are covered by the unit tests;
# traced, these alone would add a minute to `make test`.
pytestmark = pytest.mark.unmeasured

EXAMPLE = yaml.safe_load(Path("config/credfresh.example.yaml").read_text())
EXAMPLE_PATH = Path("config/credfresh.example.yaml").resolve()

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True),
    st.text(max_size=40),
    st.sampled_from(["1h", "15m", "90s", "arn:aws:iam::123456789012:role/x", "us-east-1"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)


def check(document: Any) -> None:
    problems: list[str] = []
    try:
        build_config(document, EXAMPLE_PATH, {}, Path("/home/tester"))
    except ConfigError as exc:
        problems = exc.problems or ["(none)"]
    assert all(": " in problem for problem in problems)


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from([*EXAMPLE.keys(), "junk"]), values, max_size=6))
def test_random_documents(document: dict[str, Any]) -> None:
    """Random documents over the real top-level keys never crash validation."""
    check(document)


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found.extend(paths(value, (*prefix, key)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.extend(paths(value, (*prefix, index)))
    return found


ALL_PATHS = paths(EXAMPLE)


@settings(max_examples=examples(250), deadline=None)
@given(st.lists(st.tuples(st.sampled_from(ALL_PATHS), values), min_size=1, max_size=4))
def test_mutations_of_example(mutations: list[tuple[tuple[Any, ...], Any]]) -> None:
    """Replacing any values of the valid example gives a config or a clean ConfigError."""
    document = copy.deepcopy(EXAMPLE)
    for path, value in mutations:
        node = document
        try:
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue
    check(document)


@settings(max_examples=examples(100), deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    """Arbitrary bytes parse to a mapping or raise ConfigError."""
    for name in ("c.yaml", "c.toml"):
        try:
            document = parse_document(data, Path(name))
        except ConfigError:
            continue
        check(document)
