"""Static sets (a copied profile's long-term keys): no token, no expiry, every consumer."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from credfresh.alerts.records import AlertState
from credfresh.alerts.rules import Policy, ProfileFacts, on_tick
from credfresh.commands import fastpath
from credfresh.commands.refresh import render
from credfresh.commands.report import refreshed_line
from credfresh.commands.status import status_rows
from credfresh.config.model import Profile, StsSettings
from credfresh.context import SystemClock
from credfresh.credentials import NEVER, Credentials, endpoint_unavailable, format_expiry
from credfresh.credfile.format import merge, render_section, view_of
from credfresh.engine import policy as refresh
from credfresh.engine.parts import expiry, same_on_disk
from credfresh.outputs.env_file import render_env
from credfresh.outputs.health import readiness
from credfresh.process import control_wire as wire
from credfresh.process.control import outcomes
from credfresh.sources import static_watch
from credfresh.sources.copy import CopySource
from credfresh.sources.select import SourceSet
from credfresh.sources.static_watch import ABSENT, FileDigests, files_digest, text_digest

T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
OWNER = "test"
KEY = "AKIAEXAMPLESTATIC001"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSTATICKEY"


def static(token: str = "") -> Credentials:
    return Credentials(KEY, SECRET, token, None, T0)


def temporary() -> Credentials:
    return Credentials("ASIAEXAMPLETEMP00001", SECRET, "IQoJtoken", T0 + timedelta(hours=1), T0)


class TestValue:
    def test_static_never_expires(self) -> None:
        creds = static()
        assert creds.static
        assert creds.valid_at(T0 + timedelta(days=3650))
        assert creds.lifetime_seconds == float("inf")
        assert "never" in repr(creds)
        assert SECRET not in repr(creds)
        assert format_expiry(None) == format_expiry(NEVER) == "never"
        assert not temporary().static

    def test_views_see_never(self) -> None:
        """Snapshots give NEVER (readiness counts it fresh), not None (nothing on disk)."""
        assert expiry(static()) == NEVER
        assert expiry(None) is None
        assert readiness(T0, {"copy": NEVER}) == (
            200,
            {"ready": True, "profiles": 1, "failing": {}},
        )
        status, body = readiness(T0, {"copy": NEVER}, "copy")
        assert (status, body["expires_at"], body["ready"]) == (200, None, True)
        assert same_on_disk(static(), static())
        assert not same_on_disk(static("tok"), static())


class TestPolicy:
    def test_never_due_by_time(self) -> None:
        creds = static()
        later = T0 + timedelta(days=400)
        assert refresh.due_at(creds, None) is None
        assert refresh.jittered_due_at(creds, 600) is None
        assert not refresh.is_due(later, creds, None)
        assert refresh.state_of(later, creds, None) == "fresh"


class TestFile:
    def test_section_has_keys_only(self) -> None:
        """No aws_session_token, no expiry key; the static marker, credfresh's owner, issue
        time and format."""
        text = render_section("copy", static(), OWNER)
        assert text == (
            "[copy]\n"
            f"aws_access_key_id = {KEY}\n"
            f"aws_secret_access_key = {SECRET}\n"
            "x_credfresh_static = true\n"
            f"x_credfresh_owner = {OWNER}\n"
            "x_credfresh_issued = 2026-12-02T12:00:00Z\n"
            "x_credfresh_format = 1\n"
        )
        assert view_of(text, OWNER).managed == {"copy": static()}

    def test_token_without_expiry_reads_back(self) -> None:
        """A source that gives a token but no expiry: the token is kept, no expiry key."""
        text = render_section("copy", static("IQoJsource"), OWNER)
        assert "aws_session_token = IQoJsource\n" in text
        assert "x_security_token_expires" not in text
        assert view_of(text, OWNER).managed["copy"] == static("IQoJsource")

    def test_a_temporary_section_stripped_of_its_expiry_is_damaged(self) -> None:
        """Only the static marker lets a section go without an expiry: a temporary one
        whose expiry line was removed is not taken for long-term keys."""
        text = render_section("p", temporary(), OWNER)
        assert "x_credfresh_static" not in text
        stripped = "".join(line for line in text.splitlines(True) if "_expires" not in line)
        assert view_of(stripped, OWNER).damaged == {"p"}
        marked = render_section("copy", static(), OWNER)
        assert "x_credfresh_static = true\n" in marked
        unmarked = "".join(line for line in marked.splitlines(True) if "_static" not in line)
        assert view_of(unmarked, OWNER).damaged == {"copy"}

    def test_expiry_without_token_is_damaged(self) -> None:
        text = render_section("p", temporary(), OWNER)
        broken = "".join(line for line in text.splitlines(True) if "session_token" not in line)
        assert view_of(broken, OWNER).damaged == {"p"}

    def test_merge_switches_between_kinds(self) -> None:
        """A temporary section replaced by a static one (and back) in place."""
        first = merge("[base]\nk = v\n", OWNER, {"copy": temporary()}).text
        second = merge(first, OWNER, {"copy": static()}).text
        assert "aws_session_token" not in second
        assert second.startswith("[base]\nk = v\n\n[copy]\n")
        assert view_of(second, OWNER).managed["copy"] == static()
        assert merge(second, OWNER, {"copy": temporary()}).text == first


class TestCredentialProcess:
    def test_document_has_no_token_or_expiration(self) -> None:
        document = json.loads(fastpath.process_json(KEY, SECRET, "", None))
        assert document == {"Version": 1, "AccessKeyId": KEY, "SecretAccessKey": SECRET}

    def test_fast_path_reads_a_static_section(self) -> None:
        text = render_section("copy", static(), OWNER)
        options = fastpath.section_options(fastpath.split_lines(text), "copy")
        assert options is not None
        found = fastpath.section_credentials(options, OWNER)
        assert found == (KEY, SECRET, "", None, None)


class TestOutputs:
    def test_env_file_has_no_token_or_expiry(self) -> None:
        text = render_env(static(), "eu-west-1").decode()
        assert text == (
            f"AWS_ACCESS_KEY_ID={KEY}\nAWS_SECRET_ACCESS_KEY={SECRET}\nAWS_REGION=eu-west-1\n"
        )

    def test_endpoints_refuse_static_keys(self) -> None:
        """Container and IMDS protocols carry a Token and an Expiration: not served."""
        assert endpoint_unavailable(static(), T0) == "static_keys"
        assert endpoint_unavailable(None, T0) == "missing"
        assert endpoint_unavailable(temporary(), T0 + timedelta(hours=2)) == "expired"
        assert endpoint_unavailable(temporary(), T0) is None

    def test_status_and_report(self) -> None:
        rows = status_rows(T0, {"copy": ("", None)}, {"copy": static()}, frozenset(), {})
        assert rows[0]["state"] == "fresh"
        assert rows[0]["static"] is True
        assert (rows[0]["expires_at"], rows[0]["refresh_at"]) == (None, None)
        assert "never expire" in refreshed_line("copy", None, T0)
        assert "never expire" in refreshed_line("copy", NEVER, T0)

    def test_refresh_answer_says_never(self) -> None:
        """`credfresh refresh` hears NEVER over the control socket and prints `never`."""
        answer = outcomes(["copy"], {"copy": static()}, 5.0)
        back = wire.parse_answer(wire.format_answer(answer))
        out, err, status = render(back, T0)
        assert (out, err, status) == ("refreshed copy: static keys, never expire\n", "", 0)


class TestAlerts:
    def test_no_expiry_alert_and_old_ones_resolve(self) -> None:
        """A temporary set left to expire alerts; once a static set is on disk it resolves
        and no expiring/expired alert comes back, however long it stays."""
        policy = Policy(host="web-1")
        gone = T0 + timedelta(hours=2)
        step = on_tick(AlertState(), policy, now=gone, profiles={"p": ProfileFacts(None, T0)})
        assert step.state.get("expired", "p") is not None
        facts = {"p": ProfileFacts(None, None, static=True)}
        step = on_tick(step.state, policy, now=gone, profiles=facts)
        assert step.state.get("expired", "p") is None
        assert [e.status for e in step.events] == ["resolved"]
        far = gone + timedelta(days=365)
        assert on_tick(step.state, policy, now=far, profiles=facts).state.alerts == {}


class TestWatch:
    def test_credfresh_sections_do_not_count(self) -> None:
        """The digest follows the user's sections, not credfresh's, which change at every
        refresh (the copy would otherwise be refetched at every wake-up)."""
        base = b"[base]\naws_access_key_id = A\naws_secret_access_key = S\n"
        ours = b"\n[copy]\naws_access_key_id = X\nx_credfresh_owner = test\n"
        other = b"\n[copy]\naws_access_key_id = Y\nx_credfresh_owner = test\n"
        assert text_digest(base + ours) == text_digest(base + other) == text_digest(base)
        assert text_digest(base.replace(b"= S", b"= T")) != text_digest(base)

    def test_unreadable_and_missing_files(self) -> None:
        assert text_digest(b"no header\n").startswith("raw:")
        assert text_digest(b"\xff\xfe") != text_digest(b"\xff\xfd")
        assert files_digest({"/b": None, "/a": b"[x]\n"}) == (
            ("/a", text_digest(b"[x]\n")),
            ("/b", ABSENT),
        )


class TestFileDigests:
    def test_parsed_again_only_after_a_change(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The digest follows an edit; an unchanged file is not read again."""
        reads: list[str] = []
        real = static_watch.read_files

        def counted(paths: Sequence[str], home: Path | None) -> dict[str, bytes | None]:
            reads.extend(paths)
            return real(paths, home)

        monkeypatch.setattr(static_watch, "read_files", counted)
        path = tmp_path / "credentials"
        path.write_text("[base]\naws_access_key_id = AKIAONE\n")
        digests = FileDigests(None)
        first = digests.of([str(path)])
        assert digests.of([str(path)]) == first
        assert reads == [str(path)]
        path.write_text("[base]\naws_access_key_id = AKIATWO\n")
        assert digests.of([str(path)]) != first
        assert len(reads) == 2
        path.unlink()
        assert digests.of([str(path)]) == ((str(path), ABSENT),)


class TestSourceChanged:
    def test_a_source_that_never_read_a_copy_says_changed(self) -> None:
        """After a reload builds new sources, a held static copy is read again at the next
        wake-up: the new source knows none of its files."""
        profile = Profile(
            name="copy",
            role_arn="",
            refresh_before=None,
            role_session_name="credfresh-copy",
            duration_seconds=3600,
            region=None,
            source_profile="base",
            copy=True,
        )

        def made() -> CopySource:
            return CopySource(StsSettings(), credentials_file=None, clock=SystemClock())

        fresh = SourceSet({"copy": made})
        assert fresh.source_changed(profile)  # not built yet
        built = fresh.source_for("copy")
        assert isinstance(built, CopySource)
        assert built.source_changed(profile)  # built, but it never read this profile
