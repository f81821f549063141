"""Reading a config: bytes, YAML or TOML (alias bombs and deep nesting refused), the light view.

Only PyYAML at import: `credential-process`'s fast path reads with it and must not pay for
pathlib, dataclasses or tomllib."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Final

import yaml

from credfresh.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from credfresh.config.model import ConfigCore

MAX_CONFIG_BYTES: Final = 4 * 1024 * 1024
MAX_NODES: Final = 200_000
MAX_DEPTH: Final = 64

_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_bytes(path: str | Path) -> bytes:
    """Read a config file, refusing huge ones before they reach the parser."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError as exc:
        raise ConfigError([f"(file): not found: {path}"], path=str(path)) from exc
    except OSError as exc:
        raise ConfigError(
            [f"(file): cannot be read ({exc.strerror or type(exc).__name__})"], path=str(path)
        ) from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError([f"(file): larger than {MAX_CONFIG_BYTES} bytes"], path=str(path))
    return data


def parse_document(data: bytes, path: str | Path) -> dict[str, Any]:
    """Parse YAML (or TOML for a `.toml` suffix) into a mapping; errors never quote values."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [f"(document): not valid UTF-8 (byte {exc.start})"], path=str(path)
        ) from exc
    document = parse_text(text, str(path), toml=suffix(str(path)).lower() == ".toml")
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError(["(top level): expected a mapping of keys"], path=str(path))
    return document


def suffix(path: str) -> str:
    """`PurePath.suffix` without pathlib: a dot file (`.toml`) or a trailing dot has none."""
    name = os.path.basename(path.rstrip("/"))
    dot = name.rfind(".")
    return name[dot:] if 0 < dot < len(name) - 1 else ""


def parse_text(text: str, source: str, *, toml: bool) -> object:
    """One YAML or TOML document, its size checked; errors give the position, never a value."""
    document = _load_toml(text, source) if toml else _load_yaml(text, source)
    check_size(document, source)
    return document


def _load_toml(text: str, source: str) -> object:
    import tomllib

    try:
        return tomllib.loads(text)
    except RecursionError as exc:
        raise ConfigError(["(document): nests too deeply"], path=source) from exc
    except tomllib.TOMLDecodeError as exc:
        where = str(exc).rsplit("(", 1)[-1].rstrip(")") if "(" in str(exc) else ""
        raise ConfigError([f"(document): not valid TOML ({where})"], path=source) from exc


def _load_yaml(text: str, source: str) -> object:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        problem = exc.problem or "syntax error"
        raise ConfigError(
            [f"(document): not valid YAML ({problem} at {where})"], path=source
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(
            [f"(document): not valid YAML ({type(exc).__name__})"], path=source
        ) from exc
    except RecursionError as exc:
        raise ConfigError(
            [f"(document): nests deeper than {MAX_DEPTH} levels"], path=source
        ) from exc


def check_size(document: object, source: str) -> None:
    """Count nodes as the expanded tree would have them (aliases share objects: memoise by id)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[object, int, bool]] = [(document, 0, False)]
    while stack:
        node, depth, done = stack.pop()
        if depth > MAX_DEPTH:
            raise ConfigError([f"(document): nests deeper than {MAX_DEPTH} levels"], path=source)
        if not isinstance(node, dict | list):
            continue
        key = id(node)
        children: list[object] = (
            [*node.keys(), *node.values()] if isinstance(node, dict) else list(node)
        )
        if done:
            total = 1 + sum(sizes.get(id(c), 1) for c in children)
            if total > MAX_NODES:
                raise ConfigError(
                    [f"(document): expands to more than {MAX_NODES} values (YAML aliases?)"],
                    path=source,
                )
            sizes[key] = total
            open_nodes.discard(key)
            continue
        if key in open_nodes:
            raise ConfigError(["(document): refers to itself (recursive YAML alias)"], path=source)
        if key in sizes:
            continue
        sizes[key] = 1
        open_nodes.add(key)
        stack.append((node, depth, True))
        stack.extend((child, depth + 1, False) for child in children)


def read_light(config_path: Path, environ: Mapping[str, str], home: Path) -> ConfigCore:
    """Paths, roles and refresh points for `status` and `credential-process`: no pydantic."""
    from credfresh.config import model  # not at the top: the fast path must not load it

    document = parse_document(read_bytes(config_path), config_path)
    credentials_file, owner, state_file = model.resolve_paths(document, config_path, environ, home)
    defaults = document.get("defaults") or {}
    profiles_doc = document.get("profiles") or {}
    if not isinstance(defaults, dict) or not isinstance(profiles_doc, dict):
        raise ConfigError(["defaults, profiles: expected mappings"], path=str(config_path))
    profiles: dict[str, model.ProfileCore] = {}
    problems: list[str] = []
    for name, body in profiles_doc.items():
        merged = {**defaults, **(body if isinstance(body, dict) else {})}
        raw_before = merged.get("refresh_before")
        try:
            refresh_before = None if raw_before is None else model.parse_duration(raw_before)
        except ValueError as exc:
            problems.append(f"profiles.{name}.refresh_before: {exc}")
            continue
        anywhere = merged.get("roles_anywhere")
        role_arn = merged.get("role_arn") or (
            anywhere.get("role_arn") if isinstance(anywhere, dict) else None
        )
        profiles[str(name)] = model.ProfileCore(
            name=str(name), role_arn=str(role_arn or ""), refresh_before=refresh_before
        )
    if problems:
        raise ConfigError(problems, path=str(config_path))
    return model.ConfigCore(
        path=config_path,
        credentials_file=credentials_file,
        state_file=state_file,
        owner=owner,
        profiles=profiles,
    )
