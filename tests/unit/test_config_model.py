"""The config model: defaults written once, paths from an explicit environment and home."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from pydantic import BaseModel

from credfresh.config import model, schema
from credfresh.config.load import read_light
from credfresh.config.validate import build_config

HOME = Path("/home/tester")


@pytest.mark.parametrize(
    ("pydantic_model", "dataclass"),
    [
        (schema.StsModel, model.StsSettings),
        (schema.RetryModel, model.RetrySettings),
        (schema.AlertsModel, model.AlertSettings),
        (schema.HttpModel, model.HttpSettings),
    ],
)
def test_schema_defaults_are_the_models(pydantic_model: type[BaseModel], dataclass: type) -> None:
    """Every pydantic default is the dataclass's own default, not a second copy."""
    defaults = {f.name: f.default for f in dataclasses.fields(dataclass)}
    for name, field in pydantic_model.model_fields.items():
        if field.default is not None or defaults[name] is None:
            assert field.default == defaults[name], name


def test_empty_document_gives_the_defaults(tmp_path: Path) -> None:
    """A config with no sections validates to the dataclasses' defaults."""
    config = build_config({}, tmp_path / "c.yaml", {}, HOME)
    assert (config.sts, config.retry, config.alerts) == (
        model.StsSettings(),
        model.RetrySettings(),
        model.AlertSettings(),
    )
    assert config.credentials_file == HOME / ".aws" / "credentials"
    assert config.state_file.is_relative_to(HOME / ".local" / "state" / "credfresh")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("~/creds", "/home/tester/creds"),
        ("~", "/home/tester"),
        ("$DIR/creds", "/srv/creds"),
        ("${DIR}/x", "/srv/x"),
        ("$UNSET/x", "/etc/credfresh/$UNSET/x"),
        ("rel/creds", "/etc/credfresh/rel/creds"),
        ("/abs", "/abs"),
    ],
)
def test_expand_path_uses_the_given_environment(value: str, expected: str) -> None:
    """`~` is the given home and `$VARS` come from the given mapping, not the process."""
    got = model.expand_path(value, Path("/etc/credfresh"), {"DIR": "/srv"}, HOME)
    assert got == Path(expected)


def test_listen_is_parsed_in_one_place() -> None:
    """HOST:PORT with brackets for IPv6; anything else is a ValueError."""
    assert model.parse_listen("[::]:9464") == ("::", 9464)
    assert model.parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    with pytest.raises(ValueError, match="HOST:PORT"):
        model.parse_listen("127.0.0.1:70000")


def test_light_read_is_the_same_model(tmp_path: Path) -> None:
    """The fast commands' view is the core that the full Config extends."""
    path = tmp_path / "c.yaml"
    path.write_text("profiles:\n  p:\n    role_arn: arn:aws:iam::123456789012:role/r\n")
    light = read_light(path, {}, HOME)
    full = build_config(
        {"profiles": {"p": {"role_arn": light.profiles["p"].role_arn}}}, path, {}, HOME
    )
    assert isinstance(full, model.ConfigCore)
    assert isinstance(full.profiles["p"], model.ProfileCore)
    assert (light.credentials_file, light.owner) == (full.credentials_file, full.owner)
