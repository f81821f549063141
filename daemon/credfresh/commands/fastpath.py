"""`credential-process` on the hot path: botocore spawns it at every refresh, often per call.

`try_credential_process` answers the plain case, a found and valid profile, importing only
the stdlib's lightest modules and PyYAML (no argparse, pathlib, dataclasses, configparser or
credfresh's writer). It answers only when it is certain: any odd argument, path or byte, and
every failure (missing, expired, unreadable, a bad config), returns None and the full CLI
runs the command again and gives exactly its own output and exit code. So a message or exit
code can only come from one place, and this module never prints to stderr.

The credentials-file reader below mirrors `credfile._parse` rule for rule;
tests/test_fastpath.py proves it reads what `credfile.view_of` reads.
"""

from __future__ import annotations

import json
import os
import re
import stat
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from credfresh.context import Context

DEFAULT_CONFIG: Final = "/etc/credfresh/config.yaml"
MAX_CONFIG_BYTES: Final = 4 * 1024 * 1024  # load.MAX_CONFIG_BYTES (a test checks)

OWNER_KEY: Final = "x_credfresh_owner"
ISSUED_KEY: Final = "x_credfresh_issued"
FORMAT_KEY: Final = "x_credfresh_format"
EXPIRES_KEY: Final = "x_security_token_expires"
FORMAT_VERSION: Final = "1"
DEFAULT_SECTION: Final = "DEFAULT"

# configparser.RawConfigParser.SECTCRE without importing configparser (a test compares them).
_SECTCRE: Final = re.compile(r"\[(?P<header>.+)\]")
_LINE_RE: Final = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")
_ODD_ASCII_BREAKS: Final = "\x0b\x0c\x1c\x1d\x1e"
_VARIABLE: Final = re.compile(r"\$(\w+|\{[^}]*\})", re.ASCII)  # posixpath.expandvars's
_OPTIONS: Final = {
    "-c": "config",
    "--config": "config",
    "--credentials-file": "credentials-file",
    "--log-format": "log-format",
    "--log-level": "log-level",
}
_LOG_CHOICES: Final = {
    "--log-format": ("json", "console"),
    "--log-level": ("debug", "info", "warning", "error"),
}


class Unparseable(Exception):
    """The text is not one a strict configparser reads: the full reader says where and why."""


def split_lines(text: str) -> list[str]:
    """Lines as `open()` (universal newlines) splits them, endings kept; as credfile does."""
    if text.isascii() and not any(char in text for char in _ODD_ASCII_BREAKS):
        return text.splitlines(keepends=True)
    return _LINE_RE.findall(text)


def section_options(lines: Sequence[str], wanted: str) -> dict[str, str] | None:
    """The raw options of section `wanted` (None if absent) of a whole strictly parsed file.

    Rule for rule `credfile._parse`: comments, continuation by deeper indentation, `[x]`
    headers taken verbatim, keys before the first `=` or `:` lower-cased, one DEFAULT dict
    shared by every `[DEFAULT]` block and never merged into a section. Whatever a strict
    parser rejects raises Unparseable (without the line: the full reader reports it).
    """
    names: set[str] = set()
    defaults: dict[str, str] = {}
    found: dict[str, str] | None = None
    options: dict[str, str] | None = None
    optname = ""
    indent_level = 0
    header_match = _SECTCRE.match
    for line in lines:
        value, indent_level = _content(line, optname, indent_level, options)
        if value is None:
            continue
        if value[0] == "[" and (header := header_match(value)) is not None:
            name = header.group("header")
            if name in names:
                raise Unparseable("a section that appeared before")
            if name == DEFAULT_SECTION:
                options = defaults
            else:
                names.add(name)
                options = {}
                if name == wanted:
                    found = options
            optname = ""
            continue
        if options is None:
            raise Unparseable("text before the first section header")
        optname = _add_option(options, value)
    return found


def _content(
    line: str, optname: str, indent_level: int, options: dict[str, str] | None
) -> tuple[str | None, int]:
    """The line's text and the indent level after it; None for a line fully handled here
    (blank, a comment, or a continuation appended to the option `optname`)."""
    if not line[0].isspace():
        value = line.rstrip()
        return (None, indent_level) if value[0] in "#;" else (value, 0)
    value = line.strip()
    if not value:
        if optname and options is not None:
            options[optname] += "\n"
        return None, indent_level
    if value[0] in "#;":
        return None, indent_level
    indent = len(line) - len(line.lstrip())
    if optname and indent > indent_level and options is not None:
        options[optname] += "\n" + value
        return None, indent_level
    return value, indent


def _add_option(options: dict[str, str], line: str) -> str:
    """Store `key = value` (or `key: value`) and return the key, lower-cased."""
    equals = line.find("=")
    colon = line.find(":", 0, equals) if equals >= 0 else line.find(":")
    split = colon if colon >= 0 else equals
    if split <= 0:
        raise Unparseable("no key")
    key = line[:split].rstrip().lower()
    if key in options:
        raise Unparseable("a key that appeared before in its section")
    options[key] = line[split + 1 :].strip()
    return key


def parse_time(text: str) -> datetime:
    """`credentials.parse_time`, repeated here so this module need not import dataclasses."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def format_time(moment: datetime) -> str:
    """`credentials.format_time`: ISO 8601 UTC, whole seconds, `Z`."""
    return moment.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def section_credentials(
    options: Mapping[str, str], owner: str | None
) -> tuple[str, str, str, datetime] | None:
    """Key id, secret, token and expiry of a section, or None unless it is a readable one of ours.

    `owner` None accepts any credfresh owner (`--credentials-file`: no config names one).
    The checks are `credfile.view_of` and `credfile._credentials_of`, in their order.
    """

    def value(key: str) -> str | None:
        raw = options.get(key)
        return None if raw is None else raw.rstrip()

    found_owner = value(OWNER_KEY)
    if found_owner is None or (owner is not None and found_owner != owner):
        return None
    if value(FORMAT_KEY) != FORMAT_VERSION:
        return None
    access_key = value("aws_access_key_id")
    secret = value("aws_secret_access_key")
    token = value("aws_session_token")
    if not (access_key and secret and token):
        return None
    try:
        expiration = parse_time(value(EXPIRES_KEY) or "")
        parse_time(value(ISSUED_KEY) or "")
    except ValueError:
        return None
    return access_key, secret, token, expiration


def process_json(access_key: str, secret: str, token: str, expiration: datetime) -> str:
    """The credential_process document, byte for byte what `credential-process` prints."""
    return json.dumps(
        {
            "Version": 1,
            "AccessKeyId": access_key,
            "SecretAccessKey": secret,
            "SessionToken": token,
            "Expiration": format_time(expiration),
        }
    )


def _read_plain_file(path: str, euid: int) -> bytes | None:
    """The bytes of a regular file at a path without symlinks, as `resolve_target` allows it.

    None (let the full reader decide) for any symlink, `.` or `..` on the way,
    a missing or non-regular file, and as root a file or directory not owned by root.
    """
    if not os.path.isabs(path):
        path = os.path.join(os.getcwd(), path)
    if os.path.realpath(path) != path:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        if euid == 0 and (st.st_uid != 0 or os.stat(os.path.dirname(path)).st_uid != 0):
            return None
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def read_process_json(
    credentials_file: str, profile: str, owner: str | None, now: datetime, euid: int
) -> str | None:
    """The JSON for `profile` from a credentials file, or None if not certain it is there."""
    data = _read_plain_file(credentials_file, euid)
    found = None if data is None else _credentials_in(data, profile, owner)
    return None if found is None or found[3] <= now else process_json(*found)


def _credentials_in(
    data: bytes, profile: str, owner: str | None
) -> tuple[str, str, str, datetime] | None:
    """`section_credentials` of the profile in a file's bytes; None if absent or in doubt."""
    try:
        options = section_options(split_lines(data.decode("utf-8")), profile)
    except (UnicodeDecodeError, Unparseable):
        return None
    return None if options is None else section_credentials(options, owner)


def _load_document(config: str) -> dict[str, object] | None:
    """The config as `config.parse_document` reads it, or None for any doubt or error."""
    data = _read_plain_config(config)
    if data is None:
        return None
    try:
        from credfresh.config.load import parse_text

        text = data.decode("utf-8")
        document = parse_text(text, config, toml=_suffix(config).lower() == ".toml")
    except Exception:  # any doubt: the full loader reports it
        return None
    if document is None:
        return {}
    return document if isinstance(document, dict) else None


def _suffix(path: str) -> str:
    """`PurePath.suffix`: a dot file (`.toml`) or a trailing dot has none."""
    name = os.path.basename(path.rstrip("/"))
    dot = name.rfind(".")
    return name[dot:] if 0 < dot < len(name) - 1 else ""


def _read_plain_config(config: str) -> bytes | None:
    """Config bytes; unlike the credentials file a config may sit behind symlinks."""
    try:
        with open(config, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError:
        return None
    return None if len(data) > MAX_CONFIG_BYTES else data


def _config_paths(config: str, environ: Mapping[str, str]) -> tuple[str, str] | None:
    """credentials_file and owner as `config.resolve_paths` resolves them, or None."""
    document = _load_document(config)
    if document is None:
        return None
    raw_cred = document.get("credentials_file")
    if isinstance(raw_cred, str) and raw_cred:
        expanded = expand_vars(expand_user(raw_cred, environ), environ)
        credentials_file = (
            expanded if os.path.isabs(expanded) else os.path.join(os.path.dirname(config), expanded)
        )
    else:
        credentials_file = default_credentials_file(environ)
    raw_owner = document.get("owner")
    if isinstance(raw_owner, str) and raw_owner:
        owner = raw_owner
    else:
        if config.startswith("//"):
            return None  # pathlib keeps a leading `//`; let config.default_owner decide
        owner = os.path.realpath(config)
    return credentials_file, owner


def default_credentials_file(environ: Mapping[str, str]) -> str:
    """`config.default_credentials_file`: AWS_SHARED_CREDENTIALS_FILE, else ~/.aws/credentials."""
    return expand_user(environ.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials", environ)


def expand_user(path: str, environ: Mapping[str, str]) -> str:
    """`os.path.expanduser` with `$HOME` read from `environ`, as `Context.home` reads it."""
    if path != "~" and not path.startswith("~/"):
        return os.path.expanduser(path)  # `~user` comes from the password database
    import pwd

    home = environ.get("HOME") or pwd.getpwuid(os.getuid()).pw_dir
    return home.rstrip("/") + path[1:] or "/"


def expand_vars(path: str, environ: Mapping[str, str]) -> str:
    """`os.path.expandvars` over `environ`: unknown `$NAME`s stay as they are."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1).removeprefix("{").removesuffix("}")
        return environ.get(name, match.group(0))

    return _VARIABLE.sub(value, path) if "$" in path else path


def parse_args(argv: Sequence[str]) -> dict[str, str] | None:
    """`credential-process PROFILE` with -c/--config, --credentials-file, --log-*, exactly.

    Only spellings whose meaning argparse gives the same way: anything else (abbreviations,
    `--help`, repeats, `--`, values starting with `-`) is None and argparse reads it.
    """
    if len(argv) < 2 or argv[0] != "credential-process":
        return None
    found: dict[str, str] = {}
    rest = list(argv[1:])
    while rest:
        arg = rest.pop(0)
        if not arg.startswith("-"):
            if "profile" in found:
                return None
            found["profile"] = arg
            continue
        name, equals, value = arg.partition("=")
        key = _OPTIONS.get(name)
        if key is None or (equals and not name.startswith("--")):
            return None
        if not equals:
            value = rest.pop(0) if rest else ""
        if key in found or not value or value.startswith("-"):
            return None
        if value not in _LOG_CHOICES.get(name, (value,)):
            return None
        found[key] = value
    return found if "profile" in found else None


def source_of(
    config: str | None, credentials_file: str | None, environ: Mapping[str, str]
) -> tuple[bool, str]:
    """Where `credential-process` reads: (True, config path) or (False, credentials file).

    `--credentials-file` (or CREDFRESH_CREDENTIALS_FILE) names the file and no config is
    read. Without it a config given by -c or CREDFRESH_CONFIG is read; with neither, the
    default config when it exists, else the file AWS_SHARED_CREDENTIALS_FILE names when that
    is set, else the default config (whose absence is then the error, as before).
    """
    named = credentials_file or environ.get("CREDFRESH_CREDENTIALS_FILE")
    if named:
        return False, expand_user(named, environ)
    chosen = config or environ.get("CREDFRESH_CONFIG")
    if chosen:
        return True, chosen
    shared = environ.get("AWS_SHARED_CREDENTIALS_FILE")
    if shared and not os.path.exists(DEFAULT_CONFIG):
        return False, expand_user(shared, environ)
    return True, DEFAULT_CONFIG


def try_credential_process(argv: Sequence[str], ctx: Context) -> int | None:
    """Print the JSON and return 0, or return None: the full CLI then runs the command."""
    args = parse_args(argv)
    if args is None:
        return None
    is_config, where = source_of(args.get("config"), args.get("credentials-file"), ctx.environ)
    owner: str | None = None
    if is_config:
        paths = _config_paths(where, ctx.environ)
        if paths is None:
            return None
        where, owner = paths
    answer = read_process_json(where, args["profile"], owner, ctx.clock.now(), ctx.euid)
    if answer is None:
        return None
    ctx.out.write(answer + "\n")
    return 0


def credential_process_from_file(credentials_file: str, profile: str, ctx: Context) -> int:
    """`credential-process` on a named credentials file, the full way: exact errors.

    credfile's own reader applies the ownership rules and reports an unsafe, unreadable or
    unparseable file (raising CredfileError); the profile itself may be any credfresh
    owner's. Missing and expired profiles raise the errors of the config-based command.
    """
    from pathlib import Path

    from credfresh.credfile import store
    from credfresh.credfile.handles import resolve_target
    from credfresh.errors import EXIT_OK, NoCredentials

    path = Path(credentials_file)
    store.read_managed(path, "", euid=ctx.euid)
    try:
        data = resolve_target(path, euid=ctx.euid).read_bytes()
    except OSError:
        data = b""  # replaced since the check: as if absent, the next call reads again
    found = _credentials_in(data, profile, None)
    if found is None:
        raise NoCredentials.missing(profile, path)
    if found[3] <= ctx.clock.now():
        raise NoCredentials.expired(profile, format_time(found[3]))
    ctx.out.write(process_json(*found) + "\n")
    return EXIT_OK
