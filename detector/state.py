"""Per-entity state store: recurrent states and each scoring stage's state in slot-indexed arrays.

All entities live in one ``(capacity, state_size)`` tensor plus each stage's named arrays (see
:mod:`detector.stage_state`: ``store.likelihood.fast_mean``, ``store.hysteresis.alert_open``...),
so a micro-batch gathers its entities' states with one fancy index and scatters them back with
another. An index maps entity -> slot, kept in least-recently-seen order for
eviction by TTL or capacity.

>>> store = EntityStore(state_size=4, baseline=(0.0, 1.0), max_entities=2)
>>> store.slots_for(["a", "b"], owner=0, now=0.0).tolist()
[0, 1]
>>> _ = store.slots_for(["c"], owner=0, now=1.0)    # "a" is least recently seen: evicted
>>> sorted(store.entities()), store.evictions
(['b', 'c'], {'ttl': 0, 'capacity': 1})
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import io
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from detector.stage_state import LAYOUT, StageArrays
from detector.state_payload import CheckpointError, checkpointed, load_payload

__all__ = ["CheckpointError", "EntityStore", "Snapshot", "owner_counts", "release_freed_memory", "tracked"]

# Fields added after checkpoints were first written; a checkpoint without one restores what a
# fresh entity gets, except that an open alert keeps the full hysteresis it had before evidence
# was counted (evidence 1 << 20) and the range is unknown (NaN: the entity has wandered since the
# fit, so its next message completes the fit data's range instead of being judged by it), and an
# open alert's opening time is unknown (NaN: its close carries no alert id or duration).
_RESTORED_WITHOUT = {"evidence": 1 << 20, "range_low": np.nan, "range_high": np.nan, "opened_ts": np.nan}
_CHECKPOINTED = checkpointed()


@dataclass(frozen=True)
class Snapshot:
    """Copies of some entities' states, to undo a step that failed half-way (:meth:`EntityStore.roll_back`)."""

    known: list[str]  # tracked when the snapshot was taken: their rows below
    new: list[str]  # not tracked then: forgotten on roll-back
    rnn: torch.Tensor
    rows: dict[str, np.ndarray]  # by checkpoint name


class EntityStore(StageArrays):
    """Slot-indexed states of all tracked entities (see module docstring)."""

    def __init__(
        self,
        state_size: int,
        baseline: tuple[float, float],
        max_entities: int = 1_000_000,
        ttl_s: float = float("inf"),
        capacity: int = 1024,
        n_features: int = 1,
        start_state: torch.Tensor | None = None,
        seasonal_bins: int = 0,
        start_range: tuple[np.ndarray, np.ndarray] | None = None,
        start_peak: float = 0.0,
    ):
        self.state_size = state_size
        self.max_entities, self.ttl_s = max_entities, ttl_s
        self.start_state = start_state if start_state is not None else torch.zeros(state_size)
        self.rnn = torch.zeros(capacity, state_size)
        super().__init__(capacity, n_features, seasonal_bins, baseline, start_range, start_peak)
        self._index: OrderedDict[str, int] = OrderedDict()  # least recently seen first
        self._free: list[int] = list(range(capacity - 1, -1, -1))
        self.evictions = {"ttl": 0, "capacity": 0}
        self._evicted_since_trim = 0
        self._trim_every = max(1024, max_entities // 4) if max_entities < 1_000_000_000 else 1_000_000

    def __len__(self) -> int:
        return len(self._index)

    def entities(self) -> list[str]:
        """Tracked entities, least recently seen first."""
        return list(self._index)

    def slot_of(self, entity: str) -> int | None:
        """The entity's slot, or None when it is not tracked."""
        return self._index.get(entity)

    def slots_for(self, entities: Sequence[str], owner: int | Sequence[int] | np.ndarray, now: float) -> np.ndarray:
        """Slots of ``entities`` (distinct), creating fresh states for new ones; marks them seen."""
        owners = np.broadcast_to(np.asarray(owner, dtype=np.int32), (len(entities),))
        index = self._index
        new = [e for e in entities if e not in index]
        if new:
            self._make_room(len(new), protect=entities)
            for entity in new:
                index[entity] = self._allocate()
                self._reset(index[entity])
        for entity in entities:
            index.move_to_end(entity)
        slots = np.fromiter(map(index.__getitem__, entities), dtype=np.int64, count=len(entities))
        self.bookkeeping.last_seen[slots] = now
        self.bookkeeping.owner[slots] = owners
        return slots

    def snapshot(self, entities: Iterable[str]) -> Snapshot:
        """The current states of ``entities`` (repeats allowed), to restore with :meth:`roll_back`.

        >>> store = EntityStore(state_size=2, baseline=(0.0, 1.0))
        >>> _ = store.slots_for(["a"], owner=0, now=0.0)
        >>> before = store.snapshot(["a", "b"])
        >>> store.hysteresis.steps[store.slots_for(["a", "b"], owner=0, now=1.0)] = 5
        >>> store.roll_back(before)
        >>> store.entities(), int(store.hysteresis.steps[store.slot_of("a")])
        (['a'], 0)
        """
        index = self._index
        distinct = list(dict.fromkeys(entities))
        known = [e for e in distinct if e in index]
        slots = np.fromiter(map(index.__getitem__, known), dtype=np.int64, count=len(known))
        return Snapshot(
            known,
            [e for e in distinct if e not in index],
            self.rnn[torch.from_numpy(slots)],
            {spec.checkpoint_name: self.array(spec)[slots] for spec in LAYOUT},
        )  # fancy indexing copies

    def roll_back(self, snapshot: Snapshot) -> None:
        """Put the states of a :meth:`snapshot` back: its new entities are forgotten, its known ones
        get their rows back (re-tracked if the step evicted them)."""
        for entity in snapshot.new:
            if entity in self._index:
                self._remove(entity)
        for entity in snapshot.known:
            if entity not in self._index:
                self._index[entity] = self._allocate()
        slots = np.fromiter(map(self._index.__getitem__, snapshot.known), dtype=np.int64, count=len(snapshot.known))
        self.rnn[torch.from_numpy(slots)] = snapshot.rnn
        for spec in LAYOUT:
            self.array(spec)[slots] = snapshot.rows[spec.checkpoint_name]

    def forget(self, entities: Iterable[str]) -> int:
        """Drop the states of ``entities`` (their next message starts fresh); returns how many were tracked."""
        gone = [e for e in dict.fromkeys(entities) if e in self._index]
        for entity in gone:
            self._remove(entity)
        return len(gone)

    def evict_idle(self, now: float) -> int:
        """Evict entities not seen for ``ttl_s`` seconds; returns how many."""
        evicted = 0
        while self._index:
            entity, slot = next(iter(self._index.items()))
            if now - self.bookkeeping.last_seen[slot] < self.ttl_s:
                break
            self._remove(entity)
            evicted += 1
        self.evictions["ttl"] += evicted
        self._count_evicted(evicted)
        return evicted

    def drop_owner(self, owner: int) -> int:
        """Forget every entity of ``owner`` (a revoked partition); returns how many."""
        gone = [e for e, s in self._index.items() if self.bookkeeping.owner[s] == owner]
        for entity in gone:
            self._remove(entity)
        return len(gone)

    def export(self, owner: int, tag: str = "") -> bytes:
        """Serialise the states of ``owner``'s entities (tensors and strings only, no pickle)."""
        entities = [e for e, s in self._index.items() if self.bookkeeping.owner[s] == owner]
        slots = torch.as_tensor([self._index[e] for e in entities], dtype=torch.long)
        payload = {
            "tag": tag,
            "entities": entities,
            "rnn": self.rnn[slots].clone(),
            **{
                spec.checkpoint_name: torch.from_numpy(self.array(spec)[slots.numpy()].copy()) for spec in _CHECKPOINTED
            },
        }
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        return buffer.getvalue()

    def restore(self, blob: bytes, owner: int, now: float, tag: str = "") -> int:
        """Load states written by :meth:`export` for ``owner``; raises :class:`CheckpointError`."""
        widths = {spec.checkpoint_name: self._widths[spec.width] for spec in _CHECKPOINTED}
        payload = load_payload(blob, self.state_size, tag, widths, self.max_entities)
        entities: list[str] = payload["entities"]
        slots = self.slots_for(entities, owner, now)
        self.rnn[torch.from_numpy(slots)] = payload["rnn"]
        for spec in _CHECKPOINTED:
            name = spec.checkpoint_name
            if name in payload:
                self.array(spec)[slots] = payload[name].numpy()
            else:  # a field added after the checkpoint was written
                self.array(spec)[slots] = _RESTORED_WITHOUT.get(name, self._fresh(name))
        return len(entities)

    def _make_room(self, incoming: int, protect: Sequence[str]) -> None:
        excess = len(self._index) + incoming - self.max_entities
        if excess <= 0:
            return
        protected = set(protect)
        victims: list[str] = []
        for entity in self._index:  # least recently seen first
            if entity not in protected:
                victims.append(entity)
                if len(victims) == excess:
                    break
        for entity in victims:
            self._remove(entity)
        self.evictions["capacity"] += len(victims)
        self._count_evicted(len(victims))

    def _count_evicted(self, n: int) -> None:
        """Every ``_trim_every`` evictions, hand the heap pages they freed back to the OS: freed
        entity keys and batch temporaries leave holes that glibc does not return by itself, so
        the resident memory of a store that evicts would otherwise keep growing."""
        self._evicted_since_trim += n
        if self._evicted_since_trim >= self._trim_every:
            self._evicted_since_trim = 0
            release_freed_memory()

    def _allocate(self) -> int:
        if not self._free:
            self._grow()
        return self._free.pop()

    def _grow(self) -> None:
        """Double the capacity, but never beyond ``max_entities`` slots once that is reached."""
        old = self.rnn.shape[0]
        extra = min(old, self.max_entities - old) if self.max_entities > old else old
        self.rnn = torch.cat([self.rnn, torch.zeros(extra, self.state_size)])
        self._allocate_arrays(old + extra, keep=old)
        self._free.extend(range(old + extra - 1, old - 1, -1))

    def nbytes(self) -> int:
        """Bytes held by the states: the recurrent ones and every stage's arrays."""
        return self.rnn.element_size() * self.rnn.nelement() + sum(self.array(spec).nbytes for spec in LAYOUT)

    def _reset(self, slot: int) -> None:
        self.rnn[slot] = self.start_state
        self._reset_arrays(slot)

    def _remove(self, entity: str) -> None:
        self._free.append(self._index.pop(entity))


def tracked(store: EntityStore, entities: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(positions in ``entities`` of those ``store`` tracks, their slots), without tracking any new one.

    >>> store = EntityStore(state_size=2, baseline=(0.0, 1.0))
    >>> _ = store.slots_for(["a", "b"], owner=0, now=0.0)
    >>> [array.tolist() for array in tracked(store, ["b", "x", "a"])]
    [[0, 2], [1, 0]]
    """
    index = store._index
    pairs = [(i, index[e]) for i, e in enumerate(entities) if e in index]
    positions = np.fromiter((i for i, _ in pairs), dtype=np.int64, count=len(pairs))
    return positions, np.fromiter((slot for _, slot in pairs), dtype=np.int64, count=len(pairs))


def owner_counts(store: EntityStore) -> dict[int, int]:
    """How many entities ``store`` tracks for each owner id that has any.

    >>> store = EntityStore(state_size=2, baseline=(0.0, 1.0))
    >>> _ = store.slots_for(["a", "b", "c"], owner=[3, 1, 3], now=0.0)
    >>> owner_counts(store)
    {1: 1, 3: 2}
    """
    slots = np.fromiter(store._index.values(), dtype=np.int64, count=len(store._index))
    owners, counts = np.unique(store.bookkeeping.owner[slots], return_counts=True)
    return dict(zip(owners.tolist(), counts.tolist(), strict=True))


def release_freed_memory() -> bool:
    """Return free heap memory to the OS (glibc ``malloc_trim(0)``); False where unavailable.

    >>> isinstance(release_freed_memory(), bool)
    True
    """
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
        return None
