"""The producer's partitioner puts every key where aiokafka's default (the Java client's murmur2) puts it.

Per-key order rests on one partition per key: a relay and an ingest replica, or mlcd and another producer
using the default, must agree on it.
"""

from __future__ import annotations

import random

from aiokafka.partitioner import DefaultPartitioner

from mlcd.bus.kafka import KeyHashingPartitioner


def test_every_key_lands_on_the_default_partition_also_from_the_cache() -> None:
    ours = KeyHashingPartitioner(max_keys=64)  # small, so the cache is emptied and refilled on the way
    default = DefaultPartitioner()
    draw = random.Random(16)
    keys = [f"model-{i}".encode() for i in range(300)]
    keys += [bytes(draw.randrange(256) for _ in range(draw.randrange(1, 40))) for _ in range(300)]
    for count in (1, 3, 4, 12):
        partitions = list(range(count))
        for key in keys + keys:  # the second pass answers from the cache
            assert ours(key, partitions, partitions) == default(key, partitions, partitions), key


def test_a_record_without_a_key_goes_to_an_available_partition() -> None:
    ours = KeyHashingPartitioner()
    assert {ours(None, [0, 1, 2, 3], [2]) for _ in range(20)} == {2}
