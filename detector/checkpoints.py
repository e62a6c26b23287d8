"""Per-partition state checkpoints stored in a Kafka topic (no extra infrastructure).

A checkpoint of input partition ``topic/p`` holds the states of the entities whose messages
come from it, after every message before ``next_offset`` was applied. It is written as chunks
(keys ``<group>/<topic>/<p>/<id>/<i>``) followed by a manifest (key ``<group>/<topic>/<p>``);
the topic should be compacted, and the previous checkpoint's chunks are tombstoned. Restoring
the latest manifest and replaying from ``next_offset`` reproduces the states exactly.

During a model rollout a checkpoint holds one section of states per model version: the
manifest's ``model_version`` names the first, and ``sections`` lists ``[version, bytes]`` of
each in the order their blobs are joined (a manifest without it holds one section).

Writing does not wait: ``send`` hands the records to the producer, and a checkpoint counts
once settled, i.e. acknowledged by the broker (``settle_done`` collects those that are, without
waiting; ``settle_all`` waits). The service's periodic checkpoints travel while it goes on scoring.

>>> store = CheckpointStore(producer, "detector-checkpoints", "detector", consumer_config)  # doctest: +SKIP
>>> pending = store.send("sensors", 3, next_offset=1200, model_version="v1", blob=b"...")  # doctest: +SKIP
>>> [(p.next_offset, error) for p, error in store.settle_all()]                           # doctest: +SKIP
[(1200, None)]
>>> store.read_latest([("sensors", 3)])[("sensors", 3)].next_offset                       # doctest: +SKIP
1200
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError, KafkaTimeoutError

from detector.kafka_config import open_client

__all__ = ["Checkpoint", "CheckpointStore", "PendingWrite"]

CHUNK_BYTES = 512 * 1024
MAX_CHUNKS = 4096  # 2 GiB of states: a manifest claiming more is refused before anything is allocated
MAX_SECTIONS = 8  # model versions a manifest may list (the service restores fewer: it says why)


@dataclass(frozen=True)
class Checkpoint:
    """A restored checkpoint: the state blob and the offset it covers."""

    topic: str
    partition: int
    next_offset: int
    model_version: str
    written_at: float
    blob: bytes
    corrupt: str = ""  # why the checkpoint cannot be read, if it cannot (not JSON, chunks missing)
    invalid: str = ""  # why a readable checkpoint cannot be trusted, if it cannot (a field's type or range)
    others: tuple[tuple[str, bytes], ...] = ()  # the sections of other model versions, in order

    def sections(self) -> dict[str, bytes]:
        """State blobs by model version, ``model_version``'s first."""
        return {self.model_version: self.blob, **dict(self.others)}


@dataclass(frozen=True)
class PendingWrite:
    """A checkpoint sent to the broker (chunks, then manifest) and not yet settled."""

    topic: str
    partition: int
    next_offset: int
    size: int  # bytes of the state blob
    keys: list[str]  # its chunks' keys, tombstoned when a later checkpoint of the partition lands
    futures: list[Any]
    reason: str  # why it was written (periodic, revoke, ...), for the caller's logs
    started: float  # time.perf_counter() when the caller began it (its export included)

    @property
    def done(self) -> bool:
        """Every record acknowledged or failed: settling it will not wait."""
        return all(future.is_done for future in self.futures)


class CheckpointStore:
    """Writes and reads checkpoints on ``topic``; ``consumer_config`` carries security settings."""

    def __init__(self, producer: KafkaProducer, topic: str, group: str, consumer_config: dict[str, Any]):
        self.producer, self.topic, self.group = producer, topic, group
        self.consumer_config = consumer_config
        self._previous_chunks: dict[tuple[str, int], list[str]] = {}
        self._pending: dict[tuple[str, int], PendingWrite] = {}

    def key(self, topic: str, partition: int) -> str:
        """Manifest key of an input partition."""
        return f"{self.group}/{topic}/{partition}"

    def send(
        self,
        topic: str,
        partition: int,
        next_offset: int,
        model_version: str,
        blob: bytes,
        *,
        others: dict[str, bytes] | None = None,
        reason: str = "",
        started: float | None = None,
        timeout_s: float = 30.0,
    ) -> PendingWrite:
        """Send one checkpoint without waiting; settle it with :meth:`settle` or :meth:`settle_done`.

        ``blob`` holds the states of ``model_version``; ``others`` those of other model versions.

        An earlier checkpoint of the same partition still in flight is settled first (waiting
        for it), so a partition's checkpoints land and are tombstoned in order.
        """
        earlier = self._pending.get((topic, partition))
        if earlier is not None:
            self.settle(earlier, timeout_s)
        base, checkpoint_id = self.key(topic, partition), uuid.uuid4().hex[:12]
        sections = [(model_version, blob), *(others or {}).items()]
        blob = b"".join(part for _, part in sections)
        chunks = [blob[i : i + CHUNK_BYTES] for i in range(0, len(blob), CHUNK_BYTES)] or [b""]
        keys = [f"{base}/{checkpoint_id}/{i}" for i in range(len(chunks))]
        futures = [self.producer.send(self.topic, key=k.encode(), value=c) for k, c in zip(keys, chunks, strict=True)]
        manifest = {
            "id": checkpoint_id,
            "chunks": len(chunks),
            "next_offset": next_offset,
            "model_version": model_version,
            "written_at": time.time(),
            "bytes": len(blob),
        }
        if len(sections) > 1:
            manifest["sections"] = [[version, len(part)] for version, part in sections]
        futures.append(self.producer.send(self.topic, key=base.encode(), value=json.dumps(manifest).encode()))
        pending = PendingWrite(
            topic,
            partition,
            next_offset,
            len(blob),
            keys,
            futures,
            reason,
            time.perf_counter() if started is None else started,
        )
        self._pending[(topic, partition)] = pending
        return pending

    def settle(self, pending: PendingWrite, timeout_s: float = 30.0) -> None:
        """Wait for ``pending``'s acknowledgement; then tombstone the partition's previous chunks.

        Raises the producer's error if any record failed (the previous checkpoint stays valid).
        """
        if self._pending.get((pending.topic, pending.partition)) is pending:
            del self._pending[(pending.topic, pending.partition)]
        for future in pending.futures:
            future.get(timeout=timeout_s)
        for old in self._previous_chunks.get((pending.topic, pending.partition), []):
            self.producer.send(self.topic, key=old.encode(), value=None)  # tombstone; best effort
        self._previous_chunks[(pending.topic, pending.partition)] = pending.keys

    def settle_done(self) -> list[tuple[PendingWrite, KafkaError | None]]:
        """Settle every checkpoint in flight whose records all came back; (write, error or None)."""
        settled = []
        for pending in [p for p in self._pending.values() if p.done]:
            try:
                self.settle(pending)
                settled.append((pending, None))
            except KafkaError as error:  # the producer's failure, reported to the caller
                settled.append((pending, error))
        return settled

    def settle_all(self, timeout_s: float = 30.0) -> list[tuple[PendingWrite, KafkaError | None]]:
        """Wait up to ``timeout_s`` for every checkpoint in flight and settle it; (write, error or None).

        One not acknowledged in time is reported with a timeout error and no longer tracked.
        """
        with contextlib.suppress(KafkaError):  # whatever was not acknowledged is reported below
            self.producer.flush(timeout=timeout_s)
        settled = self.settle_done()
        for pending in list(self._pending.values()):
            del self._pending[(pending.topic, pending.partition)]
            settled.append((pending, KafkaTimeoutError(f"checkpoint not acknowledged within {timeout_s:.0f} s")))
        return settled

    def in_flight(self, topic: str, partition: int) -> PendingWrite | None:
        """The partition's checkpoint sent but not yet settled, if any."""
        return self._pending.get((topic, partition))

    def read_latest(
        self, partitions: Iterable[tuple[str, int]], timeout_s: float = 30.0
    ) -> dict[tuple[str, int], Checkpoint]:
        """Latest complete checkpoint of each ``(topic, partition)`` that has one."""
        wanted = {self.key(t, p): (t, p) for t, p in partitions}
        if not wanted:
            return {}
        manifests, chunks = self._scan(set(wanted), timeout_s)
        found = {}
        for key, manifest in manifests.items():
            topic, partition = wanted[key]
            if "error" in manifest or "invalid" in manifest:
                found[(topic, partition)] = _unusable(
                    topic, partition, corrupt=manifest.get("error", ""), invalid=manifest.get("invalid", "")
                )
                continue
            parts = [chunks.get(f"{key}/{manifest['id']}/{i}") for i in range(manifest["chunks"])]  # at most MAX_CHUNKS
            if any(part is None for part in parts):
                found[(topic, partition)] = _unusable(topic, partition, corrupt="chunks missing")
                continue
            blob = b"".join(parts)  # type: ignore[arg-type]  # no None left
            if "bytes" in manifest and len(blob) != manifest["bytes"]:
                found[(topic, partition)] = _unusable(
                    topic, partition, invalid=f"states of {len(blob)} bytes, manifest says {manifest['bytes']}"
                )
                continue
            sizes = [size for _, size in manifest.get("sections", [])]
            if sizes and sum(sizes) != len(blob):
                found[(topic, partition)] = _unusable(
                    topic, partition, invalid=f"sections of {sum(sizes)} bytes in states of {len(blob)}"
                )
                continue
            self._previous_chunks[(topic, partition)] = [
                f"{key}/{manifest['id']}/{i}" for i in range(manifest["chunks"])
            ]
            found[(topic, partition)] = _checkpoint(topic, partition, manifest, blob)
        return found

    def _scan(self, keys: set[str], timeout_s: float) -> tuple[dict[str, dict], dict[str, bytes]]:
        """Read the whole checkpoint topic; keep the last manifest per key and its chunks."""
        consumer = open_client(
            KafkaConsumer,
            **self.consumer_config,
            enable_auto_commit=False,
            group_id=None,
            max_partition_fetch_bytes=4 * CHUNK_BYTES,
        )
        try:
            partitions = [
                TopicPartition(self.topic, p) for p in sorted(consumer.partitions_for_topic(self.topic) or [])
            ]
            if not partitions:
                return {}, {}
            consumer.assign(partitions)
            consumer.seek_to_beginning(*partitions)
            manifests: dict[str, dict] = {}
            chunks: dict[str, bytes] = {}
            for record in _read_to_end(consumer, partitions, timeout_s):
                key = record.key.decode("utf-8", "replace") if record.key else ""
                if key in keys and record.value is not None:
                    manifests[key] = _manifest(record.value)
                elif key.rsplit("/", 2)[0] in keys:
                    if record.value is None:
                        chunks.pop(key, None)
                    else:
                        chunks[key] = record.value
            return manifests, chunks
        finally:
            consumer.close()


def _checkpoint(topic: str, partition: int, manifest: dict[str, Any], blob: bytes) -> Checkpoint:
    """The checkpoint a checked manifest describes, its blob cut into its sections."""
    parts, start = [], 0
    for version, size in manifest.get("sections", [[manifest["model_version"], len(blob)]]):
        parts.append((version, blob[start : start + size]))
        start += size
    return Checkpoint(
        topic,
        partition,
        manifest["next_offset"],
        manifest["model_version"],
        float(manifest["written_at"]),
        parts[0][1],
        others=tuple(parts[1:]),
    )


def _unusable(topic: str, partition: int, corrupt: str = "", invalid: str = "") -> Checkpoint:
    """A checkpoint found but not usable: why (``corrupt`` or ``invalid``), and no states."""
    return Checkpoint(topic, partition, 0, "", 0.0, b"", corrupt=corrupt, invalid=invalid)


def _manifest(value: bytes) -> dict[str, Any]:
    """A parsed manifest, ``{"error": ...}`` when it is not JSON, ``{"invalid": ...}`` when a field is off."""
    try:
        manifest = json.loads(value)
    except Exception as error:  # noqa: BLE001 - not UTF-8, not JSON, nested too deep, ...
        return {"error": f"unreadable manifest: {type(error).__name__}"}
    problem = _manifest_problem(manifest)
    return {"invalid": f"manifest: {problem}"} if problem else manifest


def _manifest_problem(manifest: Any) -> str:
    """What is wrong with a parsed manifest ("" when nothing is)."""
    if not isinstance(manifest, dict):
        return f"a JSON {type(manifest).__name__}, not an object"
    wanted: dict[str, type | tuple[type, ...]] = {
        "id": str,
        "chunks": int,
        "next_offset": int,
        "model_version": str,
        "written_at": (int, float),
    }
    for name, kind in wanted.items():
        value = manifest.get(name)
        if isinstance(value, bool) or not isinstance(value, kind):
            return f"field {name!r} is {type(value).__name__}"
    if not 0 < len(manifest["id"]) <= 64 or "/" in manifest["id"]:
        return "bad id"
    if not 1 <= manifest["chunks"] <= MAX_CHUNKS:
        return f"{manifest['chunks']} chunks (1 to {MAX_CHUNKS})"
    if manifest["next_offset"] < 0:
        return f"negative offset {manifest['next_offset']}"
    if not math.isfinite(manifest["written_at"]):
        return "written_at is not finite"
    size = manifest.get("bytes")
    if size is not None and (
        isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= manifest["chunks"] * CHUNK_BYTES
    ):
        return f"bytes {size!r} does not fit {manifest['chunks']} chunks"
    return _sections_problem(manifest)


def _sections_problem(manifest: dict[str, Any]) -> str:
    """What is wrong with a manifest's ``sections`` ("" when nothing is, or it has none)."""
    if "sections" not in manifest:
        return ""
    sections = manifest["sections"]
    if not isinstance(sections, list) or not 1 <= len(sections) <= MAX_SECTIONS:
        return f"sections must be a list of 1 to {MAX_SECTIONS} [version, bytes] pairs"
    for section in sections:
        if (
            not isinstance(section, list)
            or len(section) != 2
            or not isinstance(section[0], str)
            or not 0 < len(section[0]) <= 200
            or isinstance(section[1], bool)
            or not isinstance(section[1], int)
            or section[1] < 0
        ):
            return f"section {str(section)[:80]} is not a [version, bytes] pair"
    versions = [version for version, _ in sections]
    if versions[0] != manifest["model_version"] or len(set(versions)) != len(versions):
        return "sections must name distinct versions, model_version's first"
    return ""


def _read_to_end(consumer: KafkaConsumer, partitions: list[TopicPartition], timeout_s: float) -> Iterable[Any]:
    """Records of ``partitions`` up to their current end (robust to brokers whose end offsets lag)."""
    deadline = time.monotonic() + timeout_s
    end = consumer.end_offsets(partitions)
    quiet = 0
    while time.monotonic() < deadline:
        batch = consumer.poll(timeout_ms=200)
        for records in batch.values():
            yield from records
        at_end = all(consumer.position(tp) >= max(end[tp], consumer.highwater(tp) or 0) for tp in partitions)
        quiet = quiet + 1 if not batch else 0
        if at_end and quiet >= 2:
            return
    raise TimeoutError(f"checkpoint topic not read to its end within {timeout_s:.0f} s")
