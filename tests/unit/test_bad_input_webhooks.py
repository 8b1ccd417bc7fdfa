"""Webhook parsers under bad input: events that can be published, or `Unparseable` saying why, nothing else.

`Unparseable` is what the HTTP layer answers 202 for and parks on the DLQ; any other exception would be a
500, which GitLab counts towards disabling the hook.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from mlcd import events
from mlcd.ingest import alertmanager, gitlab, minio, mlflow_hooks
from mlcd.ingest.delivery import Envelope, Unparseable
from mlcd.policy.book import PolicyBook
from tests.support import mutations
from tests.support.inputs_tried import explore

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "ingest"
POLICIES = PolicyBook(REPO / "policies")
POLICIES.refresh()  # compiling the rules loads cel-python, which raises the recursion limit: not mid-test

# What an HTTP header value can hold once the server decoded it (latin-1, no control characters).
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"))


def _fixtures(prefix: str) -> list[Any]:
    return [json.loads(path.read_text()) for path in sorted(FIXTURES.glob(f"{prefix}*.json"))]


def _bodies(prefix: str) -> st.SearchStrategy[bytes]:
    return mutations.bodies(_fixtures(prefix))


def _published_or_unparseable(parse: Callable[[], list[Envelope]]) -> None:
    try:
        envelopes = parse()
    except Unparseable as e:
        assert str(e).strip(), "Unparseable without a reason"
        return
    assert envelopes, "a delivery that parsed must at least be journaled"
    for envelope in envelopes:
        # What the publisher does next: it must be able to put the event on the bus, readable again.
        assert isinstance(events.decode(events.encode(envelope)), events.Envelope)


GITLAB_HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "x-gitlab-event": st.one_of(
            st.sampled_from(
                ["Push Hook", "Tag Push Hook", "Merge Request Hook", "Note Hook", "Pipeline Hook"]
            ),
            HEADER_TEXT,
        ),
        "idempotency-key": HEADER_TEXT,
        "x-gitlab-event-uuid": HEADER_TEXT,
    },
)


def test_gitlab_deliveries_become_events_or_are_unparseable() -> None:
    def check(delivery: tuple[bytes, dict[str, str]]) -> None:
        body, headers = delivery
        _published_or_unparseable(lambda: gitlab.parse(body, headers, POLICIES))

    tried = explore("GitLab webhook parser", st.tuples(_bodies("gitlab_"), GITLAB_HEADERS), check, 400)
    assert tried >= 100


def test_minio_notifications_become_events_or_are_unparseable() -> None:
    def check(body: bytes) -> None:
        _published_or_unparseable(lambda: minio.parse(body, POLICIES))

    assert explore("MinIO notification parser", _bodies("minio_"), check, 300) >= 100


def test_alertmanager_notifications_become_events_or_are_unparseable() -> None:
    def check(body: bytes) -> None:
        _published_or_unparseable(lambda: alertmanager.parse(body, POLICIES))

    assert explore("Alertmanager webhook parser", _bodies("alertmanager_"), check, 300) >= 100


def test_mlflow_webhooks_become_events_or_are_unparseable() -> None:
    headers = st.fixed_dictionaries({}, optional={"x-mlflow-delivery-id": HEADER_TEXT})

    def check(delivery: tuple[bytes, dict[str, str]]) -> None:
        body, sent = delivery
        _published_or_unparseable(lambda: mlflow_hooks.parse(body, sent, POLICIES))

    assert explore("MLflow webhook parser", st.tuples(_bodies("mlflow_"), headers), check, 300) >= 100
