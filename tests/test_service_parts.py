"""The parts of the streaming service, each on its own: offsets, batches, partition states, checkpoints.

The service as a whole is tested through `detector run` (test_stream.py, tests/faults); these
tests pin the rules of each part where a failure is easiest to read.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from kafka import KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from detector.batch import Batch, Fetched
from detector.checkpointing import CheckpointScheduler
from detector.checkpoints import CheckpointStore
from detector.config import Settings
from detector.metrics import Metrics
from detector.offsets import Positions
from detector.partition_states import PartitionStates
from detector.schema import Observation
from detector.scoring import Detector
from detector.stream import Service
from detector.testing import tiny_model

P0, P1 = TopicPartition("sensors", 0), TopicPartition("sensors", 1)


def _record(tp: TopicPartition, offset: int, value: bytes = b"{}", key: bytes | None = None) -> ConsumerRecord:
    return ConsumerRecord(tp.topic, tp.partition, -1, offset, 0, 0, key, value, [], None, -1, len(value), -1)


def _observations(entity: str, start: float, n: int) -> list[Observation]:
    return [Observation(entity, start + i, [float(i % 3), float(i % 5)]) for i in range(n)]


# --- offsets -------------------------------------------------------------------------------------


def test_a_replaying_partition_never_commits_below_its_committed_offset():
    positions = Positions()
    positions.start(P0, 100, replay_until=150)
    positions.advance({P0: 120})
    assert positions.committable([P0]) == {}, "121 would move the committed 150 back"
    assert not positions.is_live(P0, 149) and positions.is_live(P0, 150)
    positions.advance({P0: 160})
    assert positions.committable([P0]) == {P0: 161}
    assert positions.finish_replays() == [P0] and not positions.replaying


def test_a_failed_commit_is_retried_with_the_next_one_and_never_lowered():
    positions = Positions()
    positions.start(P0, 0)
    positions.start(P1, 0)
    positions.advance({P0: 9})
    failed = positions.committable([P0])
    positions.commit_failed(failed)
    positions.advance({P1: 4})
    assert positions.committable([P1]) == {P0: 10, P1: 5}, "the failed offset of P0 rides with P1's commit"
    assert positions.committable([P1]) == {P1: 5}, "taken once; a second failure hands it back"
    positions.commit_failed({P0: 10})
    positions.commit_failed({P0: 7})
    assert positions.committable([]) == {P0: 10}


def test_a_forgotten_partition_is_neither_advanced_nor_committed():
    positions = Positions()
    positions.start(P0, 0)
    positions.commit_failed({P0: 5})
    positions.forget(P0)
    positions.advance({P0: 20})
    assert P0 not in positions and positions.committable([P0]) == {}


# --- batches -------------------------------------------------------------------------------------


def test_a_batch_lines_partitions_up_and_tells_new_from_replayed_records():
    positions = Positions()
    positions.start(P0, 10, replay_until=12)
    positions.start(P1, 0)
    fetched = [
        Fetched(P0, [_record(P0, offset) for offset in (10, 11, 12)], epoch=1),
        Fetched(P1, [_record(P1, 0, key=b"k")], epoch=1),
    ]
    batch = Batch(fetched, positions)
    assert len(batch) == 4 and batch.keys == [None, None, None, b"k"]
    assert batch.live.tolist() == [False, False, True, True]
    assert batch.last_offsets() == {P0: 12, P1: 0}
    assert batch.partitions == {P0, P1}
    assert (batch.source(3).partition, batch.source(3).offset) == (1, 0)
    states = PartitionStates(Detector(tiny_model()))
    owners = states.owner(P1), states.owner(P0)
    assert batch.owners(states).tolist() == [owners[1]] * 3 + [owners[0]]


# --- partition states and the detector -----------------------------------------------------------


def test_a_partitions_states_restore_exactly_into_another_detector():
    before = PartitionStates(Detector(tiny_model()))
    before.detector.process(_observations("pump-1", 1e9, 30), owner=before.owner(P0))
    before.detector.process(_observations("pump-2", 1e9, 30), owner=before.owner(P1))
    after = PartitionStates(Detector(tiny_model()))
    assert after.restore(P0, before.export(P0)).total == 1, "only P0's entity"
    following = Observation("pump-1", 1e9 + 30, [2.5, -1.0])
    expected = before.detector.process([following], owner=before.owner(P0))[0]
    got = after.detector.process([following], owner=after.owner(P0))[0]
    assert (got.score, got.probability) == (expected.score, expected.probability)
    after.drop(P0)
    assert len(after.detector.store) == 0


def test_replace_detector_scores_the_next_batch_with_the_new_one():
    service = Service(Settings(), tiny_model())
    replacement = Detector(tiny_model(seed=1))
    service.replace_detector(replacement)
    assert service.detector is replacement and service.states.detector is replacement
    raw = b'{"entity": "p1", "timestamp": 1e9, "values": {"a": 1, "b": 2}}'
    guarded = service.guard.score([raw], [None], np.zeros(1, dtype=np.int32))
    assert guarded.accepted.tolist() == [0]
    assert replacement.store.entities() == ["p1"], "the message was scored by the replacement"


# --- checkpoint scheduling (against the broker) --------------------------------------------------


@pytest.fixture
def scheduler(kafka_bootstrap, topic_factory):
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=5)
    store = CheckpointStore(producer, topic_factory(1), "group-a", {"bootstrap_servers": kafka_bootstrap})
    states = PartitionStates(Detector(tiny_model()))
    for tp in (P0, P1):
        states.detector.process(_observations(f"pump-{tp.partition}", 1e9, 5), owner=states.owner(tp))
    yield CheckpointScheduler(store, Positions(), states, Metrics(), interval_s=0.0)
    producer.close(timeout=5)


def _latest(scheduler: CheckpointScheduler, tp: TopicPartition) -> int | None:
    found = scheduler.store.read_latest([(tp.topic, tp.partition)]).get((tp.topic, tp.partition))
    return None if found is None else found.next_offset


@pytest.mark.kafka
def test_a_held_back_partition_keeps_its_last_checkpoint(scheduler):
    scheduler.positions.start(P0, 10)
    scheduler.checkpoint_now([P0], reason="initial")
    assert scheduler.checkpointed == {P0: 10} and _latest(scheduler, P0) == 10
    scheduler.hold_back([P0])
    scheduler.positions.advance({P0: 19})
    scheduler.checkpoint_now([P0], reason="shutdown")
    assert _latest(scheduler, P0) == 10, "states ahead of unacknowledged outputs are never stored"


@pytest.mark.kafka
def test_periodic_checkpoints_go_one_partition_per_tick_in_partition_order(scheduler):
    scheduler.positions.start(P0, 3)
    scheduler.positions.start(P1, 4)
    scheduler.tick({P0, P1})
    assert scheduler.store.in_flight(P0.topic, 0) is not None and scheduler.store.in_flight(P1.topic, 1) is None
    deadline = time.monotonic() + 20
    while scheduler.checkpointed != {P0: 3, P1: 4} and time.monotonic() < deadline:
        scheduler.tick({P0, P1})
        time.sleep(0.05)
    assert scheduler.checkpointed == {P0: 3, P1: 4}
    assert (_latest(scheduler, P0), _latest(scheduler, P1)) == (3, 4)
