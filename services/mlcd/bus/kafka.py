"""The Kafka adapter (aiokafka): acks=all produce, consumer groups with manual offset commits."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    NodeNotReadyError,
    RequestTimedOutError,
    TopicAlreadyExistsError,
)
from aiokafka.partitioner import DefaultPartitioner, murmur2
from aiokafka.structs import OffsetAndMetadata

from mlcd import logs
from mlcd.errors import AdapterUnavailable, MlcdError, PermanentError, RecordsRefused
from mlcd.events import Record

log = logs.get(__name__)


class BrokerRefused(PermanentError):
    """The broker answered with an error that retrying cannot fix (aiokafka's `retriable` is False)."""


def translate(error: BaseException, what: str) -> MlcdError:
    """A library error as mlcd's tree: retriable Kafka errors, timeouts and lost sockets are outages."""
    if isinstance(error, KafkaError) and not error.retriable and not _is_outage(error):
        return BrokerRefused(f"{what}: {error!r}")
    return AdapterUnavailable(f"{what}: {error!r}")


def _is_outage(error: KafkaError) -> bool:
    # aiokafka marks a few outage errors non-retriable although waiting cures them: lost connections, and
    # KafkaTimeoutError, which `send` raises when a record found no room in the producer's buffer in time
    # (a broker that is down holds every batch): a refusal "for good" would park the record.
    return isinstance(
        error, KafkaConnectionError | NodeNotReadyError | RequestTimedOutError | KafkaTimeoutError
    )


class KeyHashingPartitioner:
    """aiokafka's default partitioner (murmur2 of the key, as the Java client), with each key's hash kept.

    murmur2 is pure Python in aiokafka and was a tenth of the relay's time; keys (model names) repeat, so
    each is hashed once. The partition of a key is the default partitioner's, so a key's order holds
    alongside producers that use the default.
    """

    def __init__(self, max_keys: int = 65_536) -> None:
        self._hashes: dict[bytes, int] = {}
        self._max_keys = max_keys

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:
            return int(DefaultPartitioner()(key, all_partitions, available))
        hashed = self._hashes.get(key)
        if hashed is None:
            if len(self._hashes) >= self._max_keys:
                self._hashes.clear()
            hashed = self._hashes[key] = murmur2(key) & 0x7FFFFFFF
        return all_partitions[hashed % len(all_partitions)]


class KafkaBus:
    def __init__(
        self,
        bootstrap: str,
        topics: Sequence[str],
        *,
        partitions: int = 4,
        replication_factor: int = 1,
        enable_idempotence: bool = False,
        request_timeout_s: float = 10.0,
        namespace: str = "",
        session_timeout_s: float = 10.0,
        heartbeat_interval_s: float = 3.0,
        max_request_size: int = 1_048_576,
        fetch_max_wait_ms: int = 500,
        security: Mapping[str, Any] | None = None,
    ) -> None:
        """`security`: SASL/TLS arguments every client gets alike (`kafka_security.client_options`).

        `fetch_max_wait_ms`: how long the broker may hold a consumer's fetch when it has nothing new; a
        consumer's record waits up to that long on each hop, so it bounds per-hop latency.
        """
        self.bootstrap = bootstrap
        self.security = dict(security or {})
        self.namespace = namespace
        self.topics = list(topics)
        self.partitions = partitions
        self.replication_factor = replication_factor
        self.enable_idempotence = enable_idempotence
        self.request_timeout_s = request_timeout_s
        self.session_timeout_s = session_timeout_s
        self.heartbeat_interval_s = heartbeat_interval_s
        self.max_request_size = max_request_size
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self._producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()
        self._subscriptions: list[_KafkaSubscription] = []

    def physical(self, name: str) -> str:
        """Broker-side name of a topic or group: the namespace keeps tenants and test runs apart."""
        return self.namespace + name

    def logical(self, name: str) -> str:
        return name.removeprefix(self.namespace)

    async def start(self) -> None:
        """Connect once: every worker that needs the broker calls this, the first one connects."""
        async with self._starting:
            if self._producer is None:
                await self._connect()

    async def _connect(self) -> None:
        await self.create_topics(self.topics)
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            **self.security,
            acks="all",
            enable_idempotence=self.enable_idempotence,
            partitioner=KeyHashingPartitioner(),
            linger_ms=1,
            max_request_size=self.max_request_size,
            request_timeout_ms=int(self.request_timeout_s * 1000),
        )
        try:
            await asyncio.wait_for(producer.start(), self.request_timeout_s)
        except (KafkaError, OSError, TimeoutError) as e:
            await producer.stop()
            raise translate(e, f"Kafka at {self.bootstrap} did not answer") from e
        self._producer = producer

    async def create_topics(self, topics: Sequence[str]) -> None:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap,
            request_timeout_ms=int(self.request_timeout_s * 1000),
            **self.security,
        )
        try:
            await asyncio.wait_for(admin.start(), self.request_timeout_s)
            existing = set(await admin.list_topics())
            wanted = [
                NewTopic(
                    self.physical(t),
                    num_partitions=self.partitions,
                    replication_factor=self.replication_factor,
                )
                for t in topics
                if self.physical(t) not in existing
            ]
            if wanted:
                try:
                    await admin.create_topics(wanted)
                except TopicAlreadyExistsError:
                    pass  # another replica created it between our list and create
        except (KafkaError, OSError, TimeoutError) as e:
            raise translate(e, f"Kafka at {self.bootstrap} did not answer") from e
        finally:
            await admin.close()

    async def stop(self) -> None:
        for subscription in list(self._subscriptions):
            await subscription.close()
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def ping(self) -> None:
        if self._producer is None:
            raise AdapterUnavailable("Kafka producer not started")
        try:
            await asyncio.wait_for(self._producer.client.fetch_all_metadata(), self.request_timeout_s)
        except (KafkaError, OSError, TimeoutError) as e:
            raise translate(e, f"Kafka at {self.bootstrap} did not answer") from e

    async def publish(self, records: Sequence[Record]) -> None:
        if self._producer is None:
            raise AdapterUnavailable("Kafka producer not started")
        refused: dict[int, str] = {}
        sent: list[tuple[int, asyncio.Future[object]]] = []
        try:
            for i, r in enumerate(records):
                try:
                    future = await self._producer.send(
                        self.physical(r.topic), value=r.value, key=r.key, headers=list(r.headers)
                    )
                except KafkaError as e:
                    if isinstance(translate(e, ""), AdapterUnavailable):
                        raise
                    refused[i] = repr(e)  # refused before sending (too large): the others go on
                    continue
                sent.append((i, future))
            # return_exceptions: every failed send is looked at here, none is left "never retrieved".
            acks = await asyncio.wait_for(
                asyncio.gather(*(f for _, f in sent), return_exceptions=True), self.request_timeout_s
            )
        except (KafkaError, OSError, TimeoutError) as e:
            raise translate(e, f"Kafka did not acknowledge {len(records)} record(s)") from e
        in_doubt = []
        for (i, _), ack in zip(sent, acks, strict=True):
            if isinstance(ack, KafkaError) and isinstance(translate(ack, ""), BrokerRefused):
                refused[i] = repr(ack)
            elif isinstance(ack, BaseException):
                in_doubt.append(ack)
        if in_doubt:
            raise AdapterUnavailable(
                f"Kafka did not acknowledge {len(in_doubt)} of {len(records)} record(s): {in_doubt[0]!r}"
            )
        if refused:
            raise RecordsRefused(refused)

    async def subscribe(self, group: str, topics: Sequence[str]) -> _KafkaSubscription:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            **self.security,
            group_id=self.physical(group),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            metadata_max_age_ms=5000,
            fetch_max_wait_ms=self.fetch_max_wait_ms,
            session_timeout_ms=int(self.session_timeout_s * 1000),
            heartbeat_interval_ms=int(self.heartbeat_interval_s * 1000),
        )
        try:
            await asyncio.wait_for(consumer.start(), self.request_timeout_s)
        except (KafkaError, OSError, TimeoutError) as e:
            await consumer.stop()
            raise translate(e, f"Kafka consumer for {group} could not start") from e
        # Subscribing after start() lets the group join happen in the background of the first polls: a
        # join can outlast any request timeout while the broker waits out a departed member's session.
        consumer.subscribe([self.physical(t) for t in topics])
        subscription = _KafkaSubscription(consumer, self)
        self._subscriptions.append(subscription)
        return subscription


class _KafkaSubscription:
    def __init__(self, consumer: AIOKafkaConsumer, bus: KafkaBus) -> None:
        self._consumer = consumer
        self._bus = bus
        self._closed = False
        self._held = False
        self._lag: dict[tuple[str, int], int] = {}

    def pause(self) -> None:
        self._held = True
        self._consumer.pause(*self._consumer.assignment())

    def resume(self) -> None:
        self._held = False
        self._consumer.resume(*self._consumer.paused())

    async def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        if self._held:
            # A rebalance during the hold assigns partitions unpaused: hold them too before fetching.
            self._consumer.pause(*self._consumer.assignment())
        try:
            batches = await self._consumer.getmany(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        except KafkaError as e:
            raise translate(e, "Kafka fetch failed") from e
        records: list[Record] = []
        for tp, messages in batches.items():
            records.extend(
                Record(
                    topic=self._bus.logical(tp.topic),
                    partition=tp.partition,
                    offset=m.offset,
                    key=m.key,
                    value=m.value or b"",
                    headers=tuple((k, v or b"") for k, v in m.headers),
                    timestamp_ms=m.timestamp,
                )
                for m in messages
            )
        await self._measure_lag()
        return records

    async def commit(self, records: Sequence[Record]) -> None:
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for r in records:
            tp = TopicPartition(self._bus.physical(r.topic), r.partition)
            if tp not in offsets or offsets[tp].offset < r.offset + 1:
                offsets[tp] = OffsetAndMetadata(r.offset + 1, "")
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except CommitFailedError as e:
            # The group rebalanced under us: another member gets these records again and the inbox
            # makes the second handling a no-op.
            log.warning("offset commit lost to a rebalance", error=str(e))
        except KafkaError as e:
            raise translate(e, "Kafka offset commit failed") from e

    def lag(self) -> dict[tuple[str, int], int]:
        return dict(self._lag)

    async def _measure_lag(self) -> None:
        for tp in self._consumer.assignment():
            highwater = self._consumer.highwater(tp)
            if highwater is not None:
                self._lag[(self._bus.logical(tp.topic), tp.partition)] = max(
                    0, highwater - await self._consumer.position(tp)
                )

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._consumer.stop()
            self._bus._subscriptions.remove(self)
