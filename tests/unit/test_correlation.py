"""One correlation id per chain: CloudEvents extension attributes read back by the `cloudevents` SDK,
a W3C `traceparent` that OpenTelemetry's own propagator accepts, emitted events inheriting their cause's
chain."""

from __future__ import annotations

import uuid
from typing import Any

from cloudevents.core.bindings import kafka
from cloudevents.core.formats.json import JSONFormat
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from sqlalchemy.ext.asyncio import AsyncEngine

from mlcd import events, tracing
from mlcd.store.unit_of_work import UnitOfWork


def _arrived() -> events.Envelope[events.DataArrived]:
    return events.new_event(
        events.DataArrived(
            model="wine_quality", bucket="landing", key="b.csv", uri="s3://landing/b.csv", size=9
        ),
        source="mlcd/ingest",
    )


def _otel_context(traceparent: str) -> trace.SpanContext:
    context = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
    return trace.get_current_span(context).get_span_context()


def test_an_origin_event_begins_its_chain_and_the_kafka_sdk_reads_both_extensions() -> None:
    arrived = _arrived()
    record = events.encode(arrived)

    read = kafka.from_binary_event(
        kafka.KafkaMessage(headers=dict(record.headers), key=record.key, value=record.value)
    )

    assert read.get_extension("correlationid") == arrived.id
    assert read.get_extension("traceparent") == arrived.traceparent
    decoded = events.decode(record)
    assert not isinstance(decoded, events.DecodeError)
    assert decoded.correlation == arrived.id


def test_the_structured_form_parses_with_the_sdks_json_format() -> None:
    import json

    arrived = _arrived()
    read = JSONFormat().read(None, json.dumps(arrived.structured(), default=str).encode())

    assert read.get_extension("correlationid") == arrived.id
    assert read.get_extension("traceparent") == arrived.traceparent


def test_the_traceparent_is_w3c_trace_context_in_the_chains_trace() -> None:
    arrived = _arrived()
    span = _otel_context(arrived.traceparent)

    assert span.is_valid and span.is_remote and span.trace_flags.sampled
    assert f"{span.trace_id:032x}" == uuid.UUID(arrived.id).hex  # the trace id is the correlation id
    assert _otel_context(tracing.traceparent("not-a-uuid", "e1")).is_valid


def test_an_event_from_before_correlation_ids_began_its_own_chain() -> None:
    arrived = _arrived()
    record = events.encode(arrived)
    old = events.Record(
        topic=record.topic,
        key=record.key,
        value=record.value,
        headers=tuple((k, v) for k, v in record.headers if k not in {"ce_correlationid", "ce_traceparent"}),
    )
    decoded = events.decode(old)
    assert not isinstance(decoded, events.DecodeError)
    assert decoded.correlation == decoded.id


async def test_emitted_events_inherit_the_causes_chain_and_following_names_another(
    engine: AsyncEngine,
) -> None:
    arrived = _arrived()
    validated = events.DataValidated(
        model="wine_quality", uri=arrived.data.uri, rows=9, suite="s", result_uri="r"
    )
    caused = UnitOfWork(engine, "mlcd/validator", arrived)
    timer = UnitOfWork(engine, "mlcd/deployer")

    inherited = caused.envelope(validated)
    unchained = timer.envelope(validated)
    with tracing.following("chain-of-a-rollout"):
        followed = timer.envelope(validated)

    assert inherited.correlation == arrived.id and inherited.id != arrived.id
    assert inherited.traceparent.split("-")[1] == arrived.traceparent.split("-")[1]
    assert inherited.traceparent.split("-")[2] != arrived.traceparent.split("-")[2]  # a span of its own
    assert unchained.correlation == unchained.id
    assert followed.correlation == "chain-of-a-rollout"


def test_outgoing_headers_name_the_chain_only_while_following_one() -> None:
    assert tracing.headers() == {}
    with tracing.following("c1", "e1"):
        assert tracing.headers() == {"traceparent": tracing.traceparent("c1", "e1")}
        with tracing.following(""):  # a row from before correlation ids: no chain of its own to follow
            assert tracing.headers() == {"traceparent": tracing.traceparent("c1", "e1")}
    assert tracing.headers() == {}


def test_mlflow_asks_mlcds_header_provider_on_every_call() -> None:
    from mlflow.tracking.request_header.registry import resolve_request_headers

    with tracing.following("c1", "e1"):
        headers: dict[str, Any] = resolve_request_headers()
    assert headers["traceparent"] == tracing.traceparent("c1", "e1")
    assert "traceparent" not in resolve_request_headers()
