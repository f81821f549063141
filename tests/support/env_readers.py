"""The two env-file readers credfresh's env files must satisfy, as their documentation says:
systemd.exec(5) (`KEY=VALUE`, `#` and `;` comments, whitespace stripped, quotes removed with
backslash escapes) and docker's `--env-file` (the text after the first `=`, literally)."""

from __future__ import annotations


def systemd_reader(text: str) -> dict[str, str]:
    out = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            quote, value = value[0], value[1:-1]
            if quote == '"':
                value = value.encode().decode("unicode_escape")
        else:
            value = value.replace("\\", "")
        out[key.strip()] = value
    return out


def docker_reader(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, _, value = line.partition("=")
        out[key.lstrip()] = value
    return out
