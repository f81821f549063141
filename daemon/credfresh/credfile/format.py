"""The shared credentials file's text: parse, render and merge, pure (`store` does the disk).

credfresh's own sections are merged in and every other byte is kept.
"""

from __future__ import annotations

import configparser
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from credfresh.credentials import Credentials, account_id, format_time, parse_time
from credfresh.errors import CredfileError

FORMAT_VERSION = "1"
OWNER_KEY = "x_credfresh_owner"
ISSUED_KEY = "x_credfresh_issued"
FORMAT_KEY = "x_credfresh_format"
EXPIRES_KEY = "x_security_token_expires"
#: Marks a static set (no expiry): without it, a section missing its expiry is damaged, so a
#: temporary section stripped of that line is never taken for long-term keys.
STATIC_KEY = "x_credfresh_static"
STATIC_VALUE = "true"
PRINCIPAL_KEY = "x_principal_arn"
#: Read by current SDKs for account-based endpoints; from the assumed role's ARN.
ACCOUNT_KEY = "aws_account_id"

# Universal newlines (\r\n, \r, \n), as botocore's open() reads the file; each line keeps
# its ending so joining the list gives back the exact text.
_LINE_RE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")
_NEWLINE_RE = re.compile(r"\r\n|\r|\n")
_ODD_ASCII_BREAKS = "\x0b\x0c\x1c\x1d\x1e"
# configparser's own patterns, so our reading of the file cannot drift from botocore's.
_SECTCRE = configparser.RawConfigParser.SECTCRE
_DEFAULT_SECTION = configparser.DEFAULTSECT


@dataclass(slots=True)
class _Section:
    """One `[name]` block: its header line index, the index after its last value line.

    `options` maps lower-cased keys to their raw value lines joined with newlines (what
    configparser joins); all `[DEFAULT]` blocks share one dict, as in configparser.
    """

    name: str
    header: int
    end: int
    options: dict[str, str] = field(repr=False)  # values include secrets

    def value(self, key: str) -> str | None:
        raw = self.options.get(key)
        return None if raw is None else raw.rstrip()


@dataclass(frozen=True, slots=True)
class MergeResult:
    """The outcome of `merge`: the new text, profiles whose bytes changed or were removed,
    those refused (`section_conflict`) and every section (but DEFAULT) the text holds."""

    text: str
    changed: bool
    updated: tuple[str, ...]
    removed: tuple[str, ...]
    conflicts: Mapping[str, CredfileError]
    sections: frozenset[str]


@dataclass(frozen=True, slots=True)
class FileView:
    """This owner's view of the file: its readable profiles, the rest by name only.

    `foreign`: sections not this owner's; `damaged`: this owner's that do not read back (a
    key missing, a bad time, an unknown format), which a refresh rewrites.
    """

    managed: Mapping[str, Credentials]
    foreign: frozenset[str]
    damaged: frozenset[str]


def _unparseable(line: int, what: str) -> CredfileError:
    # Only the number: the line itself may hold a secret.
    return CredfileError(
        f"cannot parse line {line} ({what}); credfresh does not rewrite a file it cannot parse",
        code="unparseable_file",
        line=line,
    )


def with_path(path: Path, exc: CredfileError) -> CredfileError:
    return CredfileError(
        f"{path}: {exc.message}", code=exc.code, profile=exc.profile, line=exc.line
    )


def _split_lines(text: str) -> list[str]:
    # str.splitlines also breaks at \v, \f, \x1c-\x1e and some non-ASCII separators that
    # open() does not; it is 6x faster than the regex, so use it when none can occur.
    if text.isascii() and not any(char in text for char in _ODD_ASCII_BREAKS):
        return text.splitlines(keepends=True)
    return _LINE_RE.findall(text)


def _parse(lines: list[str]) -> list[_Section]:
    """Read sections exactly as RawConfigParser(strict=True) does, remembering line spans.

    Mirrored: whole-line `#`/`;` comments and blank lines neither count nor end a value; a
    line indented deeper than its key's continues the value, even one that looks like a
    header; `[x]` starts section `x`; a key is the text before the first `=` or `:`,
    lower-cased. What a strict parser rejects raises CredfileError `unparseable_file` at the
    first such line. One pass with a fast path: it runs on every write and `credential-process`.
    """
    sections: list[_Section] = []
    names: set[str] = set()
    defaults: dict[str, str] = {}
    current: _Section | None = None
    options: dict[str, str] = {}
    optname = ""
    indent_level = 0
    header_match = _SECTCRE.match
    for index, line in enumerate(lines):
        if line[0].isspace():
            value = line.strip()
            if not value or value[0] in "#;":
                if not value and optname:
                    options[optname] += "\n"
                continue
            indent = len(line) - len(line.lstrip())
            if optname and indent > indent_level:
                options[optname] += "\n" + value
                current.end = index + 1  # type: ignore[union-attr]  # optname implies a section
                continue
            indent_level = indent
        else:
            value = line.rstrip()
            if value[0] in "#;":
                continue
            indent_level = 0
        header = header_match(value) if value[0] == "[" else None
        if header is not None:
            current = _section(header.group("header"), index, names, defaults)
            sections.append(current)
            options, optname = current.options, ""
            continue
        if current is None:
            raise _unparseable(index + 1, "text before the first section header")
        optname = _option(value, index, options)
        current.end = index + 1
    return sections


def _section(name: str, index: int, names: set[str], defaults: dict[str, str]) -> _Section:
    """A header's new section; every `[DEFAULT]` shares one options dict, as in configparser."""
    if name in names:
        raise _unparseable(index + 1, "a section that appeared before")
    if name == _DEFAULT_SECTION:
        return _Section(name, index, index + 1, defaults)
    names.add(name)
    return _Section(name, index, index + 1, {})


def _option(value: str, index: int, options: dict[str, str]) -> str:
    """Store a `key = value` line (configparser's OPTCRE: the key ends at `=` or `:`)."""
    equals = value.find("=")
    colon = value.find(":", 0, equals) if equals >= 0 else value.find(":")
    split = colon if colon >= 0 else equals
    if split < 0:
        raise _unparseable(index + 1, "neither a section header, a key nor a comment")
    if split == 0:
        raise _unparseable(index + 1, "a key with an empty name")
    key = value[:split].rstrip().lower()
    if key in options:
        raise _unparseable(index + 1, "a key that appeared before in its section")
    options[key] = value[split + 1 :].strip()
    return key


def decode(data: bytes) -> str:
    """UTF-8 text of the file, or CredfileError `unparseable_file` at the first bad line."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start].decode("utf-8", errors="replace")
        raise _unparseable(len(_NEWLINE_RE.findall(before)) + 1, "not UTF-8 text") from None


def _check_profile(name: str) -> None:
    header = _SECTCRE.match(f"[{name}]".strip())
    if (
        not name
        or "\r" in name
        or "\n" in name
        or name == _DEFAULT_SECTION
        or header is None
        or header.group("header") != name
    ):
        raise ValueError(f"profile {name!r} cannot be a credentials-file section name")


def _check_owner(owner: str) -> None:
    if not owner or owner != owner.strip() or "\r" in owner or "\n" in owner:
        raise ValueError(f"owner {owner!r} must be one line without surrounding whitespace")


def render_section(profile: str, creds: Credentials, owner: str) -> str:
    """The exact text credfresh writes for one profile (pure; ends with a newline).

    Raises ValueError (naming the profile and key, never a value) for a profile name that
    would not read back as itself, or a value that is empty or spans lines. A static set has
    no expiry key, and no `aws_session_token` unless its source gave one (long-term keys
    do not); a set with an expiry always has a token.
    """
    _check_profile(profile)
    _check_owner(owner)
    fields = [
        ("aws_access_key_id", creds.access_key_id),
        ("aws_secret_access_key", creds.secret_access_key),
    ]
    if creds.session_token or creds.expiration is not None:
        fields.append(("aws_session_token", creds.session_token))
    account = account_id(creds.principal_arn)
    if account is not None:
        fields.append((ACCOUNT_KEY, account))
    if creds.expiration is not None:
        fields.append((EXPIRES_KEY, format_time(creds.expiration)))
    if creds.principal_arn:
        fields.append((PRINCIPAL_KEY, creds.principal_arn))
    if creds.expiration is None:
        fields.append((STATIC_KEY, STATIC_VALUE))
    fields += [(OWNER_KEY, owner), (ISSUED_KEY, format_time(creds.issued))]
    for key, value in fields:
        if not value or value != value.strip() or "\r" in value or "\n" in value:
            raise ValueError(
                f"profile {profile!r}: {key} must be one non-empty line without surrounding"
                " whitespace"
            )
    fields.append((FORMAT_KEY, FORMAT_VERSION))
    return f"[{profile}]\n" + "".join(f"{key} = {value}\n" for key, value in fields)


def _conflict(profile: str, owner: str) -> CredfileError:
    return CredfileError(
        f"profile {profile!r}: the credentials file already has a section [{profile}] that"
        f" credfresh (owner {owner!r}) does not manage; set adopt: true on the profile to let"
        " credfresh take it over",
        code="section_conflict",
        profile=profile,
    )


def _check_next_header(lines: list[str], section: _Section) -> None:
    """Refuse to change a section followed by an indented header: after our rewrite (keys at
    column 0) or a removal it would turn into a value of the key before it."""
    for index in range(section.end, len(lines)):
        stripped = lines[index].strip()
        if not stripped or stripped[0] in "#;":
            continue
        if lines[index][0].isspace():
            raise CredfileError(
                f"line {index + 1}: this section header is indented; credfresh cannot change"
                " the section before it without turning the header into a value",
                code="write_failed",
                line=index + 1,
            )
        return


def merge(
    text: str,
    owner: str,
    updates: Mapping[str, Credentials],
    removals: Collection[str] = (),
    adopt: Collection[str] = (),
) -> MergeResult:
    """Merge this owner's sections into `text` (pure: no I/O), keeping every other byte.

    - An update of a section this owner manages (`x_credfresh_owner` equals `owner`)
      replaces it whole, header through its last value line, in place.
    - A same-named section not this owner's is a `section_conflict` for that profile (the
      others still merge) unless the profile is in `adopt`, which replaces it in place.
    - New sections are appended after one blank line (none for an empty file); a text
      without a final newline first gets one, the only change to existing bytes.
    - A removal takes the section's lines and one blank line next to it (before its header,
      else after it), so appending then removing gives back the original text. Sections
      not this owner's are never removed.

    Raises CredfileError `unparseable_file` for text a strict configparser rejects,
    `write_failed` when a change would alter another section, and ValueError for bad
    arguments (a profile both updated and removed, an unusable name or value).
    """
    _check_owner(owner)
    clash = set(updates) & set(removals)
    if clash:
        raise ValueError(f"profiles both updated and removed: {sorted(clash)}")
    rendered = {name: render_section(name, creds, owner) for name, creds in updates.items()}
    for name in removals:
        _check_profile(name)
    lines = _split_lines(text)
    plan = _Plan(lines, {s.name: s for s in _parse(lines) if s.name != _DEFAULT_SECTION})
    for name, section_text in rendered.items():
        plan.update(name, section_text, owner, adopt_it=name in adopt)
    for name in removals:
        plan.remove(name, owner)
    new_text = plan.render() if plan.replace or plan.drop or plan.appended else text
    return MergeResult(
        text=new_text,
        changed=new_text != text,
        updated=tuple(plan.updated),
        removed=tuple(plan.removed),
        conflicts=plan.conflicts,
        sections=frozenset(plan.names),
    )


class _Plan:
    """What `merge` changes: sections replaced (by header line), lines dropped, appended."""

    def __init__(self, lines: list[str], sections: dict[str, _Section]) -> None:
        self.lines = lines
        self.sections = sections
        self.names = set(sections)
        self.replace: dict[int, tuple[int, str]] = {}
        self.drop: set[int] = set()
        self.appended: list[str] = []
        self.updated: list[str] = []
        self.removed: list[str] = []
        self.conflicts: dict[str, CredfileError] = {}

    def update(self, name: str, section_text: str, owner: str, *, adopt_it: bool) -> None:
        section = self.sections.get(name)
        if section is None:
            self.appended.append(section_text)
            self.updated.append(name)
            self.names.add(name)
        elif section.value(OWNER_KEY) != owner and not adopt_it:
            self.conflicts[name] = _conflict(name, owner)
        elif "".join(self.lines[section.header : section.end]) != section_text:
            _check_next_header(self.lines, section)
            self.replace[section.header] = (section.end, section_text)
            self.updated.append(name)

    def remove(self, name: str, owner: str) -> None:
        section, lines = self.sections.get(name), self.lines
        if section is None or section.value(OWNER_KEY) != owner:
            return
        _check_next_header(lines, section)
        self.drop.update(range(section.header, section.end))
        if section.header > 0 and not lines[section.header - 1].strip():
            self.drop.add(section.header - 1)
        elif section.end < len(lines) and not lines[section.end].strip():
            self.drop.add(section.end)
        self.removed.append(name)
        self.names.discard(name)

    def render(self) -> str:
        out: list[str] = []
        index = 0
        while index < len(self.lines):
            if index in self.replace:
                index, section_text = self.replace[index]
                out.append(section_text)
                continue
            if index not in self.drop:
                out.append(self.lines[index])
            index += 1
        if self.appended and out and not out[-1].endswith(("\n", "\r")):
            out.append("\n")
        for section_text in self.appended:
            if out:
                out.append("\n")
            out.append(section_text)
        return "".join(out)


def expiry_rule(token: str | None, expires: str | None, static: str | None) -> bool:
    """A token and an expiry, or the static marker, no expiry and a token only if the source
    gave one: a temporary section stripped of its expiry is never taken for long-term keys."""
    if static is not None:
        return static == STATIC_VALUE and expires is None
    return expires is not None and token is not None


def _credentials_of(section: _Section) -> Credentials | None:
    if section.value(FORMAT_KEY) != FORMAT_VERSION:
        return None
    access_key = section.value("aws_access_key_id")
    secret = section.value("aws_secret_access_key")
    token = section.value("aws_session_token")
    expires = section.value(EXPIRES_KEY)
    if not (access_key and secret) or token == "":
        return None
    if not expiry_rule(token, expires, section.value(STATIC_KEY)):
        return None
    try:
        expiration = None if expires is None else parse_time(expires)
        issued = parse_time(section.value(ISSUED_KEY) or "")
    except ValueError:
        return None
    return Credentials(
        access_key_id=access_key,
        secret_access_key=secret,
        session_token=token or "",
        expiration=expiration,
        issued=issued,
        principal_arn=section.value(PRINCIPAL_KEY) or "",
    )


def view_of(text: str, owner: str, profiles: Collection[str] | None = None) -> FileView:
    """The FileView of a text (pure); raises CredfileError `unparseable_file`.

    With `profiles`, only those are read into `managed`/`damaged` (`foreign` is complete):
    `credential-process` needs one profile and should not decode a thousand.
    """
    managed: dict[str, Credentials] = {}
    foreign: set[str] = set()
    damaged: set[str] = set()
    wanted = None if profiles is None else set(profiles)
    for section in _parse(_split_lines(text)):
        if section.name == _DEFAULT_SECTION:
            continue
        if section.value(OWNER_KEY) != owner:
            foreign.add(section.name)
            continue
        if wanted is not None and section.name not in wanted:
            continue
        creds = _credentials_of(section)
        if creds is None:
            damaged.add(section.name)
        else:
            managed[section.name] = creds
    return FileView(managed, frozenset(foreign), frozenset(damaged))
