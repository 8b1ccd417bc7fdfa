"""docs/events holds exactly the JSON Schemas the event models generate (`python -m mlcd.events`)."""

from __future__ import annotations

from pathlib import Path

from mlcd import events

DOCS = Path(__file__).resolve().parents[2] / "docs" / "events"


def test_docs_hold_a_schema_for_every_event_type_and_no_other() -> None:
    documented = {p.name for p in DOCS.glob("mlcd.*.json")}
    assert documented == set(events.json_schemas()), "regenerate with: .venv/bin/python -m mlcd.events"


def test_documented_schemas_match_the_event_models() -> None:
    stale = [name for name, text in events.json_schemas().items() if (DOCS / name).read_text() != text]
    assert stale == [], f"schemas drifted from the models: {stale}; regenerate with python -m mlcd.events"


def test_events_reference_page_matches_the_event_models() -> None:
    page = (DOCS / "README.md").read_text()
    assert page == events.reference(), "regenerate with: .venv/bin/python -m mlcd.events"
    assert all(f"`{type_name}`" in page for type_name in events.PAYLOAD_TYPES)
