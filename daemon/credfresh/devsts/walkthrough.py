"""The AssumeRole walkthrough's IAM setup: a user, its key, and the roles that trust it."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any, Final

# Placeholder admin credentials for setup against moto with auth enforcement off.
SETUP_ACCESS_KEY_ID: Final = "devsts-setup-key"  # moto without auth takes any key id
SETUP_SECRET: Final = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"  # noqa: S105 - AWS docs' example
OIDC_URL: Final = "https://oidc.example.com"
OIDC_AUDIENCE: Final = "sts.amazonaws.com"
_MAX_SETUPS: Final = 100
_THUMBPRINT: Final = "9e99a48a9960b14926bb7f3b02e22da2b0ab7280"


@dataclasses.dataclass(frozen=True, slots=True)
class Walkthrough:
    """What `setup_walkthrough` created; the secret is the IAM user's long-term key.

    - `role_arn` trusts the user (step 3 of the walkthrough);
    - `chained_role_arn` trusts `role_arn`, so the user assuming it directly is the
      walkthrough's classic AccessDenied, and it must be reached by role chaining;
    - `web_identity_role_arn` trusts the OIDC provider (unsigned
      AssumeRoleWithWebIdentity, as in EKS IRSA).

    moto compares trust principals by exact string, so the chained role also names the
    session `arn:aws:sts::ACCOUNT:assumed-role/ROLE/<chain_session_name>`; with moto's auth
    enforcement on, chaining works for that session name. AWS accepts both principals.
    """

    account_id: str
    user_name: str
    user_arn: str
    access_key_id: str
    secret_access_key: str = dataclasses.field(repr=False)
    role_arn: str = ""
    chained_role_arn: str = ""
    chain_session_name: str = ""
    web_identity_role_arn: str = ""
    oidc_provider_arn: str = ""
    oidc_audience: str = OIDC_AUDIENCE
    session_policy: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Walkthrough:
        return cls(**{field.name: data[field.name] for field in dataclasses.fields(cls)})


def _trust(principal: Mapping[str, Any], action: str, **extra: Any) -> str:
    statement = {"Effect": "Allow", "Principal": dict(principal), "Action": action, **extra}
    return json.dumps({"Version": "2012-10-17", "Statement": [statement]})


def _allow(action: str, resource: str | list[str]) -> str:
    statement = {"Effect": "Allow", "Action": action, "Resource": resource}
    return json.dumps({"Version": "2012-10-17", "Statement": [statement]})


def session_policy_for(user_id: str) -> str:
    """The walkthrough's session policy: list and use only the user's own prefix of `test`."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": "s3:ListBucket",
                    "Resource": "arn:aws:s3:::test",
                    "Condition": {"StringLike": {"s3:prefix": [f"{user_id}/*"]}},
                },
                {"Effect": "Allow", "Action": "s3:*", "Resource": f"arn:aws:s3:::test/{user_id}/*"},
            ],
        },
        separators=(",", ":"),
    )


def _create_user(iam: Any, prefix: str) -> tuple[str, dict[str, Any]]:
    """Create `<prefix>-user`, or `<prefix>-2-user`, ... if an earlier setup took the name.

    moto's state is shared by the whole process: a test session's long-lived dev STS may
    already hold the walkthrough, and its objects must survive another instance's setup.
    """
    from botocore.exceptions import ClientError

    for attempt in range(1, _MAX_SETUPS + 1):
        candidate = prefix if attempt == 1 else f"{prefix}-{attempt}"
        try:
            user: dict[str, Any] = iam.create_user(UserName=f"{candidate}-user")["User"]
        except ClientError as error:
            if error.response["Error"]["Code"] != "EntityAlreadyExists":
                raise
            continue
        return candidate, user
    raise RuntimeError(f"{_MAX_SETUPS} walkthroughs with prefix {prefix!r} exist already")


def _oidc_provider(iam: Any, account_id: str) -> str:
    """Register the OIDC provider, or reuse it: there is one per URL and account."""
    from botocore.exceptions import ClientError

    try:
        arn: str = iam.create_open_id_connect_provider(
            Url=OIDC_URL, ClientIDList=[OIDC_AUDIENCE], ThumbprintList=[_THUMBPRINT]
        )["OpenIDConnectProviderArn"]
    except ClientError as error:
        if error.response["Error"]["Code"] != "EntityAlreadyExists":
            raise
        return f"arn:aws:iam::{account_id}:oidc-provider/{OIDC_URL.removeprefix('https://')}"
    return arn


def _roles(  # noqa: PLR0913  the names one walkthrough shares
    iam: Any,
    *,
    prefix: str,
    account_id: str,
    user_arn: str,
    max_session_duration: int,
    chain_session_name: str,
) -> tuple[str, str]:
    """The role the user assumes, and the role that one chains into: (role, chained)."""
    role_name = f"{prefix}-role"
    role_arn: str = iam.create_role(
        RoleName=role_name,
        AssumeRolePolicyDocument=_trust({"AWS": user_arn}, "sts:AssumeRole"),
        MaxSessionDuration=max_session_duration,
        Description="credfresh walkthrough: trusts the IAM user",
    )["Role"]["Arn"]
    session_arn = f"arn:aws:sts::{account_id}:assumed-role/{role_name}/{chain_session_name}"
    chained_arn: str = iam.create_role(
        RoleName=f"{prefix}-chained-role",
        AssumeRolePolicyDocument=_trust({"AWS": [role_arn, session_arn]}, "sts:AssumeRole"),
        MaxSessionDuration=3600,
        Description="credfresh walkthrough: trusts the first role (role chaining)",
    )["Role"]["Arn"]
    iam.put_role_policy(
        RoleName=role_name,
        PolicyName="allow-chain",
        PolicyDocument=_allow("sts:AssumeRole", chained_arn),
    )
    return role_arn, chained_arn


def _web_role(iam: Any, prefix: str, provider_arn: str, max_session_duration: int) -> str:
    """The role a web identity token from the OIDC provider assumes."""
    host = OIDC_URL.removeprefix("https://")
    arn: str = iam.create_role(
        RoleName=f"{prefix}-web-role",
        AssumeRolePolicyDocument=_trust(
            {"Federated": provider_arn},
            "sts:AssumeRoleWithWebIdentity",
            Condition={"StringEquals": {f"{host}:aud": OIDC_AUDIENCE}},
        ),
        MaxSessionDuration=max_session_duration,
        Description="credfresh walkthrough: trusts the OIDC provider",
    )["Role"]["Arn"]
    return arn


def setup_walkthrough(
    endpoint_url: str,
    *,
    prefix: str = "credfresh-demo",
    region: str = "us-east-1",
    max_session_duration: int = 3600,
    chain_session_name: str = "credfresh-chain",
) -> Walkthrough:
    """Create the walkthrough's IAM objects through the IAM API at `endpoint_url`.

    Names start with `prefix` (suffixed `-2`, `-3`, ... when taken); read them from the
    result. Run it with moto's auth enforcement off: the placeholder admin key is no user.
    """
    import boto3
    from botocore.config import Config

    iam: Any = boto3.session.Session().client(
        "iam",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=SETUP_ACCESS_KEY_ID,
        aws_secret_access_key=SETUP_SECRET,
        config=Config(retries={"total_max_attempts": 1}),
    )
    prefix, user = _create_user(iam, prefix)
    user_name: str = user["UserName"]
    user_arn: str = user["Arn"]
    account_id = user_arn.split(":")[4]
    key = iam.create_access_key(UserName=user_name)["AccessKey"]
    role_prefix = f"arn:aws:iam::{account_id}:role/{prefix}-"
    iam.put_user_policy(
        UserName=user_name,
        PolicyName="allow-assume-role",
        PolicyDocument=_allow("sts:AssumeRole", f"{role_prefix}*"),
    )
    role_arn, chained_arn = _roles(
        iam,
        prefix=prefix,
        account_id=account_id,
        user_arn=user_arn,
        max_session_duration=max_session_duration,
        chain_session_name=chain_session_name,
    )
    provider_arn = _oidc_provider(iam, account_id)
    web_arn = _web_role(iam, prefix, provider_arn, max_session_duration)
    return Walkthrough(
        account_id=account_id,
        user_name=user_name,
        user_arn=user_arn,
        access_key_id=key["AccessKeyId"],
        secret_access_key=key["SecretAccessKey"],
        role_arn=role_arn,
        chained_role_arn=chained_arn,
        chain_session_name=chain_session_name,
        web_identity_role_arn=web_arn,
        oidc_provider_arn=provider_arn,
        session_policy=session_policy_for(user["UserId"]),
    )


def stub_walkthrough(
    account_id: str,
    *,
    prefix: str = "credfresh-demo",
    chain_session_name: str = "credfresh-chain",
) -> Walkthrough:
    """The same names without IAM, for the stub (which accepts any well-formed role ARN)."""
    roles = f"arn:aws:iam::{account_id}:role/{prefix}"
    return Walkthrough(
        account_id=account_id,
        user_name=f"{prefix}-user",
        user_arn=f"arn:aws:iam::{account_id}:user/{prefix}-user",
        access_key_id="devsts-stub-user-key",
        secret_access_key="devsts/stub/secret/key/not/for/any/real/use",  # noqa: S106
        role_arn=f"{roles}-role",
        chained_role_arn=f"{roles}-chained-role",
        chain_session_name=chain_session_name,
        web_identity_role_arn=f"{roles}-web-role",
        oidc_provider_arn=f"arn:aws:iam::{account_id}:oidc-provider/{OIDC_URL[8:]}",
        session_policy=session_policy_for("AIDADEVSTSSTUBUSER01"),
    )
