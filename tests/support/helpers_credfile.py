"""Shared pieces of the credentials-file tests: sample credentials, file strategies, children."""

from __future__ import annotations

import json
import os
import string
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from credfresh.credentials import Credentials
from support import DAEMON_DIR

OWNER = "test-owner"
OTHER_OWNER = "someone-else"
NOBODY = 65534
NOW = datetime(2026, 11, 28, 15, 0, tzinfo=UTC)
SECRET_MARK = "SECRETzzSECRET"


def make_creds(serial: int, *, now: datetime = NOW, principal: bool = True) -> Credentials:
    """Credentials whose every field is derived from `serial`, so tests can tell writes apart."""
    return Credentials(
        access_key_id=f"ASIA{serial:016d}",
        secret_access_key=f"{SECRET_MARK}{serial:026d}",
        session_token=f"IQoJb3JpZ2luX2Vj{SECRET_MARK}{serial:040d}",
        expiration=now + timedelta(hours=1),
        issued=now,
        principal_arn=(
            f"arn:aws:sts::123456789012:assumed-role/app/credfresh-{serial}" if principal else ""
        ),
    )


def child_env() -> dict[str, str]:
    """Environment for child interpreters: our package importable, no bytecode written."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(DAEMON_DIR)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def run_child(
    code: str, *args: str, prefix: tuple[str, ...] = (), timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter (optionally under `prefix`, e.g. setpriv)."""
    return subprocess.run(
        [*prefix, sys.executable, "-c", code, *args],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# A child that writes profiles given as JSON and prints the result and the events as JSON.
WRITER_CHILD = """
import json, os, sys
from pathlib import Path
from datetime import UTC, datetime, timedelta
from credfresh.credentials import Credentials
from credfresh.credfile.store import FileStore
from credfresh.errors import CredfileError

path, owner, spec = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
now = datetime(2026, 11, 28, 15, 0, tzinfo=UTC)
events = []
def creds(serial):
    return Credentials(f"ASIA{serial:016d}", f"secret{serial}", f"token{serial}",
                       now + timedelta(hours=1), now)
out = []
store = FileStore(os.geteuid())
try:
    for batch in spec:
        result = store.write_profiles(
            Path(path), owner, {name: creds(serial) for name, serial in batch.items()},
            on_event=lambda name, fields: events.append([name, fields]),
        )
        out.append({"written": result.written, "updated": list(result.updated)})
    print(json.dumps({"ok": out, "events": events}))
except CredfileError as exc:
    print(json.dumps({"error": exc.code, "message": exc.message, "events": events}))
"""


def run_writer(
    path: Path, batches: list[dict[str, int]], *, prefix: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Run WRITER_CHILD and return its JSON report (fails the test on a crash)."""
    done = run_child(WRITER_CHILD, str(path), OWNER, json.dumps(batches), prefix=prefix)
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


# ----------------------------------------------------------------- file strategies

NAMES = st.from_regex(r"[a-z][a-z0-9_.-]{0,10}", fullmatch=True)
ODD_NAMES = ["with space", "x]y", "#hash", "a=b", "prof:x", "üñí", "default"]
VALUE_CHARS = string.ascii_letters + string.digits + " =:#;[]/+.-_\t\"'éü\u00a0€"
WORD_CHARS = string.ascii_letters + string.digits + "_-"


@dataclass
class FileModel:
    """A generated file as lines tagged with the managed profile owning them (or None)."""

    lines: list[tuple[str, str | None]] = field(default_factory=list)
    managed: list[str] = field(default_factory=list)
    unmarked: list[str] = field(default_factory=list)
    other_owned: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(text for text, _ in self.lines)

    def add(self, lines: list[str], tag: str | None = None) -> None:
        self.lines.extend((line, tag) for line in lines)


def _filler_lines(draw: st.DrawFn, newline: st.SearchStrategy[str]) -> list[str]:
    """Blank and comment lines: the bytes between sections that nobody may touch."""
    kinds = st.sampled_from(["blank", "spaces", "hash", "semi", "indented"])
    lines = []
    for kind in draw(st.lists(kinds, max_size=3)):
        text = draw(st.text(alphabet=VALUE_CHARS, max_size=16))
        line = {
            "blank": "",
            "spaces": draw(st.sampled_from([" ", "  ", "\t"])),
            "hash": "#" + text,
            "semi": ";" + text,
            "indented": draw(st.sampled_from(["  ", "\t"])) + draw(st.sampled_from("#;")) + text,
        }[kind]
        lines.append(line + draw(newline))
    return lines


def _section_lines(
    draw: st.DrawFn,
    name: str,
    owner: str | None,
    newline: st.SearchStrategy[str],
) -> list[str]:
    """A section with odd but valid formatting whose last line is a value line."""
    header = draw(st.sampled_from(["[{}]", "[{}]  ", "[{}]\t", "[{}] ; tail"])).format(name)
    lines = [header + draw(newline)]
    indent = draw(st.sampled_from(["", "", "  ", "\t"]))
    entries = [(f"key{i}", i) for i in range(draw(st.integers(0, 3)))]
    if owner is not None:
        entries.insert(draw(st.integers(0, len(entries))), ("x_credfresh_owner", -1))
    for key, _ in entries:
        if draw(st.integers(0, 4)) == 0:
            lines.extend(_filler_lines(draw, newline))
        delimiter = draw(st.sampled_from([" = ", "=", ": ", " : ", "   =  ", ":"]))
        if key == "x_credfresh_owner":
            value = owner or ""
        else:
            value = draw(st.text(alphabet=VALUE_CHARS, max_size=24)).strip()
        spelled = key.upper() if draw(st.booleans()) else key
        trailing = draw(st.sampled_from(["", "", " ", "\t"]))
        lines.append(f"{indent}{spelled}{delimiter}{value}{trailing}{draw(newline)}")
        if key == "x_credfresh_owner":
            continue
        continued = draw(st.integers(1, 2)) if draw(st.integers(0, 3)) == 0 else 0
        for _ in range(continued):
            if draw(st.booleans()):
                lines.append(draw(newline))  # a blank line inside a multi-line value
            word = draw(st.text(alphabet=WORD_CHARS, min_size=1, max_size=8))
            # botocore reads a value that starts on the next line as `sub = value` pairs.
            text = f"{word} = x" if not value else word + draw(st.text(VALUE_CHARS, max_size=8))
            lines.append(f"{indent}{draw(st.sampled_from(['  ', '    ', chr(9)]))}{text}")
            lines[-1] += draw(newline)
    return lines


@st.composite
def credentials_files(draw: st.DrawFn) -> FileModel:
    """Credentials-like files: our sections, unmarked ones, other owners', comments, spacing."""
    style = draw(st.sampled_from(["\n"] * 6 + ["\r\n", "mixed"]))
    newline = st.sampled_from(["\n", "\r\n"]) if style == "mixed" else st.just(style)
    names = draw(st.lists(st.one_of(NAMES, st.sampled_from(ODD_NAMES)), max_size=7, unique=True))
    model = FileModel()
    default_at = draw(st.integers(-1, len(names)))
    for index, name in enumerate([*names, None]):
        model.add(_filler_lines(draw, newline))
        if index == default_at:
            model.add(_section_lines(draw, "DEFAULT", None, newline))
            model.add(_filler_lines(draw, newline))
        if name is None:
            break
        kind = draw(st.sampled_from(["ours", "ours", "unmarked", "other"]))
        owner = {"ours": OWNER, "unmarked": None, "other": OTHER_OWNER}[kind]
        model.add(_section_lines(draw, name, owner, newline), name if kind == "ours" else None)
        {"ours": model.managed, "unmarked": model.unmarked, "other": model.other_owned}[
            kind
        ].append(name)
    if model.lines and model.lines[-1][0].strip() and draw(st.booleans()):
        last, tag = model.lines[-1]
        model.lines[-1] = (last.rstrip("\r\n"), tag)
    return model


def expected_merge(model: FileModel, rendered: dict[str, str], removals: set[str]) -> str:
    """The merge's contract restated over the generator's own tags (not the parser's)."""
    lines = model.lines
    regions: dict[str, list[int]] = {}
    for index, (_, tag) in enumerate(lines):
        if tag is not None:
            regions.setdefault(tag, []).append(index)
    drop: set[int] = set()
    for name in removals:
        span = regions[name]
        drop.update(span)
        first, after = span[0], span[-1] + 1
        if first > 0 and not lines[first - 1][0].strip():
            drop.add(first - 1)
        elif after < len(lines) and not lines[after][0].strip():
            drop.add(after)
    out: list[str] = []
    emitted: set[str] = set()
    for index, (text, tag) in enumerate(lines):
        if tag is not None and tag in rendered:
            if tag not in emitted:
                out.append(rendered[tag])
                emitted.add(tag)
            continue
        if index not in drop:
            out.append(text)
    new = [name for name in rendered if name not in regions]
    if new and out and not out[-1].endswith(("\n", "\r")):
        out.append("\n")
    for name in new:
        if out:
            out.append("\n")
        out.append(rendered[name])
    return "".join(out)


# Fragments for the parser-equivalence property: valid, odd and broken lines alike.
PARSER_FRAGMENTS = [
    "[a]",
    "[b]",
    "  [a]",
    "\t[c]",
    "[DEFAULT]",
    "[a] ; x",
    "[x]y]",
    "[]",
    "[",
    "k = v",
    "K=v",
    "k2: x",
    "  k3 = y",
    "\tk4 = z",
    "    continued",
    "  [b]",
    "x:y=z",
    "= nokey",
    ": nokey",
    "no delimiter",
    "# comment",
    "  ; comment",
    ";",
    "",
    "   ",
    "\t",
    "\u00a0k = nbsp",
    "é = ü",
    "k =",
    "  sub = 1",
    "\x0bk = v",
    "k = v\x0b",
    "\x1c",
]
