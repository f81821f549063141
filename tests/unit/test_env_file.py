"""Env files read the same by systemd's `EnvironmentFile=` and `docker --env-file`.

The two readers below follow their documentation: systemd.exec(5) (lines `KEY=VALUE`, `#`
and `;` comments, leading and trailing whitespace stripped, single or double quotes removed
with backslash escapes inside double quotes and outside quotes) and docker's `--env-file`
(`KEY=VALUE` taken literally after the first `=`, `#` comments, no quote handling).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from credfresh.credentials import Credentials
from credfresh.outputs.env_file import SAFE_VALUE, render_env
from support.env_readers import docker_reader, systemd_reader

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def creds(token: str = "IQoJb3JpZ2luX2VjE/+=", principal: str = "") -> Credentials:  # noqa: S107  a made-up token
    return Credentials(
        access_key_id="ASIAEXAMPLE000000001",
        secret_access_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        session_token=token,
        expiration=NOW + timedelta(hours=1),
        issued=NOW,
        principal_arn=principal,
    )


def test_the_variables_in_order() -> None:
    text = render_env(
        creds(principal="arn:aws:sts::123456789012:assumed-role/app/s"), "eu-west-1"
    ).decode()
    assert text == (
        "AWS_ACCESS_KEY_ID=ASIAEXAMPLE000000001\n"
        "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n"
        "AWS_SESSION_TOKEN=IQoJb3JpZ2luX2VjE/+=\n"
        "AWS_CREDENTIAL_EXPIRATION=2026-12-02T13:00:00Z\n"
        "AWS_REGION=eu-west-1\n"
        "AWS_ACCOUNT_ID=123456789012\n"
    )
    assert "AWS_REGION" not in render_env(creds(), None).decode()


@given(st.text(alphabet="ABCabc0189/+=", min_size=1, max_size=64))
def test_both_readers_read_the_same_values(token: str) -> None:
    text = render_env(creds(token=token), "us-east-1").decode()
    assert systemd_reader(text) == docker_reader(text)
    assert docker_reader(text)["AWS_SESSION_TOKEN"] == token


@pytest.mark.parametrize("bad", ['a"b', "a b", "a\\b", "a#b", "a$b", "a'b"])
def test_values_a_reader_would_change_are_refused(bad: str) -> None:
    assert not SAFE_VALUE.fullmatch(bad)
    with pytest.raises(ValueError, match="AWS_SESSION_TOKEN"):
        render_env(creds(token=bad), None)


def test_the_readers_disagree_on_quotes_which_is_why_none_are_written() -> None:
    assert systemd_reader('K="v"') != docker_reader('K="v"')
