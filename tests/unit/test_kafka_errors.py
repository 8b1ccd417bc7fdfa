"""Kafka's errors reach the runtime by class: aiokafka's own `retriable` flag decides, save for the outages
it marks final (a lost connection, a timeout), and a record the broker refuses for good is told apart from a
broker that is away, record by record."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import errors as kafka_errors

from mlcd import events
from mlcd.bus import kafka
from mlcd.bus.runtime import RetryPolicy
from mlcd.errors import AdapterUnavailable, PermanentError, RecordsRefused


@pytest.mark.parametrize(
    "error",
    [
        kafka_errors.NotLeaderForPartitionError(),  # retriable: a leader election
        kafka_errors.UnknownTopicOrPartitionError(),
        kafka_errors.NotEnoughReplicasError(),
        kafka_errors.KafkaConnectionError("connection reset"),
        kafka_errors.RequestTimedOutError(),
        kafka_errors.KafkaTimeoutError(),  # not retriable to aiokafka; a full buffer while the broker is down
    ],
    ids=type,
)
def test_an_outage_is_retried(error: kafka_errors.KafkaError) -> None:
    translated = kafka.translate(error, "publish")
    assert isinstance(translated, AdapterUnavailable)
    assert RetryPolicy.retries(translated)


@pytest.mark.parametrize(
    "error",
    [
        kafka_errors.MessageSizeTooLargeError(),
        kafka_errors.TopicAuthorizationFailedError(),
        kafka_errors.InvalidTopicError(),
        kafka_errors.CorruptRecordException(),
    ],
    ids=type,
)
def test_a_refusal_retrying_cannot_fix_is_permanent(error: kafka_errors.KafkaError) -> None:
    assert not error.retriable
    translated = kafka.translate(error, "publish")
    assert isinstance(translated, kafka.BrokerRefused) and isinstance(translated, PermanentError)
    assert not RetryPolicy.retries(translated)


class _Producer:
    """Stands in for AIOKafkaProducer.send: each value names what the broker does with its record."""

    async def send(
        self, topic: str, *, value: bytes, key: bytes | None, headers: Any
    ) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if value == b"too large":
            raise kafka_errors.MessageSizeTooLargeError()
        if value == b"no room":
            raise kafka_errors.KafkaTimeoutError()
        if value == b"refused on ack":
            future.set_exception(kafka_errors.InvalidTopicError())
        else:
            future.set_result(None)
        return future


def _bus() -> kafka.KafkaBus:
    bus = kafka.KafkaBus("127.0.0.1:1", events.TOPICS)
    bus._producer = _Producer()  # type: ignore[assignment]
    return bus


def _records(*values: bytes) -> list[events.Record]:
    return [events.Record(topic="mlcd.data", key=b"m", value=v) for v in values]


async def test_records_refused_for_good_are_named_by_position() -> None:
    with pytest.raises(RecordsRefused) as refused:
        await _bus().publish(_records(b"ok", b"too large", b"ok", b"refused on ack"))
    assert sorted(refused.value.refused) == [1, 3]


async def test_a_record_with_no_room_in_the_buffer_is_an_outage_not_a_refusal() -> None:
    # Taken for a refusal, the relay would park it with the dead letters while the broker is merely away.
    with pytest.raises(AdapterUnavailable):
        await _bus().publish(_records(b"ok", b"no room", b"ok"))
