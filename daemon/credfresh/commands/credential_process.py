"""`credfresh credential-process` the full way, when `fastpath` could not answer: every
failure gets its exact message (raised for `cli`). No boto3, no pydantic."""

from __future__ import annotations

from typing import TYPE_CHECKING

from credfresh.commands.fastpath import process_json
from credfresh.config.load import parse_document, read_bytes
from credfresh.config.model import resolve_paths
from credfresh.credentials import account_id, format_time
from credfresh.credfile import store as credfile
from credfresh.errors import EXIT_OK, NoCredentials

if TYPE_CHECKING:
    from collections.abc import Collection
    from pathlib import Path

    from credfresh.context import Clock, Context
    from credfresh.credentials import Credentials


def valid_credentials(
    path: Path, owner: str, profile: str, clock: Clock, *, only: Collection[str] | None = None
) -> Credentials:
    """The profile's unexpired credentials on disk; NoCredentials says why there are none."""
    creds = credfile.read_managed(path, owner, only).managed.get(profile)
    if creds is None:
        raise NoCredentials.missing(profile, path)
    if creds.expiration is not None and creds.expiration <= clock.now():
        raise NoCredentials.expired(profile, format_time(creds.expiration))
    return creds


def credential_process(config_path: Path, profile: str, ctx: Context) -> int:
    """Print one profile as credential_process JSON, straight from the credentials file."""
    document = parse_document(read_bytes(config_path), config_path)
    credentials_file, owner, _ = resolve_paths(document, config_path, ctx.environ, ctx.home)
    creds = valid_credentials(credentials_file, owner, profile, ctx.clock)
    keys = (creds.access_key_id, creds.secret_access_key, creds.session_token)
    account = account_id(creds.principal_arn)
    ctx.out.write(process_json(*keys, creds.expiration, account) + "\n")
    return EXIT_OK
