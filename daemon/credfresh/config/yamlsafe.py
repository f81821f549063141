"""YAML loading that refuses alias bombs and runaway nesting before anything walks the tree."""

from __future__ import annotations

from typing import Final

import yaml

from credfresh.errors import ConfigError

MAX_NODES: Final = 200_000
MAX_DEPTH: Final = 64

_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load(text: str, source: str) -> object:
    """Safe-load one YAML document; errors give the position, never the offending value."""
    try:
        document = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
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
    check_size(document, source)
    return document


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
