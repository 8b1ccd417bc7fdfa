"""docs/configuration.md is generated from the settings; regenerate it with `python -m mlcd.config_docs`."""

from __future__ import annotations

from pathlib import Path

from mlcd import config_docs
from mlcd.config import Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_configuration_reference_matches_the_settings() -> None:
    assert DOC.read_text() == config_docs.render(), "run: .venv/bin/python -m mlcd.config_docs"


def test_every_setting_explains_itself() -> None:
    undocumented = [name for name, field in Settings.model_fields.items() if not field.description]
    assert undocumented == [], f"add a description to: {undocumented}"
