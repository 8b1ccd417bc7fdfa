"""CloudEvents Kafka records under bad input: `decode` answers an Envelope or a DecodeError, never raises;
every event type survives encode → decode.

A record that raised in `decode` would stop a consumer on a poison message instead of parking it.
"""

from __future__ import annotations

import types
import typing
from dataclasses import replace
from datetime import UTC, timedelta, timezone
from typing import Any

from hypothesis import strategies as st
from pydantic import BaseModel

from mlcd import events
from tests.support import mutations
from tests.support.inputs_tried import explore

ZONES = [None, UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=11, seconds=1))]
HEADER_NAMES = st.one_of(
    st.sampled_from(
        ["ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "ce_subject", "content-type"]
    ),
    st.text(max_size=20),
)
HEADER_VALUES = st.one_of(
    st.binary(max_size=40),
    st.sampled_from(
        [b"1.0", b"0.3", b"", b"\xff\xfe", b"2026-11-23T12:00:00+00:00", b"2026-13-45", b"9" * 50]
    ),
    st.sampled_from(sorted(events.PAYLOAD_TYPES)).map(str.encode),
)
# Values around the payloads mlcd really sends, plus anything at all.
SAMPLE_PAYLOADS = [
    {"model": "wine_quality", "bucket": "landing", "key": "wine_quality/b.csv", "uri": "s3://x", "size": 1},
    {"model": "m", "run_id": "r", "model_version": "3", "metrics": {"accuracy": 0.9}, "data_uri": "s3://d"},
    {"model": "m", "gate_id": "g", "model_version": "1", "rules": [], "approvals_required": 1,
     "approver_groups": ["oncall"], "expires_at": "2026-11-23T12:00:00Z"},
]  # fmt: skip


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


def _values(annotation: Any) -> st.SearchStrategy[Any]:
    """Any value of a payload field's type; floats include NaN and the infinities (a metric can be NaN)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return JSON_VALUES
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(_values(arg) for arg in args))
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin is list:
        return st.lists(_values(args[0]), max_size=3)
    if origin is dict:
        return st.dictionaries(_values(args[0]), _values(args[1]), max_size=3)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _model(annotation)
    return st.from_type(annotation)


def _model(cls: type[BaseModel]) -> st.SearchStrategy[Any]:
    fields = {name: _values(field.annotation) for name, field in cls.model_fields.items()}
    return st.fixed_dictionaries(fields).map(cls.model_validate)


ENVELOPES = st.sampled_from(sorted(events.PAYLOAD_TYPES)).flatmap(
    lambda type_name: st.builds(
        events.new_event,
        _model(events.PAYLOAD_TYPES[type_name]),
        source=st.text(min_size=1, max_size=20),
        id=st.text(min_size=1, max_size=40),
        subject=st.none() | st.text(max_size=20),
        time=st.datetimes(timezones=st.sampled_from(ZONES)),
    )
)


@st.composite
def records(draw: st.DrawFn) -> events.Record:
    """Records near a real one (headers dropped, changed, added; the value replaced) and arbitrary ones."""
    record = events.encode(draw(ENVELOPES))
    headers = list(record.headers)
    for _ in range(draw(st.integers(0, 4))):
        how = draw(st.sampled_from(["drop", "change", "add"]))
        if how == "drop" and headers:
            headers.pop(draw(st.integers(0, len(headers) - 1)))
        elif how == "change" and headers:
            at = draw(st.integers(0, len(headers) - 1))
            headers[at] = (headers[at][0], draw(HEADER_VALUES))
        else:
            headers.insert(0, (draw(HEADER_NAMES), draw(HEADER_VALUES)))
    value = draw(
        st.one_of(
            st.just(record.value),
            mutations.bodies(SAMPLE_PAYLOADS),
            st.binary(max_size=100),
        )
    )
    key = draw(st.one_of(st.just(record.key), st.none(), st.binary(max_size=20)))
    return replace(record, headers=tuple(headers), value=value, key=key)


def test_any_record_decodes_to_an_envelope_or_a_decode_error() -> None:
    def check(record: events.Record) -> None:
        decoded = events.decode(record)
        if isinstance(decoded, events.DecodeError):
            assert decoded.reason.strip() and decoded.record is record
        else:
            assert isinstance(decoded, events.Envelope) and isinstance(decoded.data, events.Payload)

    assert explore("CloudEvents record decode", records(), check, 300) >= 100


def test_every_event_type_survives_encode_then_decode() -> None:
    def check(envelope: events.Envelope[events.Payload]) -> None:
        record = events.encode(envelope)
        decoded = events.decode(record)
        assert isinstance(decoded, events.Envelope), decoded.reason
        assert type(decoded.data) is type(envelope.data)
        # Compared through the wire form: NaN is not equal to itself, its encoding is.
        assert events.encode(decoded) == record
        assert decoded.time == envelope.time

    assert explore("CloudEvents encode/decode round trip", ENVELOPES, check, 300) >= 100
