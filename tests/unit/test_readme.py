"""The README documents every config key the schema accepts."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from credfresh.config import schema

README = Path("README.md").read_text()
SECTIONS: dict[str, type[BaseModel]] = {
    "sts": schema.StsModel,
    "retry": schema.RetryModel,
    "alerts": schema.AlertsModel,
    "http": schema.HttpModel,
    "metrics": schema.MetricsModel,
    "container_credentials": schema.ContainerCredentialsModel,
    "imds": schema.ImdsModel,
}


def documented_keys() -> list[str]:
    keys = [k for k in schema.TopModel.model_fields if k not in SECTIONS and k != "profiles"]
    for section, model in SECTIONS.items():
        keys += [f"{section}.{field}" for field in model.model_fields]
    keys += [f"profiles.<name>.{field}" for field in schema.ProfileModel.model_fields]
    return keys


def test_every_key_in_readme() -> None:
    """Each key of the schema has a row in the README's reference table."""
    missing = [key for key in documented_keys() if f"| `{key}` |" not in README]
    assert not missing


def test_every_key_in_example() -> None:
    """The annotated example config mentions every key."""
    example = Path("config/credfresh.example.yaml").read_text()
    missing = [k for k in documented_keys() if f"{k.rsplit('.', 1)[-1]}:" not in example]
    assert not missing


def test_readme_starts_with_the_two_commands() -> None:
    """The first lines a newcomer reads are make demo and make test."""
    head = "\n".join(README.splitlines()[:6])
    assert "make demo" in head
    assert "make test" in head


def test_test_references_exist() -> None:
    """Every `tests/x.py::Class::test` the README cites exists."""
    import re

    missing = []
    for ref in re.findall(r"`(tests/[\w/]+\.py)((?:::\w+)+)`", README):
        path, names = Path(ref[0]), ref[1].strip(":").split("::")
        text = path.read_text() if path.exists() else ""
        missing += [f"{path}::{n}" for n in names if not re.search(rf"(def|class) {n}\b", text)]
    assert not missing
