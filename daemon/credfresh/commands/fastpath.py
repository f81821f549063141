"""`credential-process` on the hot path: botocore spawns it at every refresh, often per call.

`try_credential_process` answers only when certain (a found, valid profile), without argparse,
pathlib, dataclasses, configparser or credfile. Anything else returns None and the full CLI
runs the command, so every message and exit code comes from one place (never from here).
The credentials-file reader mirrors `credfile._parse` rule for rule (tests/test_fastpath.py).
"""

from __future__ import annotations

import json
import os
import re
import stat
from typing import TYPE_CHECKING, Final

from credfresh.context import expand_user, expand_vars
from credfresh.isotime import format_time, parse_time

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from datetime import datetime

    from credfresh.context import Context

DEFAULT_CONFIG: Final = "/etc/credfresh/config.yaml"
#: A readable section: key id, secret, token, expiry, account id (None when unknown).
Found = tuple[str, str, str, "datetime | None", str | None]  # token "", expiry None: static

OWNER_KEY: Final = "x_credfresh_owner"
ISSUED_KEY: Final = "x_credfresh_issued"
FORMAT_KEY: Final = "x_credfresh_format"
EXPIRES_KEY: Final = "x_security_token_expires"
STATIC_KEY: Final = "x_credfresh_static"
STATIC_VALUE: Final = "true"
PRINCIPAL_KEY: Final = "x_principal_arn"
FORMAT_VERSION: Final = "1"
DEFAULT_SECTION: Final = "DEFAULT"

# configparser.RawConfigParser.SECTCRE without importing configparser (a test compares them).
_ACCOUNT: Final = re.compile(r"\d{12}")
_SECTCRE: Final = re.compile(r"\[(?P<header>.+)\]")
_LINE_RE: Final = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")
_ODD_ASCII_BREAKS: Final = "\x0b\x0c\x1c\x1d\x1e"
_OPTIONS: Final = {
    "-c": "config",
    "--config": "config",
    "--credentials-file": "credentials-file",
    "--log-format": "log-format",
    "--log-level": "log-level",
}
_RUN_OPTIONS: Final = {name: key for name, key in _OPTIONS.items() if key != "credentials-file"}
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

    One DEFAULT dict for every `[DEFAULT]` block, never merged into a section; whatever a
    strict parser rejects raises Unparseable (the full reader reports the line).
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


def _expiry_rule(token: str | None, expires: str | None, static: str | None) -> bool:
    """`credfile.format.expiry_rule`, mirrored (a test compares them)."""
    if static is not None:
        return static == STATIC_VALUE and expires is None
    return expires is not None and token is not None


def section_credentials(options: Mapping[str, str], owner: str | None) -> Found | None:
    """Key id, secret, token, expiry and account of a readable section of ours (`owner`
    None: any credfresh owner's), else None; `credfile.view_of`'s checks in their order."""

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
    expires = value(EXPIRES_KEY)
    if not (access_key and secret) or token == "":
        return None
    if not _expiry_rule(token, expires, value(STATIC_KEY)):
        return None
    try:
        expiration = None if expires is None else parse_time(expires)
        parse_time(value(ISSUED_KEY) or "")
    except ValueError:
        return None
    account = _account_of(value(PRINCIPAL_KEY) or "")
    return access_key, secret, token or "", expiration, account


def _account_of(principal_arn: str) -> str | None:
    """`credentials.account_id`, mirrored: that module would import dataclasses."""
    parts = principal_arn.split(":", 5)
    return parts[4] if len(parts) == 6 and _ACCOUNT.fullmatch(parts[4]) else None


def process_json(
    access_key: str,
    secret: str,
    token: str,
    expiration: datetime | None,
    account: str | None = None,
) -> str:
    """The credential_process document, byte for byte what `credential-process` prints;
    `AccountId` when the assumed role's ARN names the account (current SDKs read it). A
    static set has no `SessionToken` and no `Expiration` (both optional in the protocol;
    without an expiry the SDK never calls again)."""
    document: dict[str, object] = {
        "Version": 1,
        "AccessKeyId": access_key,
        "SecretAccessKey": secret,
    }
    if token:
        document["SessionToken"] = token
    if expiration is not None:
        document["Expiration"] = format_time(expiration)
    if account is not None:
        document["AccountId"] = account
    return json.dumps(document)


def _read_plain_file(path: str, euid: int) -> bytes | None:
    """The bytes of a regular file reached without symlinks, `.` or `..` (and as root, owned
    with its directory by root), as `resolve_target` allows it; else None."""
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
    if found is None or (found[3] is not None and found[3] <= now):
        return None
    return process_json(*found)


def _credentials_in(data: bytes, profile: str, owner: str | None) -> Found | None:
    """`section_credentials` of the profile in a file's bytes; None if absent or in doubt."""
    try:
        options = section_options(split_lines(data.decode("utf-8")), profile)
    except (UnicodeDecodeError, Unparseable):
        return None
    return None if options is None else section_credentials(options, owner)


def _load_document(config: str) -> dict[str, object] | None:
    """The config as `load.parse_document` reads it, or None for any doubt or error."""
    from credfresh.config import load

    try:
        return load.parse_document(load.read_bytes(config), config)
    except Exception:  # any doubt: the full loader reports it
        return None


def _config_paths(config: str, environ: Mapping[str, str]) -> tuple[str, str] | None:
    """credentials_file and owner as `model.resolve_paths` resolves them, or None."""
    document = _load_document(config)
    if document is None:
        return None
    raw_cred = document.get("credentials_file")
    if isinstance(raw_cred, str) and raw_cred:
        expanded = expand_vars(expand_user(raw_cred, environ.get("HOME")), environ)
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
            return None  # pathlib keeps a leading `//`; let model.resolve_paths decide
        owner = os.path.realpath(config)
    return credentials_file, owner


def default_credentials_file(environ: Mapping[str, str]) -> str:
    """`model.default_credentials_file`: AWS_SHARED_CREDENTIALS_FILE, else ~/.aws/credentials."""
    value = environ.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials"
    return expand_user(value, environ.get("HOME"))


def parse_args(argv: Sequence[str]) -> dict[str, str] | None:
    """`credential-process PROFILE` with -c/--config, --credentials-file, --log-*: only
    spellings argparse reads the same way (no abbreviations, `--help`, repeats, `--`)."""
    if argv[:1] != ["credential-process"]:
        return None
    found = _options(argv[1:], _OPTIONS, positional="profile")
    return found if found is not None and "profile" in found else None


def parse_run_args(argv: Sequence[str]) -> dict[str, str] | None:
    """`run` with -c/--config and --log-*, by `parse_args`'s rules: the daemon then never
    loads argparse, which it would hold for weeks (0.25 MB)."""
    if argv[:1] != ["run"]:
        return None
    return _options(argv[1:], _RUN_OPTIONS, positional=None)


def _options(
    args: Sequence[str], options: Mapping[str, str], positional: str | None
) -> dict[str, str] | None:
    found: dict[str, str] = {}
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if not arg.startswith("-"):
            if positional is None or positional in found:
                return None
            found[positional] = arg
            continue
        name, equals, value = arg.partition("=")
        key = options.get(name)
        if key is None or (equals and not name.startswith("--")):
            return None
        if not equals:
            value = rest.pop(0) if rest else ""
        if key in found or not value or value.startswith("-"):
            return None
        if value not in _LOG_CHOICES.get(name, (value,)):
            return None
        found[key] = value
    return found


def source_of(
    config: str | None, credentials_file: str | None, environ: Mapping[str, str]
) -> tuple[bool, str]:
    """(True, config path) or (False, credentials file): `--credentials-file` (or
    CREDFRESH_CREDENTIALS_FILE), else -c or CREDFRESH_CONFIG, else the default config when it
    exists, else AWS_SHARED_CREDENTIALS_FILE when set, else the default config (then missing).
    """
    named = credentials_file or environ.get("CREDFRESH_CREDENTIALS_FILE")
    if named:
        return False, expand_user(named, environ.get("HOME"))
    chosen = config or environ.get("CREDFRESH_CONFIG")
    if chosen:
        return True, chosen
    shared = environ.get("AWS_SHARED_CREDENTIALS_FILE")
    if shared and not os.path.exists(DEFAULT_CONFIG):
        return False, expand_user(shared, environ.get("HOME"))
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
    """`credential-process` on a named credentials file, the full way: credfile's reader
    raises its exact errors; the profile may be any credfresh owner's."""
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
    if found[3] is not None and found[3] <= ctx.clock.now():
        raise NoCredentials.expired(profile, format_time(found[3]))
    ctx.out.write(process_json(*found) + "\n")
    return EXIT_OK
