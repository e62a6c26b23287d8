"""The entity states of each owned partition, and the one place the running Detector is held.

Every input partition is an owner id in the Detector's :class:`~detector.state.EntityStore`, so a
partition's entity states are exported, restored and dropped together when it is checkpointed,
assigned or revoked. Holding the Detector here alone lets the service swap it between batches
(:meth:`PartitionStates.replace`) without any collaborator keeping a stale one.

During a rollout (:mod:`detector.rollout`) a partition's states are those of the target model
and those of the previous models that still decide some of its entities: one checkpoint section
per model version. A section of a version this instance does not hold is restored with that
model fetched by :attr:`PartitionStates.models` (see :mod:`detector.model_store`); one that
cannot be is skipped, with the reason.

>>> from detector.testing import tiny_model
>>> from detector.scoring import Detector
>>> states = PartitionStates(Detector(tiny_model()))
>>> states.owner(TopicPartition("sensors", 3)), states.owner(TopicPartition("sensors", 1))
(1, 2)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from kafka import TopicPartition

from detector.logs import get_logger
from detector.reload import carry_states
from detector.rollout import MAX_PREVIOUS, Rollout
from detector.scoring import Detector, Outcomes
from detector.state import CheckpointError

__all__ = ["ModelUnavailable", "PartitionStates", "Restored"]

log = get_logger(__name__)


class ModelUnavailable(LookupError):
    """The model of a checkpoint section's version cannot be had: the section is skipped."""


@dataclass
class Restored:
    """What a partition's restore loaded: entities per model version, and the sections skipped (why)."""

    entities: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.entities.values())


class PartitionStates:
    """Owner ids of the partitions, and their states in the current Detector and a rollout's previous ones.

    ``models`` (set once the service is connected) gives a Detector for a model version this
    instance does not hold, or raises :class:`ModelUnavailable`.
    """

    def __init__(self, detector: Detector):
        self.detector = detector
        self.rollout = Rollout()
        self.models: Callable[[str], Detector] | None = None
        self._owners: dict[TopicPartition, int] = {}  # kept after a revoke: a partition keeps its id
        self._offered: Detector | None = None  # handed over by another thread (a reload)

    @property
    def model_version(self) -> str:
        """Version of the target model (the first checkpoint section's)."""
        return self.detector.model.version

    def replace(self, detector: Detector) -> bool:
        """Score with ``detector`` from the next batch on; its store holds the states from then.

        Of the same model version it takes over every partition's entity states (checked as a
        restore is; if they do not carry over, the current detector stays: False); of another, a
        rollout starts: the current states decide their entities until the new ones are warm.
        """
        if detector.model.version == self.model_version:
            try:
                carry_states(self.detector, detector, sorted(set(self._owners.values())))
            except Exception as error:  # noqa: BLE001 - a reload must never stop the loop: the old detector goes on
                log.error("reload.swap_failed", error=repr(error)[:300], note="the previous detector goes on")
                return False
        else:
            self.rollout.hand_over(self.detector, detector)
        self.detector = detector
        return True

    def decide(self, outcomes: Outcomes, owners: np.ndarray, drop_stale: bool) -> None:
        """After the Detector stepped a batch (``outcomes``): let a rollout's previous models decide
        their entities' messages (:meth:`Rollout.decide`)."""
        self.rollout.decide(self.detector, outcomes, owners, time.time(), drop_stale)

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

    def export(self, tp: TopicPartition) -> dict[str, bytes]:
        """``tp``'s states as checkpoint sections by model version, the target's first."""
        owner = self._owners[tp]
        return {self.model_version: self.detector.store.export(owner, tag=self.model_version)} | self.rollout.export(
            owner
        )

    def restore(self, tp: TopicPartition, sections: dict[str, bytes]) -> Restored:
        """Load ``tp``'s states from checkpoint ``sections`` (blobs by model version).

        A section whose model cannot be had is skipped (:attr:`Restored.skipped`). Raises
        :class:`~detector.state.CheckpointError` for a section that does not check out, and then,
        as on any other failure, none of the partition's states stays.
        """
        owner, now, restored = self.owner(tp), time.time(), Restored()
        if len(sections) > 1 + MAX_PREVIOUS:
            raise CheckpointError(f"checkpoint holds {len(sections)} model versions, at most {1 + MAX_PREVIOUS}")
        try:
            for version, blob in sections.items():
                try:
                    detector = self._detector_for(version)
                except ModelUnavailable as error:
                    restored.skipped[version] = str(error)
                    continue
                restored.entities[version] = detector.store.restore(blob, owner, now, tag=version)
        except Exception:
            self.drop(tp)
            raise
        finally:
            self.rollout.prune()
        return restored

    def drop(self, tp: TopicPartition) -> None:
        """Drop ``tp``'s states (it was revoked)."""
        if tp in self._owners:
            self.detector.store.drop_owner(self._owners[tp])
            self.rollout.drop_owner(self._owners[tp])

    def _detector_for(self, version: str) -> Detector:
        """The Detector holding states of model ``version``: the target, a previous one, or one built for it."""
        if version == self.model_version:
            return self.detector
        if version in self.rollout.previous:
            return self.rollout.previous[version]
        if self.models is None:
            raise ModelUnavailable(f"model {version} is not held by this instance")
        detector = self.models(version)
        self.rollout.adopt(detector)
        log.info(
            "rollout.started",
            model_version=self.model_version,
            previous_model_versions=self.rollout.versions(),
            reason=f"a checkpoint holds states of model {version}",
            warmup_steps=self.detector.params.warmup_steps,
        )
        return detector
