"""The entity states of each owned partition, and the one place the running Detector is held.

Every input partition is an owner id in the Detector's :class:`~detector.state.EntityStore`, so a
partition's entity states are exported, restored and dropped together when it is checkpointed,
assigned or revoked. Holding the Detector here alone lets the service swap it between batches
(:meth:`PartitionStates.replace`) without any collaborator keeping a stale one.

>>> from detector.testing import tiny_model
>>> from detector.scoring import Detector
>>> states = PartitionStates(Detector(tiny_model()))
>>> states.owner(TopicPartition("sensors", 3)), states.owner(TopicPartition("sensors", 1))
(1, 2)
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from kafka import TopicPartition

from detector.logs import get_logger
from detector.reload import carry_states
from detector.scoring import Detector
from detector.state import CheckpointError

__all__ = ["PartitionStates"]

log = get_logger(__name__)


class PartitionStates:
    """Owner ids of the partitions, and their states in the current Detector."""

    def __init__(self, detector: Detector):
        self.detector = detector
        self._owners: dict[TopicPartition, int] = {}  # kept after a revoke: a partition keeps its id
        self._offered: Detector | None = None  # handed over by another thread (a reload)

    @property
    def model_version(self) -> str:
        """Version of the model the states belong to (checkpoints carry it)."""
        return self.detector.model.version

    def replace(self, detector: Detector) -> bool:
        """Score with ``detector`` from the next batch on; its store holds the states from then.

        Of the same model version it takes over every partition's entity states (checked as a
        restore is; if they do not carry over, the current detector stays: False); of another, they
        start fresh.
        """
        if detector.model.version == self.model_version:
            try:
                carry_states(self.detector, detector, sorted(set(self._owners.values())))
            except Exception as error:  # noqa: BLE001 - a reload must never stop the loop: the old detector goes on
                log.error("reload.swap_failed", error=repr(error)[:300], note="the previous detector goes on")
                return False
        self.detector = detector
        return True

    def offer(self, detector: Detector) -> None:
        """Hand ``detector`` over from any thread; the loop takes it with :meth:`take_offer`."""
        self._offered = detector

    def take_offer(self) -> Detector | None:
        """The Detector offered since the last call, if any."""
        detector, self._offered = self._offered, None
        return detector

    def owner(self, tp: TopicPartition) -> int:
        """The owner id of ``tp``'s entities in the store (given on first use)."""
        return self._owners.setdefault(tp, len(self._owners) + 1)

    def owners(self, partitions: Sequence[TopicPartition]) -> np.ndarray:
        """Owner ids of ``partitions``, in order."""
        return np.fromiter((self._owners[tp] for tp in partitions), dtype=np.int32, count=len(partitions))

    def export(self, tp: TopicPartition) -> bytes:
        """``tp``'s states as a checkpoint blob."""
        return self.detector.store.export(self._owners[tp], tag=self.model_version)

    def restore(self, tp: TopicPartition, blob: bytes) -> int:
        """Load ``tp``'s states from ``blob``; the number of entities restored.

        Raises :class:`~detector.state.CheckpointError` for a blob that does not check out; on
        any other failure none of the partition's states stays and the error is raised.
        """
        owner = self.owner(tp)
        try:
            return self.detector.store.restore(blob, owner, time.time(), tag=self.model_version)
        except CheckpointError:
            raise  # refused before anything was loaded
        except Exception:
            self.detector.store.drop_owner(owner)
            raise

    def drop(self, tp: TopicPartition) -> None:
        """Drop ``tp``'s states (it was revoked)."""
        if tp in self._owners:
            self.detector.store.drop_owner(self._owners[tp])
