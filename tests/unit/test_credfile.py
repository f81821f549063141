"""Unit and file-system tests of the credentials-file writer, reader and atomic-write helper."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.configloader import raw_config_parse

from credfresh.credentials import Credentials
from credfresh.credfile import atomic as atomicfile
from credfresh.credfile import handles
from credfresh.credfile.atomic import atomic_write
from credfresh.credfile.format import FileView, merge, render_section, view_of
from credfresh.credfile.handles import file_lock, resolve_target
from credfresh.credfile.store import FileStore, WriteResult, read_managed, write_profiles
from credfresh.errors import CredfileError
from support import children
from support.helpers_credfile import (
    NOBODY,
    OWNER,
    SECRET_MARK,
    WRITER_CHILD,
    child_env,
    make_creds,
    run_child,
    run_writer,
)

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root to create files of other users")

FOREIGN = (
    "# my hand-written profiles\n"
    "[default]\n"
    "aws_access_key_id = AKIAFOREIGN\n"
    "aws_secret_access_key = foreign-secret\n"
    "\n"
    "; another comment\n"
    "[team]\n"
    "x_credfresh_owner = someone-else\n"
    "aws_access_key_id=AKIATEAM\n"
)


def _mine(name: str, serial: int) -> str:
    return render_section(name, make_creds(serial), OWNER)


@pytest.fixture
def creds_path(tmp_path: Path) -> Path:
    """A credentials path in a fresh directory."""
    return tmp_path / "aws" / "credentials"


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory outside the 0700 pytest tree, so an unprivileged child can reach it."""
    base = Path(tempfile.mkdtemp(prefix="credfresh-test-", dir="/tmp"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _events() -> tuple[list[tuple[str, dict[str, object]]], atomicfile.EventCallback]:
    seen: list[tuple[str, dict[str, object]]] = []

    def record(name: str, fields: dict[str, object]) -> None:
        seen.append((name, fields))

    return seen, record


def _temps(directory: Path) -> list[str]:
    return [name for name in os.listdir(directory) if ".credfresh-" in name]


class TestRenderSection:
    def test_format_matches_the_issue(self) -> None:
        """A section is written in the documented key order with `key = value` lines."""
        creds = Credentials(
            "ASIAEXAMPLE",
            "secret",
            "token",
            datetime(2026, 11, 28, 16, 0, tzinfo=UTC),
            datetime(2026, 11, 28, 15, 0, 0, 123456, tzinfo=UTC),
            "arn:aws:sts::123456789012:assumed-role/app/credfresh-app-prod",
        )
        assert render_section("app-prod", creds, "me") == (
            "[app-prod]\n"
            "aws_access_key_id = ASIAEXAMPLE\n"
            "aws_secret_access_key = secret\n"
            "aws_session_token = token\n"
            "aws_account_id = 123456789012\n"
            "x_security_token_expires = 2026-11-28T16:00:00Z\n"
            "x_principal_arn = arn:aws:sts::123456789012:assumed-role/app/credfresh-app-prod\n"
            "x_credfresh_owner = me\n"
            "x_credfresh_issued = 2026-11-28T15:00:00Z\n"
            "x_credfresh_format = 1\n"
        )

    def test_empty_principal_is_left_out(self) -> None:
        """Without a principal ARN the optional key is not written."""
        assert "x_principal_arn" not in render_section("p", make_creds(1, principal=False), OWNER)

    @pytest.mark.parametrize("name", ["", "DEFAULT", "a\nb", "a\rb"])
    def test_unusable_profile_names_are_refused(self, name: str) -> None:
        """Names that would not read back as the same section raise ValueError."""
        with pytest.raises(ValueError, match="profile"):
            render_section(name, make_creds(1), OWNER)

    @pytest.mark.parametrize("owner", ["", " me", "me ", "a\nb"])
    def test_unusable_owners_are_refused(self, owner: str) -> None:
        """An owner that would not compare equal after reading back raises ValueError."""
        with pytest.raises(ValueError, match="owner"):
            render_section("p", make_creds(1), owner)

    def test_multi_line_secret_is_refused_without_echoing_it(self) -> None:
        """A value with a newline raises ValueError naming the key, never the value."""
        bad = Credentials(
            "ASIA1", f"{SECRET_MARK}\nmore", "t", datetime.now(UTC), datetime.now(UTC)
        )
        with pytest.raises(ValueError, match="aws_secret_access_key") as caught:
            render_section("p", bad, OWNER)
        assert SECRET_MARK not in str(caught.value)


class TestMerge:
    def test_empty_file_gets_exactly_the_section(self) -> None:
        """Writing into an empty file yields the rendered section and nothing else."""
        result = merge("", OWNER, {"p": make_creds(1)})
        assert result.text == _mine("p", 1)
        assert result.updated == ("p",)
        assert result.changed

    def test_new_sections_go_at_the_end_after_a_blank_line(self) -> None:
        """Existing bytes stay a prefix; each new section follows one blank line."""
        result = merge(FOREIGN, OWNER, {"a": make_creds(1), "b": make_creds(2)})
        assert result.text == FOREIGN + "\n" + _mine("a", 1) + "\n" + _mine("b", 2)

    def test_missing_final_newline_gets_one_before_a_new_section(self) -> None:
        """The only change to existing bytes: a newline after an unterminated last line."""
        text = FOREIGN.rstrip("\n")
        result = merge(text, OWNER, {"a": make_creds(1)})
        assert result.text == text + "\n\n" + _mine("a", 1)

    def test_missing_final_newline_kept_when_only_updating(self) -> None:
        """An update in the middle leaves an unterminated last line alone."""
        text = _mine("a", 1) + "\n" + FOREIGN.rstrip("\n")
        result = merge(text, OWNER, {"a": make_creds(2)})
        assert result.text == _mine("a", 2) + "\n" + FOREIGN.rstrip("\n")

    def test_update_stays_in_place(self) -> None:
        """An updated section keeps its position between other sections."""
        text = FOREIGN + "\n" + _mine("a", 1) + "\n# trailing note\n[z]\nk = v\n"
        result = merge(text, OWNER, {"a": make_creds(9)})
        assert result.text == FOREIGN + "\n" + _mine("a", 9) + "\n# trailing note\n[z]\nk = v\n"
        assert result.updated == ("a",)

    def test_unchanged_section_is_no_change(self) -> None:
        """The same credentials again produce the same text and report nothing."""
        text = FOREIGN + "\n" + _mine("a", 1)
        result = merge(text, OWNER, {"a": make_creds(1)})
        assert not result.changed
        assert result.text == text
        assert result.updated == ()

    def test_odd_spelling_of_our_marker_is_ours(self) -> None:
        """Key case, `:` and spacing do not hide the owner marker (configparser semantics)."""
        text = "[a]  \n  AWS_ACCESS_KEY_ID:x\n  X_CREDFRESH_OWNER :  test-owner  \n"
        assert merge(text, OWNER, {"a": make_creds(1)}).text == _mine("a", 1)

    def test_unmarked_section_is_a_conflict_naming_only_the_profile(self) -> None:
        """A same-named section without our marker is reported, kept, and others still merge."""
        text = f"[a]\naws_secret_access_key = {SECRET_MARK}\n"
        result = merge(text, OWNER, {"a": make_creds(1), "b": make_creds(2)})
        error = result.conflicts["a"]
        assert error.code == "section_conflict"
        assert error.profile == "a"
        assert "'a'" in error.message
        assert SECRET_MARK not in error.message
        assert result.text == text + "\n" + _mine("b", 2)
        assert result.updated == ("b",)

    def test_other_owners_section_is_a_conflict(self) -> None:
        """Another credfresh's section (another owner) is not ours to change."""
        result = merge(FOREIGN, OWNER, {"team": make_creds(1)})
        assert result.conflicts["team"].code == "section_conflict"
        assert result.text == FOREIGN
        assert not result.changed

    def test_adopt_replaces_contents_in_place(self) -> None:
        """An adopted profile's foreign section is replaced where it stands."""
        result = merge(FOREIGN, OWNER, {"default": make_creds(3)}, adopt={"default"})
        assert result.text == (
            "# my hand-written profiles\n" + _mine("default", 3) + FOREIGN.split("\n", 4)[4]
        )
        assert not result.conflicts

    def test_removal_takes_the_blank_line_before(self) -> None:
        """A removed section goes with the blank line that separated it from the previous one."""
        text = FOREIGN + "\n" + _mine("a", 1) + "\n[z]\nk = v\n"
        result = merge(text, OWNER, {}, {"a"})
        assert result.text == FOREIGN + "\n[z]\nk = v\n"
        assert result.removed == ("a",)

    def test_removal_at_the_start_takes_the_blank_line_after(self) -> None:
        """A first section with no blank line before it takes the one after."""
        text = _mine("a", 1) + "\n[z]\nk = v\n"
        assert merge(text, OWNER, {}, {"a"}).text == "[z]\nk = v\n"

    def test_removal_keeps_comments_around_the_section(self) -> None:
        """Comments before the header and after the last key belong to the user and stay."""
        text = "[z]\nk = v\n# about a\n" + _mine("a", 1) + "# after a\n[y]\nk = w\n"
        assert (
            merge(text, OWNER, {}, {"a"}).text == "[z]\nk = v\n# about a\n# after a\n[y]\nk = w\n"
        )

    def test_removal_ignores_sections_not_ours(self) -> None:
        """Removing an unmarked or other owner's section is a no-op."""
        result = merge(FOREIGN, OWNER, {}, {"default", "team", "missing"})
        assert result.text == FOREIGN
        assert result.removed == ()

    def test_header_lookalike_inside_a_value_is_not_a_section(self) -> None:
        """An indented `[x]` continuing a value is part of that value, as configparser reads it."""
        text = "[z]\nk = v\n  [a]\n"
        result = merge(text, OWNER, {"a": make_creds(1)})
        assert result.text == text + "\n" + _mine("a", 1)
        assert result.sections == {"z", "a"}

    def test_indented_header_after_our_section_refuses_the_change(self) -> None:
        """A change that would turn the next (indented) header into a value fails instead."""
        text = "[a]\n    x_credfresh_owner = test-owner\n  [z]\nk = v\n"
        assert view_of(text, OWNER).foreign == {"z"}
        with pytest.raises(CredfileError) as caught:
            merge(text, OWNER, {"a": make_creds(1)})
        assert caught.value.code == "write_failed"
        assert caught.value.line == 3

    def test_crlf_bytes_are_kept(self) -> None:
        """Windows line endings outside our sections survive an update and a removal."""
        text = "[z]\r\nk = v\r\n\r\n" + _mine("a", 1) + "\r\n[y]\r\nk = w"
        result = merge(text, OWNER, {"b": make_creds(2)}, {"a"})
        assert result.text == "[z]\r\nk = v\r\n\r\n[y]\r\nk = w\n\n" + _mine("b", 2)

    def test_default_section_does_not_grant_ownership(self) -> None:
        """A marker in [DEFAULT] does not make other sections ours."""
        text = "[DEFAULT]\nx_credfresh_owner = test-owner\n[a]\nk = v\n"
        assert "a" in merge(text, OWNER, {"a": make_creds(1)}).conflicts

    def test_update_and_removal_of_one_profile_is_refused(self) -> None:
        """The same profile in both sets is a caller bug: ValueError."""
        with pytest.raises(ValueError, match="both"):
            merge("", OWNER, {"a": make_creds(1)}, {"a"})

    @pytest.mark.parametrize(
        ("text", "line"),
        [
            (f"[a]\nk = v\n[b]\n[a]\naws_secret_access_key = {SECRET_MARK}\n", 4),
            (f"[a]\n{SECRET_MARK} garbage\n", 2),
            (f"# c\naws_secret_access_key = {SECRET_MARK}\n", 2),
            (f"[a]\n= {SECRET_MARK}\n", 2),
        ],
    )
    def test_unparseable_text_reports_the_line_not_the_content(self, text: str, line: int) -> None:
        """Text a strict parser rejects raises `unparseable_file` with the 1-based line."""
        with pytest.raises(CredfileError) as caught:
            merge(text, OWNER, {"p": make_creds(1)})
        assert caught.value.code == "unparseable_file"
        assert caught.value.line == line
        assert f"line {line}" in str(caught.value)
        assert SECRET_MARK not in str(caught.value)


class TestReadManaged:
    def test_reads_back_what_was_written(self, creds_path: Path) -> None:
        """Written profiles read back as equal Credentials (times at whole seconds)."""
        creds = make_creds(5, now=datetime(2026, 11, 28, 15, 0, 0, 999, tzinfo=UTC))
        creds_path.parent.mkdir()
        creds_path.write_text(FOREIGN)
        write_profiles(creds_path, OWNER, {"p": creds, "q": make_creds(6, principal=False)})
        view = read_managed(creds_path, OWNER)
        assert view.managed["p"] == Credentials(
            creds.access_key_id,
            creds.secret_access_key,
            creds.session_token,
            creds.expiration.replace(microsecond=0) if creds.expiration else None,
            creds.issued.replace(microsecond=0),
            creds.principal_arn,
        )
        assert view.managed["q"].principal_arn == ""
        assert view.foreign == {"default", "team"}
        assert view.damaged == frozenset()

    def test_store_parses_again_only_when_the_bytes_change(self, creds_path: Path) -> None:
        """The engine's store keeps the last parse: same bytes, same view; any change of the
        bytes (even one keeping the size and the time), a new parse."""
        creds_path.parent.mkdir()
        creds_path.write_text(FOREIGN)
        write_profiles(creds_path, OWNER, {"p": make_creds(1)})
        store = FileStore(os.geteuid())
        first = store.read_managed(creds_path, OWNER)
        assert store.read_managed(creds_path, OWNER) is first
        assert store.read_managed(creds_path, "someone-else") is not first
        before = creds_path.stat()
        text = creds_path.read_text()
        creds_path.write_text(text.replace("[team]", "[tean]"))
        os.utime(creds_path, ns=(before.st_atime_ns, before.st_mtime_ns))
        changed = store.read_managed(creds_path, OWNER)
        assert changed is not first
        assert changed.foreign == {"default", "tean"}
        creds_path.unlink()
        assert store.read_managed(creds_path, OWNER) == FileView({}, frozenset(), frozenset())

    def test_missing_file_is_an_empty_view(self, creds_path: Path) -> None:
        """Reading a file that does not exist yet is not an error."""
        assert read_managed(creds_path, OWNER) == FileView({}, frozenset(), frozenset())

    def test_damaged_sections_are_listed(self) -> None:
        """Our sections with a missing key, a bad time or another format are `damaged`."""
        good = _mine("good", 1)
        text = (
            good
            + good.replace("[good]", "[no-token]").replace("aws_session_token", "x_other")
            + good.replace("[good]", "[bad-time]").replace("2026-11-28T16", "tomorrow-16")
            + good.replace("[good]", "[future]").replace(
                "x_credfresh_format = 1", "x_credfresh_format = 2"
            )
        )
        view = view_of(text, OWNER)
        assert set(view.managed) == {"good"}
        assert view.damaged == {"no-token", "bad-time", "future"}

    def test_profiles_filter(self) -> None:
        """With `profiles`, only those are decoded; foreign names are still all listed."""
        text = _mine("a", 1) + _mine("b", 2) + "[c]\nk = v\n"
        view = view_of(text, OWNER, profiles=["b"])
        assert set(view.managed) == {"b"}
        assert view.foreign == {"c"}

    def test_repr_shows_no_secret(self) -> None:
        """A FileView can be logged: Credentials mask their secrets."""
        assert SECRET_MARK not in repr(view_of(_mine("a", 1), OWNER))

    def test_unparseable_file_names_path_and_line(self, creds_path: Path) -> None:
        """A broken file raises `unparseable_file` with the path and line number."""
        creds_path.parent.mkdir()
        creds_path.write_bytes(b"[a]\nk = v\n\n\xff\xfe = x\n")
        with pytest.raises(CredfileError) as caught:
            read_managed(creds_path, OWNER)
        assert caught.value.code == "unparseable_file"
        assert caught.value.line == 4
        assert str(creds_path) in str(caught.value)

    def test_imports_only_stdlib(self) -> None:
        """The reader (credential-process path) pulls in nothing outside the stdlib."""
        code = (
            "import sys; before = set(sys.modules); import credfresh.credfile.store; "
            "print(*sorted(set(sys.modules) - before))"
        )
        done = run_child(code)
        assert done.returncode == 0, done.stderr
        loaded = done.stdout.split()
        outside = {m for m in loaded if m.split(".")[0] not in sys.stdlib_module_names}
        ours = {m for m in outside if m.startswith("credfresh")}
        assert outside == ours
        assert ours == {
            "credfresh",
            "credfresh.context",
            "credfresh.credfile",
            "credfresh.credfile.atomic",
            "credfresh.credfile.format",
            "credfresh.credfile.handles",
            "credfresh.credfile.store",
            "credfresh.credentials",
            "credfresh.errors",
            "credfresh.isotime",
            "credfresh.trust",
        }

    def test_format_is_pure(self) -> None:
        """The text rules (parse, render, merge) import no disk or lock machinery."""
        code = (
            "import sys; before = set(sys.modules); import credfresh.credfile.format; "
            "print(*sorted(m for m in set(sys.modules) - before if m.startswith('credfresh')))"
        )
        done = run_child(code)
        assert done.returncode == 0, done.stderr
        assert set(done.stdout.split()) == {
            "credfresh",
            "credfresh.credentials",
            "credfresh.credfile",
            "credfresh.credfile.format",
            "credfresh.errors",
            "credfresh.isotime",
        }


class TestWriteProfiles:
    def test_creates_file_and_private_directories(self, tmp_path: Path) -> None:
        """Missing parents are created 0700 and the file 0600, even under umask 000."""
        path = tmp_path / "a" / "b" / "credentials"
        old = os.umask(0)
        try:
            result = write_profiles(path, OWNER, {"p": make_creds(1)})
        finally:
            os.umask(old)
        assert result.written
        assert result.updated == ("p",)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
        assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o700
        assert stat.S_IMODE(Path(f"{path}.lock").stat().st_mode) == 0o600
        assert raw_config_parse(str(path))["p"]["x_credfresh_owner"] == OWNER

    def test_mode_is_0600_under_a_narrow_umask(self, creds_path: Path) -> None:
        """A umask that would make the file unreadable to us still yields 0600."""
        old = os.umask(0o277)
        try:
            write_profiles(creds_path, OWNER, {"p": make_creds(1)})
        finally:
            os.umask(old)
        assert stat.S_IMODE(creds_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(creds_path.parent.stat().st_mode) == 0o700

    def test_existing_wider_mode_becomes_0600(self, creds_path: Path) -> None:
        """A world-readable credentials file is replaced by a 0600 one."""
        creds_path.parent.mkdir()
        creds_path.write_text(FOREIGN)
        creds_path.chmod(0o644)
        write_profiles(creds_path, OWNER, {"p": make_creds(1)})
        assert stat.S_IMODE(creds_path.stat().st_mode) == 0o600

    def test_unchanged_bytes_skip_the_write(self, creds_path: Path) -> None:
        """A batch that changes nothing leaves the file (inode and mtime) alone."""
        write_profiles(creds_path, OWNER, {"p": make_creds(1)})
        before = creds_path.stat()
        result = write_profiles(creds_path, OWNER, {"p": make_creds(1)}, {"absent"})
        after = creds_path.stat()
        assert not result.written
        assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)

    def test_nothing_to_write_creates_no_file(self, creds_path: Path) -> None:
        """Removing from a missing file does not create one."""
        result = write_profiles(creds_path, OWNER, {}, {"p"})
        assert not result.written
        assert not creds_path.exists()

    def test_batch_updates_removes_and_reports_conflicts(self, creds_path: Path) -> None:
        """One call adds, updates, removes, and reports a conflict while writing the rest."""
        creds_path.parent.mkdir()
        creds_path.write_text(FOREIGN + "\n" + _mine("old", 1) + "\n" + _mine("gone", 2))
        result = write_profiles(
            creds_path,
            OWNER,
            {"old": make_creds(3), "new": make_creds(4), "team": make_creds(5)},
            {"gone"},
        )
        assert result.written
        assert set(result.updated) == {"old", "new"}
        assert result.removed == ("gone",)
        assert set(result.conflicts) == {"team"}
        assert creds_path.read_text() == FOREIGN + "\n" + _mine("old", 3) + "\n" + _mine("new", 4)

    def test_unparseable_file_is_never_rewritten(self, creds_path: Path) -> None:
        """A file with a duplicate section fails with its line and stays byte-identical."""
        creds_path.parent.mkdir()
        broken = f"[a]\nk = v\n\n[a]\naws_secret_access_key = {SECRET_MARK}\n"
        creds_path.write_text(broken)
        with pytest.raises(CredfileError) as caught:
            write_profiles(creds_path, OWNER, {"p": make_creds(1)})
        assert caught.value.code == "unparseable_file"
        assert caught.value.line == 4
        assert SECRET_MARK not in str(caught.value)
        assert creds_path.read_text() == broken
        assert _temps(creds_path.parent) == []

    def test_non_utf8_file_is_refused_with_its_line(self, creds_path: Path) -> None:
        """Bytes that are not UTF-8 make the file unparseable at their line."""
        creds_path.parent.mkdir()
        creds_path.write_bytes(b"[a]\r\nk = v\r\nj = \xe9t\xe9\r\n")
        with pytest.raises(CredfileError) as caught:
            write_profiles(creds_path, OWNER, {"p": make_creds(1)})
        assert (caught.value.code, caught.value.line) == ("unparseable_file", 3)

    def test_foreign_change_before_rename_is_merged_again(self, creds_path: Path) -> None:
        """A file changed between our read and rename is read and merged again, losing nothing."""
        creds_path.parent.mkdir()
        creds_path.write_text(FOREIGN)
        seen, record = _events()

        def meddle(attempt: int) -> None:
            if attempt == 1:
                with creds_path.open("a") as handle:
                    handle.write("\n[added-meanwhile]\nk = v\n")

        result = write_profiles(
            creds_path, OWNER, {"p": make_creds(1)}, on_event=record, before_commit=meddle
        )
        assert result.written
        text = creds_path.read_text()
        assert text == FOREIGN + "\n[added-meanwhile]\nk = v\n" + "\n" + _mine("p", 1)
        assert [name for name, _ in seen] == ["credfile_changed_during_write"]
        assert _temps(creds_path.parent) == []

    def test_same_size_change_is_noticed(self, creds_path: Path) -> None:
        """A rewrite keeping size and inode is still caught (the hash covers mtime granularity)."""
        creds_path.parent.mkdir()
        creds_path.write_text("[z]\nk = a\n")
        calls: list[int] = []

        def meddle(attempt: int) -> None:
            calls.append(attempt)
            if attempt == 1:
                stamp = creds_path.stat()
                with creds_path.open("r+") as handle:
                    handle.write("[z]\nk = b\n")
                os.utime(creds_path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))

        write_profiles(creds_path, OWNER, {"p": make_creds(1)}, before_commit=meddle)
        assert calls == [1, 2]
        assert creds_path.read_text().startswith("[z]\nk = b\n")

    def test_file_that_keeps_changing_fails_and_is_not_overwritten(self, creds_path: Path) -> None:
        """After the last merge attempt the write fails; the other program's file stays."""
        creds_path.parent.mkdir()
        creds_path.write_text(FOREIGN)

        def meddle(attempt: int) -> None:
            with creds_path.open("a") as handle:
                handle.write(f"\n[meddler-{attempt}]\nk = v\n")

        with pytest.raises(CredfileError) as caught:
            write_profiles(creds_path, OWNER, {"p": make_creds(1)}, before_commit=meddle)
        assert caught.value.code == "write_failed"
        assert "[p]" not in creds_path.read_text()
        assert "[meddler-4]" in creds_path.read_text()
        assert _temps(creds_path.parent) == []

    def test_lock_timeout_in_process(self, creds_path: Path) -> None:
        """A held lock makes the write fail with `write_failed` after the timeout."""
        creds_path.parent.mkdir()
        creds_path.write_text(FOREIGN)
        with file_lock(Path(f"{creds_path}.lock"), 1.0):
            began = time.monotonic()
            with pytest.raises(CredfileError) as caught:
                write_profiles(creds_path, OWNER, {"p": make_creds(1)}, lock_timeout=0.2)
            waited = time.monotonic() - began
        assert caught.value.code == "write_failed"
        assert 0.2 <= waited < 2.0
        assert creds_path.read_text() == FOREIGN

    def test_stale_temps_are_removed_by_age_and_pid(self, tmp_path: Path) -> None:
        """Unlocked cleanup: dead writers' temps past the grace, or very old ones, go."""
        probe = subprocess.Popen(["true"])  # its pid is one of an exited process
        probe.wait()
        path = tmp_path / "credentials"
        names = {
            "dead_old": f".credentials.credfresh-{probe.pid}-aaaaaaaaaaaa.tmp",
            "dead_young": f".credentials.credfresh-{probe.pid}-bbbbbbbbbbbb.tmp",
            "live_young": f".credentials.credfresh-{os.getpid()}-cccccccccccc.tmp",
            "live_ancient": f".credentials.credfresh-{os.getpid()}-dddddddddddd.tmp",
            "other_target": f".config.credfresh-{probe.pid}-eeeeeeeeeeee.tmp",
            "not_ours": f".credentials.credfresh-{probe.pid}-zz.tmp",
        }
        for name in names.values():
            (tmp_path / name).write_text("partial")
        now = time.time()
        ages = {"dead_old": 10, "dead_young": 0, "live_young": 0}
        for key, name in names.items():
            age = ages.get(key, 120)
            os.utime(tmp_path / name, (now - age, now - age))
        seen, record = _events()
        assert atomicfile.remove_stale_temps(path, on_event=record) == 2
        left = set(os.listdir(tmp_path))
        assert left == set(names.values()) - {names["dead_old"], names["live_ancient"]}
        assert [name for name, _ in seen] == ["stale_temp_removed"] * 2

    def test_writer_holding_the_lock_removes_every_leftover(self, creds_path: Path) -> None:
        """Under the lock no other writer of the target is running: all its temps are stale."""
        creds_path.parent.mkdir()
        leftovers = [
            f".credentials.credfresh-{os.getpid()}-cccccccccccc.tmp",
            ".credentials.credfresh-1-aaaaaaaaaaaa.tmp",
        ]
        for name in [*leftovers, ".config.credfresh-1-aaaaaaaaaaaa.tmp"]:
            (creds_path.parent / name).write_text("partial")
        write_profiles(creds_path, OWNER, {"p": make_creds(1)})
        assert _temps(creds_path.parent) == [".config.credfresh-1-aaaaaaaaaaaa.tmp"]

    def test_injected_ebusy_falls_back_to_in_place(
        self, creds_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A rename failing with EBUSY rewrites the same inode and reports it once."""
        creds_path.parent.mkdir()
        creds_path.write_text(FOREIGN)
        inode = creds_path.stat().st_ino

        def busy(src: object, dst: object, **_: object) -> None:
            raise OSError(errno.EBUSY, "Device or resource busy")

        monkeypatch.setattr(atomicfile, "_rename", busy)
        seen, record = _events()
        store = FileStore(os.geteuid())
        store.write_profiles(creds_path, OWNER, {"p": make_creds(1)}, on_event=record)
        store.write_profiles(creds_path, OWNER, {"p": make_creds(2)}, on_event=record)
        assert creds_path.stat().st_ino == inode
        assert creds_path.read_text() == FOREIGN + "\n" + _mine("p", 2)
        assert [name for name, _ in seen] == ["rewritten_in_place"]
        assert seen[0][1]["reason"] == "EBUSY"
        assert _temps(creds_path.parent) == []

    def test_other_rename_errors_fail_cleanly(
        self, creds_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Any other rename failure is `write_failed`, the temp is gone, the old file intact."""
        creds_path.parent.mkdir()
        creds_path.write_text(FOREIGN)

        def denied(src: object, dst: object, **_: object) -> None:
            raise OSError(errno.EACCES, "Permission denied")

        monkeypatch.setattr(atomicfile, "_rename", denied)
        with pytest.raises(CredfileError) as caught:
            write_profiles(creds_path, OWNER, {"p": make_creds(1)})
        assert caught.value.code == "write_failed"
        assert creds_path.read_text() == FOREIGN
        assert _temps(creds_path.parent) == []

    def test_dotdot_in_a_link_is_taken_after_resolving(self, tmp_path: Path) -> None:
        """`..` in a link target is applied to the real directory, as the kernel does."""
        (tmp_path / "b" / "c").mkdir(parents=True)
        (tmp_path / "a").mkdir()
        (tmp_path / "a" / "dirlink").symlink_to(tmp_path / "b" / "c")
        (tmp_path / "b" / "c" / "credentials").symlink_to("../real")
        result = write_profiles(
            tmp_path / "a" / "dirlink" / "credentials", OWNER, {"p": make_creds(1)}
        )
        assert result.path == tmp_path / "b" / "real"
        assert (tmp_path / "b" / "real").read_text() == _mine("p", 1)

    def test_own_symlink_is_written_through(self, tmp_path: Path) -> None:
        """A symlink owned by our user keeps pointing at the real file, which gets the update."""
        real = tmp_path / "real" / "credentials"
        real.parent.mkdir()
        real.write_text(FOREIGN)
        link = tmp_path / "home" / ".aws" / "credentials"
        link.parent.mkdir(parents=True)
        link.symlink_to(os.path.relpath(real, link.parent))
        result = write_profiles(link, OWNER, {"p": make_creds(1)})
        assert link.is_symlink()
        assert result.path == real
        assert real.read_text() == FOREIGN + "\n" + _mine("p", 1)
        assert Path(f"{real}.lock").exists()
        assert read_managed(link, OWNER).managed["p"].access_key_id == make_creds(1).access_key_id


class TestForkedStore:
    """The daemon's store writes in a forked child: the same file, result, notices and errors
    as the write in-process, and the write in-process whenever the child gives no answer."""

    @staticmethod
    def _counting_fork(monkeypatch: pytest.MonkeyPatch) -> list[int]:
        forks: list[int] = []
        real = os.fork

        def fork() -> int:
            forks.append(1)
            return real()

        monkeypatch.setattr(os, "fork", fork)
        return forks

    def test_same_file_and_result_as_in_process(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        alone, child = tmp_path / "alone" / "credentials", tmp_path / "child" / "credentials"
        for path in (alone, child):
            path.parent.mkdir()
            path.write_text(FOREIGN)
            write_profiles(path, OWNER, {"old": make_creds(1), "p": make_creds(2)})
        forks = self._counting_fork(monkeypatch)
        before = children()
        updates = {"p": make_creds(3), "q": make_creds(4)}
        expected = write_profiles(alone, OWNER, updates, ["old"])
        got = FileStore(os.geteuid(), forked=True).write_profiles(child, OWNER, updates, ["old"])
        assert forks == [1]
        assert children() == before
        assert child.read_bytes() == alone.read_bytes()
        assert (got.written, got.updated, got.removed) == (True, ("p", "q"), ("old",))
        assert (got.written, got.updated, got.removed) == (
            expected.written,
            expected.updated,
            expected.removed,
        )
        assert got.path == child
        assert stat.S_IMODE(child.stat().st_mode) == 0o600
        assert _temps(child.parent) == []

    def test_notices_reach_the_parent_once(
        self, creds_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The child inherits the parent's state (here an EBUSY rename); its notices are
        logged by the parent, which reports the rewrite in place once per path."""
        creds_path.parent.mkdir()
        creds_path.write_text(FOREIGN)

        def busy(src: object, dst: object, **_: object) -> None:
            raise OSError(errno.EBUSY, "Device or resource busy")

        monkeypatch.setattr(atomicfile, "_rename", busy)
        forks = self._counting_fork(monkeypatch)
        seen, record = _events()
        store = FileStore(os.geteuid(), forked=True)
        store.write_profiles(creds_path, OWNER, {"p": make_creds(1)}, on_event=record)
        store.write_profiles(creds_path, OWNER, {"p": make_creds(2)}, on_event=record)
        assert forks == [1, 1]
        assert creds_path.read_text() == FOREIGN + "\n" + _mine("p", 2)
        assert [name for name, _ in seen] == ["rewritten_in_place"]
        assert seen[0][1] == {"path": str(creds_path), "reason": "EBUSY"}

    def test_errors_and_conflicts_cross_whole(self, creds_path: Path) -> None:
        store = FileStore(os.geteuid(), forked=True)
        creds_path.parent.mkdir()
        creds_path.write_text(FOREIGN)
        result = store.write_profiles(creds_path, OWNER, {"team": make_creds(1)})
        conflict = result.conflicts["team"]
        assert isinstance(conflict, CredfileError)
        assert (conflict.code, conflict.profile) == ("section_conflict", "team")
        assert creds_path.read_text() == FOREIGN
        creds_path.write_bytes(b"[a]\nk = v\n\n\xff\xfe = x\n")
        with pytest.raises(CredfileError) as caught:
            store.write_profiles(creds_path, OWNER, {"p": make_creds(1)})
        assert (caught.value.code, caught.value.line) == ("unparseable_file", 4)
        assert str(creds_path) in str(caught.value)

    def test_no_answer_means_the_write_in_process(
        self, creds_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A child stuck, then killed, and no fork at all: either way the parent writes, says
        why, and leaves neither a child nor a temp file."""
        from credfresh.credfile import store as credfile_store

        before = children()
        parent, real = os.getpid(), credfile_store.write_profiles

        def stuck_in_a_child(*args: Any, **kwargs: Any) -> WriteResult:
            if os.getpid() != parent:
                threading.Event().wait(3600)  # a child stuck on a lock; killed at once
            return real(*args, **kwargs)

        monkeypatch.setattr(credfile_store, "write_profiles", stuck_in_a_child)
        monkeypatch.setattr(credfile_store, "WRITE_PATIENCE", 0.0)
        store = FileStore(os.geteuid(), forked=True)
        seen, record = _events()
        for serial in range(1, 6):
            store.write_profiles(creds_path, OWNER, {"p": make_creds(serial)}, on_event=record)
            assert read_managed(creds_path, OWNER).managed["p"] == make_creds(serial)
            assert children() == before
            assert _temps(creds_path.parent) == []
        said = [fields for name, fields in seen if name == "write_in_process"]
        assert said == [{"path": str(creds_path), "reason": "no answer from its child"}] * 5

        def refuse() -> int:
            raise OSError(11, "Resource temporarily unavailable")

        monkeypatch.setattr(os, "fork", refuse)
        seen.clear()
        for serial in (9, 10):
            result = store.write_profiles(
                creds_path, OWNER, {"p": make_creds(serial)}, on_event=record
            )
            assert result.written
            assert read_managed(creds_path, OWNER).managed["p"] == make_creds(serial)
        assert seen == [
            ("write_in_process", {"path": str(creds_path), "reason": "no child could start"})
        ]


@needs_root
class TestOwnershipAsRoot:
    def test_symlink_of_another_user_is_refused(self, tmp_path: Path) -> None:
        """Root does not follow a link another user could point anywhere."""
        real = tmp_path / "real"
        real.write_text(FOREIGN)
        link = tmp_path / "credentials"
        link.symlink_to(real)
        os.lchown(link, NOBODY, NOBODY)
        with pytest.raises(CredfileError) as caught:
            write_profiles(link, OWNER, {"p": make_creds(1)})
        assert caught.value.code == "unsafe_path"
        assert str(link) in str(caught.value)
        assert real.read_text() == FOREIGN

    def test_file_of_another_user_is_refused(self, tmp_path: Path) -> None:
        """Root does not replace a credentials file that belongs to someone else."""
        path = tmp_path / "credentials"
        path.write_text(FOREIGN)
        os.chown(path, NOBODY, NOBODY)
        with pytest.raises(CredfileError) as caught:
            write_profiles(path, OWNER, {"p": make_creds(1)})
        assert caught.value.code == "unsafe_path"
        assert str(path) in str(caught.value)
        assert path.read_text() == FOREIGN

    def test_directory_of_another_user_is_refused(self, tmp_path: Path) -> None:
        """Root does not write into (or create under) another user's directory."""
        home = tmp_path / "home"
        home.mkdir()
        os.chown(home, NOBODY, NOBODY)
        for path in (home / "credentials", home / ".aws" / "credentials"):
            with pytest.raises(CredfileError) as caught:
                write_profiles(path, OWNER, {"p": make_creds(1)})
            assert caught.value.code == "unsafe_path"
        assert os.listdir(home) == []

    def test_directory_symlink_of_another_user_is_refused(self, tmp_path: Path) -> None:
        """A link in the directory path planted by another user is refused too."""
        (tmp_path / "target").mkdir()
        link = tmp_path / "aws"
        link.symlink_to(tmp_path / "target")
        os.lchown(link, NOBODY, NOBODY)
        with pytest.raises(CredfileError) as caught:
            resolve_target(link / "credentials")
        assert caught.value.code == "unsafe_path"

    def test_reader_applies_the_same_rules(self, tmp_path: Path) -> None:
        """Reading through another user's link is refused, so nobody can plant credentials."""
        real = tmp_path / "planted"
        real.write_text(_mine("p", 1))
        link = tmp_path / "credentials"
        link.symlink_to(real)
        os.lchown(link, NOBODY, NOBODY)
        with pytest.raises(CredfileError) as caught:
            read_managed(link, OWNER)
        assert caught.value.code == "unsafe_path"

    def test_group_is_kept(self, creds_path: Path) -> None:
        """Root keeps an existing root-owned file's group when replacing it."""
        creds_path.parent.mkdir()
        creds_path.write_text(FOREIGN)
        os.chown(creds_path, 0, 100)
        write_profiles(creds_path, OWNER, {"p": make_creds(1)})
        assert (creds_path.stat().st_uid, creds_path.stat().st_gid) == (0, 100)


def _as_nobody(*groups: int) -> tuple[str, ...]:
    chosen = ["--groups", ",".join(map(str, groups))] if groups else ["--clear-groups"]
    return ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", *chosen)


@needs_root
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv")
class TestOwnershipUnprivileged:
    def test_owner_and_group_kept(self, shared_dir: Path) -> None:
        """An unprivileged writer keeps its file's group when it belongs to that group."""
        home = shared_dir / "home"
        home.mkdir(mode=0o700)
        os.chown(home, NOBODY, NOBODY)
        path = home / "credentials"
        path.write_text(FOREIGN)
        os.chown(path, NOBODY, 100)
        old_inode = path.stat().st_ino
        report = run_writer(path, [{"p": 1}], prefix=_as_nobody(100))
        assert report["ok"] == [{"written": True, "updated": ["p"]}]
        st = path.stat()
        assert st.st_ino != old_inode  # replaced by rename, not rewritten
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY, 100, 0o600)
        assert report["events"] == []

    def test_group_not_kept_is_reported(self, shared_dir: Path) -> None:
        """When the writer may not keep the group it says so through on_event."""
        home = shared_dir / "home"
        home.mkdir(mode=0o700)
        os.chown(home, NOBODY, NOBODY)
        path = home / "credentials"
        path.write_text(FOREIGN)
        os.chown(path, NOBODY, 100)
        report = run_writer(path, [{"p": 1}], prefix=_as_nobody())
        assert [event[0] for event in report["events"]] == ["owner_not_kept"]
        assert path.stat().st_gid == NOBODY

    @pytest.mark.parametrize("sticky", [True, False])
    def test_shared_world_writable_directory_is_fine(self, shared_dir: Path, sticky: bool) -> None:
        """A root-owned 0777 directory (an emptyDir) is usable by a non-root writer."""
        shared = shared_dir / "emptydir"
        shared.mkdir()
        shared.chmod(0o1777 if sticky else 0o777)
        path = shared / "credentials"
        report = run_writer(path, [{"p": 1}, {"q": 2}], prefix=_as_nobody())
        assert "error" not in report, report
        st = path.stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (NOBODY, 0o600)
        assert stat.S_IMODE(Path(f"{path}.lock").stat().st_mode) == 0o600
        assert set(raw_config_parse(str(path))) == {"p", "q"}

    def test_symlink_of_another_user_is_refused(self, shared_dir: Path) -> None:
        """A non-root writer refuses a link it does not own (here root's) in a shared directory."""
        shared = shared_dir / "emptydir"
        shared.mkdir()
        shared.chmod(0o1777)
        target = shared_dir / "elsewhere"
        (shared / "credentials").symlink_to(target)
        report = run_writer(shared / "credentials", [{"p": 1}], prefix=_as_nobody())
        assert report["error"] == "unsafe_path"
        assert str(shared / "credentials") in str(report["message"])
        assert not target.exists()


def _can_bind_mount() -> bool:
    if not ROOT or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount --make-rprivate / && mount -t tmpfs none /mnt"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


BIND_SCRIPT = """
set -e
mount --make-rprivate /
mount --bind "$1" "$2"
shift 2
exec "$@"
"""


@pytest.mark.skipif(not _can_bind_mount(), reason="needs root and mount namespaces")
class TestBindMountedFile:
    def test_single_file_bind_mount_is_rewritten_in_place(self, tmp_path: Path) -> None:
        """Renaming onto a bind-mounted file fails with EBUSY; the same inode is rewritten."""
        source = tmp_path / "source" / "credentials"
        source.parent.mkdir()
        source.write_text(FOREIGN)
        source.chmod(0o600)
        target = tmp_path / "mnt" / "credentials"
        target.parent.mkdir()
        target.write_text("")
        inode = source.stat().st_ino
        batches = json.dumps([{"p": 1}, {"p": 2}])
        command = ["unshare", "-m", "sh", "-c", BIND_SCRIPT, "sh", str(source), str(target)]
        done = subprocess.run(
            [*command, sys.executable, "-c", WRITER_CHILD, str(target), OWNER, batches],
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["ok"] == [{"written": True, "updated": ["p"]}] * 2
        assert [event[0] for event in report["events"]] == ["rewritten_in_place"]
        assert source.stat().st_ino == inode
        text = source.read_text()
        assert text.startswith(FOREIGN)
        assert "ASIA0000000000000002" in text
        assert _temps(target.parent) == []
        assert _temps(source.parent) == []


class TestAtomicWrite:
    def test_a_snapshot_never_shows_the_bytes_it_keeps(self, creds_path: Path) -> None:
        """The snapshot keeps the file's bytes to compare them whole: they hold secrets."""
        write_profiles(creds_path, OWNER, {"p": make_creds(1)})
        with handles.open_target(creds_path) as target:
            _, snapshot = atomicfile.read_at(target.directory, target.name)
        assert snapshot.data == creds_path.read_bytes()
        assert SECRET_MARK in snapshot.data.decode()
        assert SECRET_MARK not in repr(snapshot)
        assert SECRET_MARK not in str(snapshot)

    def test_returns_false_when_bytes_are_unchanged(self, tmp_path: Path) -> None:
        """The generic helper skips identical content and reports whether it wrote."""
        path = tmp_path / "state.json"
        assert atomic_write(path, b"{}")
        inode = path.stat().st_ino
        assert not atomic_write(path, b"{}")
        assert path.stat().st_ino == inode
        assert atomic_write(path, b"{1}", mode=0o644)
        assert stat.S_IMODE(path.stat().st_mode) == 0o644

    def test_created_directories_are_private(self, tmp_path: Path) -> None:
        """Only directories a write creates are forced to 0700."""
        tmp_path.chmod(0o755)
        atomic_write(tmp_path / "x" / "y" / "f", b"")
        assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755
        assert stat.S_IMODE((tmp_path / "x").stat().st_mode) == 0o700

    def test_target_that_is_a_directory_is_refused(self, tmp_path: Path) -> None:
        """A directory where the file should be is `unsafe_path`, not overwritten."""
        (tmp_path / "credentials").mkdir()
        with pytest.raises(CredfileError) as caught:
            atomic_write(tmp_path / "credentials", b"x")
        assert caught.value.code == "unsafe_path"


def test_expiry_is_rounded_down_to_whole_seconds() -> None:
    """Written expiry never claims more lifetime than STS gave (sub-seconds dropped)."""
    moment = datetime(2026, 11, 28, 16, 0, 0, 900000, tzinfo=UTC)
    creds = Credentials("ASIA1", "s", "t", moment, moment - timedelta(hours=1))
    assert "x_security_token_expires = 2026-11-28T16:00:00Z" in render_section("p", creds, OWNER)
