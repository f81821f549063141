"""The STS source: AssumeRole (keys, a source profile, or a chained role's parent) and
AssumeRoleWithWebIdentity, through the shared clients, each call under one deadline.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from credfresh.context import Clock, SystemClock
from credfresh.sources.base import Issued
from credfresh.sources.classify import ROTATION_CODES, Failure, SourceError, classify
from credfresh.sources.clients import StsClients
from credfresh.sources.response import accept_response
from credfresh.sources.web_identity import read_token

if TYPE_CHECKING:
    from credfresh.config.model import Profile, StsSettings
    from credfresh.credentials import Credentials


def assume_role_params(profile: Profile) -> dict[str, Any]:
    """The AssumeRole / AssumeRoleWithWebIdentity parameters for a profile (no token)."""
    params: dict[str, Any] = {
        "RoleArn": profile.role_arn,
        "RoleSessionName": profile.role_session_name,
        "DurationSeconds": profile.duration_seconds,
    }
    if profile.policy is not None:
        params["Policy"] = profile.policy
    if profile.policy_arns:
        params["PolicyArns"] = [{"arn": arn} for arn in profile.policy_arns]
    if profile.web_identity_token_file is None:
        if profile.external_id is not None:
            params["ExternalId"] = profile.external_id
        if profile.tags:
            params["Tags"] = [{"Key": k, "Value": v} for k, v in profile.tags]
        if profile.transitive_tag_keys:
            params["TransitiveTagKeys"] = list(profile.transitive_tag_keys)
        if profile.source_identity is not None:
            params["SourceIdentity"] = profile.source_identity
    return params


class StsSource:
    """The `Source` for every profile credfresh knows today; thread-safe.

    `credentials_file` is where AWS source profiles are looked up.
    """

    def __init__(
        self,
        settings: StsSettings,
        *,
        credentials_file: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._clock: Clock = clock or SystemClock()
        self.clients = StsClients(settings, credentials_file=credentials_file, clock=self._clock)

    def fetch(self, profile: Profile, parent: Credentials | None = None) -> Issued:
        """Issue credentials for a profile; on a bad-key error, re-read the source keys once."""
        try:
            return self._assume_once(profile, parent)
        except SourceError as exc:
            if (
                exc.failure.code in ROTATION_CODES
                and profile.web_identity_token_file is None
                and not profile.chained
            ):
                self.clients.forget_source(profile)
                return self._assume_once(profile, parent)
            raise

    def _assume_once(self, profile: Profile, parent: Credentials | None) -> Issued:
        client = self.clients.client_for(profile, parent)
        params = assume_role_params(profile)
        if profile.web_identity_token_file is not None:
            params["WebIdentityToken"] = read_token(profile.web_identity_token_file, profile.name)
            call = client.assume_role_with_web_identity
        else:
            call = client.assume_role
        try:
            response = self.clients.guarded(lambda: call(**params), profile.name)
        except SourceError:
            raise
        except Exception as exc:
            failure = failure_of(exc, chained=profile.chained)
            if failure is None:
                raise
            raise SourceError(failure, profile.name) from None
        credentials, skew = accept_response(
            response, received_at=self._clock.now(), duration_seconds=profile.duration_seconds
        )
        return Issued(credentials=credentials, skew=skew)


def failure_of(exc: Exception, *, chained: bool) -> Failure | None:
    """A botocore error as a classified failure; None for anything that is no STS failure."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        ParamValidationError,
        ReadTimeoutError,
    )
    from botocore.parsers import ResponseParserError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        failure = classify(
            str(error.get("Code") or "unknown"), str(error.get("Message") or ""), status
        )
        chained_expired = failure.code == "ExpiredToken" and chained
        return dataclasses.replace(failure, permanent=False) if chained_expired else failure
    if isinstance(exc, ParamValidationError):
        return classify("ValidationError", "botocore refused a parameter", 400)
    name = type(exc).__name__
    if isinstance(exc, (ConnectTimeoutError, ReadTimeoutError)):
        return classify("timeout", name)
    if isinstance(exc, EndpointConnectionError) or (
        isinstance(exc, BotoCoreError) and "connection" in name.lower()
    ):
        return classify("connection_error", name)
    # botocore's parsers raise these on bodies that are not STS XML (a captive portal's page).
    parsing = (BotoCoreError, ResponseParserError, KeyError, ValueError, TypeError, AttributeError)
    return classify("invalid_response", name) if isinstance(exc, parsing) else None
