"""The example configurations in docs/deploy are valid settings files."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from headwater.core.settings import Settings
from tests.helpers import ROOT

EXAMPLES = sorted((ROOT / "docs" / "deploy").glob("*.toml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_is_valid(path: Path) -> None:
    Settings.config_file = None
    settings = Settings(**tomllib.loads(path.read_text()))
    assert settings.port == 8080


def test_there_is_one_example_per_deployment_shape() -> None:
    assert {p.name for p in EXAMPLES} == {"one-box.toml", "cluster.toml"}
