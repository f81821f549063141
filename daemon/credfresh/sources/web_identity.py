"""AssumeRoleWithWebIdentity: the token file, re-read at every call, signs the request."""

from __future__ import annotations

from typing import TYPE_CHECKING

from credfresh.sources.classify import SourceError, classify

if TYPE_CHECKING:
    from pathlib import Path


def read_token(path: Path, profile: str) -> str:
    """Re-read at each call: the kubelet rotates projected service-account tokens."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(
            classify("web_identity_token_unreadable", f"cannot read {path}"), profile
        ) from exc
    if not token:
        raise SourceError(classify("web_identity_token_unreadable", f"{path} is empty"), profile)
    return token
