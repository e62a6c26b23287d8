"""A new model version rolled out entity by entity, with no entity left unwatched.

When the service swaps in a model of another version, the states held for the old one stay in a
*previous* Detector. Each entity with such a state is stepped by both: the new (*target*)
model's state warms up while the previous model decides the entity's messages (score,
probability, alert). After a batch in which the target's state has seen ``warmup_steps``
messages and neither model has an alert open for the entity (so each alert published is closed
by the model that opened it), its previous state is dropped and the target decides from then
on; an alert held open longer does not keep the entity past :data:`FORCE_AFTER` times the
warm-up. An entity new to every model warms
up on the target alone, as it always has. A previous Detector left without states (switched,
idle or revoked) is dropped; a checkpoint that brings its version back has it built again.

Each previous Detector steps only its own entities' rows, one batched step per batch. At most
:data:`MAX_PREVIOUS` versions are held: a rollout begun while two others are unfinished drops
the oldest one's states (``rollout.abandoned``).

>>> from detector.testing import tiny_model
>>> from detector.scoring import Detector
>>> from detector.observation import Observation
>>> old = Detector(tiny_model())
>>> _ = old.process([Observation("p1", 1.0, [0.1, 0.2])])
>>> rollout = Rollout()
>>> rollout.adopt(old)  # its states decide their entities until the new model's are warm
>>> rollout.entities(), rollout.versions()
(1, ['tiny'])
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from detector.logs import get_logger
from detector.observation import Columns
from detector.scoring import Detector, Outcomes
from detector.state import EntityStore, owner_counts, tracked

__all__ = ["FORCE_AFTER", "MAX_PREVIOUS", "Rollout"]

log = get_logger(__name__)
MAX_PREVIOUS = 2  # previous model versions held at once
FORCE_AFTER = 4  # times warmup_steps: an entity switches then even if the previous model's alert is open
_FAILURE_LOG_EVERY_S = 10.0


class Rollout:
    """The previous Detectors of a rollout in progress (by model version, oldest first), and the switch."""

    def __init__(self) -> None:
        self.previous: dict[str, Detector] = {}
        self._last_failure_log = float("-inf")

    def entities(self) -> int:
        """Entities still decided by a previous model."""
        stores = [detector.store for detector in self.previous.values()]
        if len(stores) <= 1:
            return sum(len(store) for store in stores)
        return len(set().union(*(store.entities() for store in stores)))

    def versions(self) -> list[str]:
        """The previous model versions held, oldest first."""
        return list(self.previous)

    def hand_over(self, old: Detector, new: Detector) -> None:
        """``new``, of another model version, becomes the target; ``old``'s states are previous ones.

        States of ``new``'s version still held from an earlier rollout (a rollback) go to ``new``."""
        again = self.previous.pop(new.model.version, None)
        if again is not None and len(again.store):
            _move_all(again, new)
        if len(old.store):
            self.previous.pop(old.model.version, None)  # (its states moved to ``old`` when it was the target)
            self.previous[old.model.version] = old
        for version, detector in list(self.previous.items()):  # entities whose new state is warm already
            self._switch(version, detector, new, detector.store.entities())
        self._cap()
        log.info(
            "rollout.started",
            model_version=new.model.version,
            previous_model_versions=self.versions(),
            entities_on_previous=self.entities(),
            warmup_steps=new.params.warmup_steps,
        )

    def adopt(self, detector: Detector) -> None:
        """Hold ``detector`` (a previous version whose states a checkpoint brought) as a previous one."""
        if detector.model.version not in self.previous:
            self.previous[detector.model.version] = detector
            self._cap()

    def prune(self) -> None:
        """Drop the previous Detectors that hold no states (a restore built one for an empty section)."""
        for version in [v for v, detector in self.previous.items() if not len(detector.store)]:
            del self.previous[version]

    def decide(self, target: Detector, out: Outcomes, owners: np.ndarray, now: float, drop_stale: bool) -> None:
        """Step the previous models over their entities' rows of ``out`` (which ``target`` stepped),
        let them decide those rows, and switch the entities whose target state is warm."""
        if not len(out) or not self.previous:
            return
        decided = np.zeros(len(out), dtype=bool)
        for version in reversed(list(self.previous)):  # the newest previous model decides first
            detector = self.previous.get(version)
            if detector is None:  # its last entities failed to step
                continue
            rows = _rows_held(detector.store, out)
            if not len(rows):
                continue
            theirs = self._step(detector, out.batch, rows, owners, now, drop_stale)
            if theirs is None:
                continue
            take = ~decided[rows] & ~theirs.stale
            _override(out, rows, theirs, take, (detector.model.version, detector.threshold))
            decided[rows[take]] = True
            self._switch(version, detector, target, [out.batch.entities[i] for i in rows])

    def evict_idle(self, now: float) -> None:
        """Evict idle entities from the previous states (as the target's are)."""
        for version, detector in list(self.previous.items()):
            if detector.store.evict_idle(now) and not len(detector.store):
                self._finished(version, "idle")

    def drop_owner(self, owner: int) -> None:
        """Forget ``owner``'s previous states (its partition was revoked)."""
        for version, detector in list(self.previous.items()):
            if detector.store.drop_owner(owner) and not len(detector.store):
                self._finished(version, "revoked")

    def export(self, owner: int) -> dict[str, bytes]:
        """``owner``'s previous states, one checkpoint blob per model version that holds any."""
        return {
            version: detector.store.export(owner, tag=version)
            for version, detector in self.previous.items()
            if owner_counts(detector.store).get(owner)
        }

    def _step(
        self, detector: Detector, batch: Columns, rows: np.ndarray, owners: np.ndarray, now: float, drop_stale: bool
    ) -> Outcomes | None:
        """The previous model's outcomes of ``rows``; None (and their previous states gone) if stepping fails."""
        part = Columns(
            [batch.entities[i] for i in rows],
            batch.timestamps[rows],
            batch.values[rows],
            [batch.sources[i] for i in rows] if batch.sources is not None else None,
        )
        try:
            theirs = detector.process_columns(part, owner=owners[rows], now=now, drop_stale=drop_stale)
            stepped = ~theirs.stale
            if not (np.isfinite(theirs.score[stepped]).all() and np.isfinite(theirs.probability[stepped]).all()):
                raise ValueError("the previous model gave a non-finite score")
            return theirs
        except Exception as error:  # noqa: BLE001 - a previous model's failure ends its entities' rollout, never the loop
            if time.monotonic() - self._last_failure_log >= _FAILURE_LOG_EVERY_S:
                self._last_failure_log = time.monotonic()
                log.error(
                    "rollout.step_failed",
                    model_version=detector.model.version,
                    error=f"{type(error).__name__}: {error}"[:300],
                    entities=len(set(part.entities)),
                    note="these entities are decided by the new model from now on",
                )
            if detector.store.forget(part.entities) and not len(detector.store):
                self._finished(detector.model.version, "failed")
            return None

    def _switch(self, version: str, detector: Detector, target: Detector, entities: Sequence[str]) -> None:
        """Drop the previous states of ``entities`` whose target state is warm and no alert holds them."""
        warm_at = target.params.warmup_steps
        distinct = list(dict.fromkeys(entities))
        mine, theirs = np.full(len(distinct), -1), np.full(len(distinct), -1)
        for slots, store in ((mine, target.store), (theirs, detector.store)):
            positions, found = tracked(store, distinct)
            slots[positions] = found
        both = np.flatnonzero((mine >= 0) & (theirs >= 0))
        mine, theirs = mine[both], theirs[both]
        steps = target.store.hysteresis.steps[mine]
        held = detector.store.hysteresis.alert_open[theirs] | target.store.hysteresis.alert_open[mine]
        done = both[(steps >= warm_at) & (~held | (steps >= FORCE_AFTER * max(warm_at, 1)))]
        if len(done) and detector.store.forget([distinct[i] for i in done.tolist()]) and not len(detector.store):
            self._finished(version, "switched")

    def _cap(self) -> None:
        """Drop the oldest previous models beyond :data:`MAX_PREVIOUS`."""
        while len(self.previous) > MAX_PREVIOUS:
            version = next(iter(self.previous))
            dropped = self.previous.pop(version)
            log.warning(
                "rollout.abandoned",
                model_version=version,
                entities=len(dropped.store),
                note=f"at most {MAX_PREVIOUS} previous models are held; these entities warm up on the new model",
            )

    def _finished(self, version: str, how: str) -> None:
        """``version`` holds no states any more: drop it."""
        del self.previous[version]
        log.info("rollout.finished", previous_model_version=version, last_entities=how)


def _rows_held(store: EntityStore, out: Outcomes) -> np.ndarray:
    """Positions of ``out`` that were stepped and whose entity has a state in ``store``."""
    positions, _ = tracked(store, out.batch.entities)
    return positions[~out.stale[positions]]


def _override(out: Outcomes, rows: np.ndarray, theirs: Outcomes, take: np.ndarray, decider: tuple[str, float]) -> None:
    """Put ``theirs`` (outcomes of ``rows``) in place of ``out``'s where ``take``; their events are
    marked as decided by ``decider`` (model version, alert level)."""
    mine, taken = rows[take], np.flatnonzero(take)
    out.score[mine], out.probability[mine] = theirs.score[take], theirs.probability[take]
    out.is_anomaly[mine] = theirs.is_anomaly[take]
    # events, features and opening times: only where either side has one
    marked = {j for j, event in enumerate(theirs.events) if event} | set(theirs.top_features) | set(theirs.opened_at)
    at = {int(i): int(j) for i, j in zip(mine, taken, strict=True)}
    mine_marked = {i for i in at if out.events[i] or i in out.top_features or i in out.opened_at}
    for i in sorted(mine_marked | {i for i, j in at.items() if j in marked}):
        j = at[i]
        out.events[i] = theirs.events[j]
        _put(out.top_features, i, theirs.top_features.get(j))
        _put(out.opened_at, i, theirs.opened_at.get(j))
        _put(out.decided_by, i, decider if theirs.events[j] else None)


def _put(into: dict, key: int, value: object) -> None:
    if value is None:
        into.pop(key, None)
    else:
        into[key] = value


def _move_all(source: Detector, target: Detector) -> None:
    """Every entity state of ``source`` into ``target`` (two detectors of one model version)."""
    tag, now = source.model.version, time.time()
    for owner in owner_counts(source.store):
        target.store.restore(source.store.export(owner, tag=tag), owner, now, tag=tag)
