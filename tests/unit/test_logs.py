"""Logs are JSON lines with the event's context bound, and secrets never reach them."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from mlcd import logs


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """`logs.configure` sets up the whole process; give the next test the logging it had."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers, root.level = handlers, level
    structlog.reset_defaults()


def _lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_a_configured_secret_is_masked_wherever_it_appears() -> None:
    buffer = io.StringIO()
    logs.configure("INFO", ["hunter2-webhook-secret"], stream=buffer)
    logs.get("t").info("delivery from hunter2-webhook-secret", header="X-Gitlab-Token hunter2-webhook-secret")
    logging.getLogger("uvicorn.error").warning("refused token hunter2-webhook-secret")

    text = buffer.getvalue()
    assert "hunter2-webhook-secret" not in text
    assert [line["level"] for line in _lines(buffer)] == ["info", "warning"]


def test_secret_looking_fields_are_masked_even_when_unconfigured() -> None:
    buffer = io.StringIO()
    logs.configure("INFO", stream=buffer)
    logs.get("t").info("calling", authorization="Bearer abc", api_token="xyz", model="wine")

    (line,) = _lines(buffer)
    assert line["authorization"] == line["api_token"] == logs.REDACTED
    assert line["model"] == "wine"


def test_event_context_is_bound_on_every_line_inside_the_block() -> None:
    buffer = io.StringIO()
    logs.configure("INFO", stream=buffer)
    with logs.bound(event_id="e-1", event_type="mlcd.data.arrived.v1", model="wine_quality"):
        logs.get("t").info("first")
        logging.getLogger("lib").warning("second")
    logs.get("t").info("after")

    first, second, after = _lines(buffer)
    for line in (first, second):
        assert (line["event_id"], line["model"]) == ("e-1", "wine_quality")
    assert "event_id" not in after


def test_credentials_inside_any_url_are_masked_even_when_unconfigured() -> None:
    buffer = io.StringIO()
    logs.configure("INFO", stream=buffer)
    logs.get("t").warning("mlflow unreachable at https://ci-bot:s3cr3t-pass@mlflow.internal/api, retrying")

    (line,) = _lines(buffer)
    assert line["event"] == "mlflow unreachable at https://***@mlflow.internal/api, retrying"
