"""The rules of each credential source (role, Roles Anywhere, copied profile): which keys
a profile of each kind takes, from `defaults` and on itself, and the Roles Anywhere checks.
Split from `validate.py`, which applies them; `where(key)` names a key where it was written.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Final, Protocol

from credfresh.config import model as cfg
from credfresh.config.schema import ProfileModel

_Expand = Callable[[str], Path]


class _Where(Protocol):
    """Names a key where the user wrote it (`validate._Where`)."""

    def __call__(self, key: str) -> str: ...


NOT_WITH_WEB_IDENTITY: Final = (
    "source_profile",
    "external_id",
    "tags",
    "transitive_tag_keys",
    "source_identity",
)

#: The keys only AssumeRole takes: a Roles Anywhere or copied profile ignores them from
#: `defaults`, and refuses them set on the profile itself.
ASSUME_ROLE_ONLY: Final = (
    "external_id",
    "policy",
    "policy_file",
    "policy_arns",
    "tags",
    "transitive_tag_keys",
    "source_identity",
    "role_session_name",
)
#: Keys a profile of each kind takes from `defaults` only if it could use them.
NOT_INHERITED: Final = {
    "roles_anywhere": (*ASSUME_ROLE_ONLY, "role_arn", "source_profile", "web_identity_token_file"),
    "web_identity": (*NOT_WITH_WEB_IDENTITY, "roles_anywhere"),
    "assume_role": ("roles_anywhere",),
    "copy": (*ASSUME_ROLE_ONLY, "duration_seconds", "roles_anywhere"),
}
_EXCLUDE_ROLES_ANYWHERE: Final = ("role_arn", "source_profile", "web_identity_token_file")


def kind_of_keys(own: set[str], inherited: set[str]) -> str:
    """Which source a profile's keys choose; the profile's own keys win over `defaults`."""
    every = own | inherited
    if "roles_anywhere" in own or ("roles_anywhere" in every and "role_arn" not in own):
        return "roles_anywhere"
    if "web_identity_token_file" in every:
        return "web_identity"
    if "role_arn" in every:
        return "assume_role"
    return "copy" if "source_profile" in every else "assume_role"


def kind_of(model: ProfileModel) -> str | None:
    """The source of a merged profile model; None when it names none."""
    if model.roles_anywhere is not None:
        return "roles_anywhere"
    if model.role_arn:
        return "web_identity" if model.web_identity_token_file else "assume_role"
    return "copy" if model.source_profile else None


def kind_problems(model: ProfileModel, prefix: str, explicit: set[str]) -> list[str]:
    """Keys a Roles Anywhere or copied profile cannot take, set on the profile itself."""
    kind = kind_of(model)
    if kind == "roles_anywhere":
        problems = [
            f"{prefix}: {key} and roles_anywhere exclude each other"
            for key in _EXCLUDE_ROLES_ANYWHERE
            if key in explicit
        ]
        return problems + [
            f"{prefix}.{key}: not allowed with roles_anywhere (CreateSession takes no such "
            "parameter)"
            for key in ASSUME_ROLE_ONLY
            if key in explicit
        ]
    if kind == "copy":
        return [
            f"{prefix}.{key}: not allowed on a copied profile (source_profile without role_arn "
            "copies that AWS profile's credentials as they are)"
            for key in (*ASSUME_ROLE_ONLY, "duration_seconds")
            if key in explicit
        ]
    return []


def roles_anywhere_problems(
    model: ProfileModel, where: _Where, paths: _Expand, now: datetime | None
) -> list[str]:
    """ARNs of one partition, a region of it, and files that hold a matching, valid pair."""
    from credfresh.sources.certificates import MaterialError, load_material

    spec = model.roles_anywhere
    if spec is None:
        return []
    key = f"{where('roles_anywhere')}"
    problems = []
    partitions = {arn.split(":", 2)[1] for arn in (spec.trust_anchor_arn, spec.profile_arn)}
    role_partition = spec.role_arn.split(":", 2)[1]
    if partitions != {role_partition}:
        problems.append(f"{key}: expected the trust anchor, profile and role in one partition")
    if model.region and region_partition(model.region) != role_partition:
        problems.append(
            f"{where('region')}: expected a region of the role ARN's partition {role_partition}"
        )
    chain = paths(spec.certificate_chain) if spec.certificate_chain else None
    try:
        material = load_material(paths(spec.certificate), paths(spec.private_key), chain)
    except MaterialError as exc:
        return [*problems, f"{key}: {exc}"]
    if now is not None and material.not_after <= now:
        problems.append(
            f"{key}.certificate: the certificate expired at "
            f"{material.not_after.strftime('%Y-%m-%dT%H:%M:%SZ')}"
        )
    return problems


def roles_anywhere_spec(model: ProfileModel, paths: _Expand) -> cfg.RolesAnywhereSpec | None:
    spec = model.roles_anywhere
    if spec is None:
        return None
    return cfg.RolesAnywhereSpec(
        certificate=paths(spec.certificate),
        private_key=paths(spec.private_key),
        certificate_chain=paths(spec.certificate_chain) if spec.certificate_chain else None,
        trust_anchor_arn=spec.trust_anchor_arn,
        profile_arn=spec.profile_arn,
        role_arn=spec.role_arn,
        session_name=spec.session_name,
        endpoint_url=spec.endpoint_url,
    )


def region_partition(region: str) -> str:
    if region.startswith(("cn-", "us-gov-")):
        return "aws-cn" if region.startswith("cn-") else "aws-us-gov"
    return "aws"
