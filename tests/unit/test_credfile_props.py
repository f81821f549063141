"""Property tests: merging our sections keeps every other byte, and botocore reads the result."""

from __future__ import annotations

import configparser
import io
import tempfile
from pathlib import Path

import pytest
from botocore.configloader import raw_config_parse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from credfresh.credfile.format import _parse, _split_lines, merge, render_section, view_of
from credfresh.errors import CredfileError
from support import examples
from support.helpers_credfile import (
    OTHER_OWNER,
    OWNER,
    PARSER_FRAGMENTS,
    FileModel,
    credentials_files,
    expected_merge,
    make_creds,
)

# Thousands of generated cases: the rules they check are covered by the unit tests;
# traced, these alone would add a minute to `make test`.
pytestmark = pytest.mark.unmeasured

# No example database: the suite must not write into the source tree.
PROPS = settings(
    max_examples=examples(250),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@st.composite
def file_and_changes(draw: st.DrawFn) -> tuple[FileModel, dict[str, int], set[str]]:
    """A file plus a batch: some managed profiles updated, some removed, some new ones added."""
    model = draw(credentials_files())
    managed = model.managed
    updated = draw(st.lists(st.sampled_from(managed), unique=True)) if managed else []
    rest = [name for name in managed if name not in updated]
    removed = draw(st.lists(st.sampled_from(rest), unique=True)) if rest else []
    new = [f"NEW-{i}" for i in range(draw(st.integers(0, 2)))]
    serials = {name: draw(st.integers(0, 10**6)) for name in [*updated, *new]}
    return model, serials, set(removed)


def _botocore_read(text: str) -> dict[str, dict[str, object]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "credentials"
        path.write_bytes(text.encode("utf-8"))
        parsed: dict[str, dict[str, object]] = raw_config_parse(str(path))
        return parsed


class TestMergeRoundTrip:
    @PROPS
    @given(file_and_changes())
    def test_only_managed_sections_change(
        self, case: tuple[FileModel, dict[str, int], set[str]]
    ) -> None:
        """Updates replace and removals drop our sections; every other line stays, byte for byte."""
        model, serials, removals = case
        updates = {name: make_creds(serial) for name, serial in serials.items()}
        rendered = {name: render_section(name, creds, OWNER) for name, creds in updates.items()}
        result = merge(model.text, OWNER, updates, removals)
        assert result.text == expected_merge(model, rendered, removals)
        assert set(result.removed) == removals
        assert not result.conflicts

    @settings(PROPS, max_examples=examples(80))
    @given(file_and_changes())
    def test_botocore_reads_the_result(
        self, case: tuple[FileModel, dict[str, int], set[str]]
    ) -> None:
        """botocore reads the merged file, sees other sections unchanged and ours as written."""
        model, serials, removals = case
        updates = {name: make_creds(serial) for name, serial in serials.items()}
        result = merge(model.text, OWNER, updates, removals)
        before = _botocore_read(model.text)
        after = _botocore_read(result.text)
        for name, options in before.items():
            if name not in updates and name not in removals:
                assert after[name] == options
        for name, creds in updates.items():
            assert after[name]["aws_access_key_id"] == creds.access_key_id
            assert after[name]["aws_session_token"] == creds.session_token
            assert after[name]["x_credfresh_owner"] == OWNER
        assert not removals & set(after)

    @PROPS
    @given(credentials_files(), st.integers(1, 3))
    def test_add_then_remove_gives_the_original_back(self, model: FileModel, count: int) -> None:
        """Appending sections and removing them again restores the file (plus a final newline)."""
        new = {f"NEW-{i}": make_creds(i) for i in range(count)}
        added = merge(model.text, OWNER, new)
        removed = merge(added.text, OWNER, {}, set(new))
        original = model.text
        if original and not original.endswith(("\n", "\r")):
            original += "\n"
        assert removed.text == original

    @PROPS
    @given(file_and_changes())
    def test_merge_is_idempotent(self, case: tuple[FileModel, dict[str, int], set[str]]) -> None:
        """Merging the same batch twice changes nothing the second time."""
        model, serials, removals = case
        updates = {name: make_creds(serial) for name, serial in serials.items()}
        first = merge(model.text, OWNER, updates, removals)
        second = merge(first.text, OWNER, updates, removals)
        assert not second.changed
        assert second.text == first.text
        assert second.updated == ()
        assert second.removed == ()

    @PROPS
    @given(credentials_files(), st.data())
    def test_foreign_sections_conflict_and_stay(
        self, model: FileModel, data: st.DataObject
    ) -> None:
        """Unmarked and other owners' sections are conflicts for updates and ignored by removals."""
        foreign = model.unmarked + model.other_owned
        if not foreign:
            return
        targets = data.draw(st.lists(st.sampled_from(foreign), min_size=1, unique=True))
        updates = {name: make_creds(7) for name in targets}
        result = merge(model.text, OWNER, updates, removals=())
        assert set(result.conflicts) == set(targets)
        assert all(error.code == "section_conflict" for error in result.conflicts.values())
        assert result.text == model.text
        assert merge(model.text, OWNER, {}, set(foreign)).text == model.text

    @PROPS
    @given(credentials_files())
    def test_view_sees_what_the_generator_made(self, model: FileModel) -> None:
        """The reader classifies ours, unmarked and other owners' sections as generated."""
        view = view_of(model.text, OWNER)
        assert set(view.damaged) == set(model.managed)  # generated sections lack the keys
        assert set(view.foreign) == set(model.unmarked) | set(model.other_owned)
        assert OTHER_OWNER not in view.damaged


@st.composite
def fragment_texts(draw: st.DrawFn) -> str:
    """Line soup from valid, odd and broken fragments with mixed line endings."""
    lines = draw(st.lists(st.sampled_from(PARSER_FRAGMENTS), max_size=14))
    endings = st.sampled_from(["\n", "\n", "\r\n", "\r"])
    text = "".join(line + draw(endings) for line in lines)
    if draw(st.booleans()):
        text = text.rstrip("\r\n")
    return text


def _configparser_view(text: str) -> dict[str, dict[str, str]] | None:
    parser = configparser.RawConfigParser(strict=True)
    try:
        parser.read_file(io.StringIO(text, newline=None))
    except configparser.Error:
        return None
    view = {name: dict(parser.items(name, raw=True)) for name in parser.sections()}
    view[configparser.DEFAULTSECT] = dict(parser.defaults())
    return view


def _our_view(text: str) -> dict[str, dict[str, str]] | None:
    try:
        sections = _parse(_split_lines(text))
    except CredfileError:
        return None
    defaults: dict[str, str] = {}
    for section in sections:
        if section.name == configparser.DEFAULTSECT:
            defaults = {key: section.value(key) or "" for key in section.options}
    view = {
        section.name: {**defaults, **{key: section.value(key) or "" for key in section.options}}
        for section in sections
        if section.name != configparser.DEFAULTSECT
    }
    view[configparser.DEFAULTSECT] = defaults
    return view


class TestParserMatchesConfigparser:
    @settings(PROPS, max_examples=examples(600))
    @given(fragment_texts())
    def test_same_sections_values_and_errors(self, text: str) -> None:
        """Our splitter accepts exactly what RawConfigParser(strict=True) accepts, read alike."""
        assert _our_view(text) == _configparser_view(text)

    @PROPS
    @given(credentials_files())
    def test_generated_files_read_alike(self, model: FileModel) -> None:
        """On the generated credentials-like files both parsers agree too."""
        assert _our_view(model.text) == _configparser_view(model.text)

    @pytest.mark.parametrize(
        ("text", "line"),
        [
            ("[a]\nk = v\n[a]\n", 3),
            ("# c\n\nk = v\n[a]\n", 3),
            ("[a]\nk = v\nK = w\n", 3),
            ("[a]\n= v\n", 2),
            ("[a]\nk = v\n\ngarbage\n", 4),
            ("[a]\r\nk = v\r\n[a]\r\n", 3),
            ("[a]\rk = v\r[a]\r", 3),
        ],
    )
    def test_error_lines(self, text: str, line: int) -> None:
        """The first offending line is reported 1-based, counting any line ending."""
        with pytest.raises(CredfileError) as caught:
            _parse(_split_lines(text))
        assert caught.value.code == "unparseable_file"
        assert caught.value.line == line
        assert _configparser_view(text) is None
