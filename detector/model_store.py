"""Each instance's model in the checkpoint topic, so any member can load the model a state belongs to.

A checkpoint section of model version V is restored with model V (:mod:`detector.rollout`). After
a kill -9 during a rollout the model directory holds only the new model, and in a group whose
members run different versions a partition may arrive with states of a model this member never
loaded. So every instance publishes the model it scores with, once per version, to the
checkpoint topic: the files ``detector fit`` writes, as one blob under the key
``<group>/#model/<version>/0`` (chunked and tombstoned like a checkpoint; a topic name cannot hold
``#``, so no partition's key is taken). Another member reads it back into a temporary directory
and loads it with :func:`~detector.model.load_model`, which checks it as any model directory is
checked, its features against this instance's.

A fetched model decides with the scoring values stored in it. Models fetched are kept (at most
:data:`~detector.rollout.MAX_PREVIOUS`); a version that cannot be had is not asked for again
for :data:`RETRY_AFTER_S`.

>>> models = ModelStore(CheckpointStore(producer, topic, group, config), build, features)  # doctest: +SKIP
>>> models.publish(detector.model)          # once per version                           # doctest: +SKIP
>>> previous = models.detector("3f2a9c1b")  # ModelUnavailable if it cannot be had       # doctest: +SKIP
"""

from __future__ import annotations

import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from kafka.errors import KafkaError

from detector.checkpoints import CheckpointStore
from detector.logs import get_logger
from detector.model import META_FILE, WEIGHTS_FILE, FittedModel, ModelError, load_model, save_model
from detector.partition_states import ModelUnavailable
from detector.rollout import MAX_PREVIOUS
from detector.scoring import Detector

__all__ = ["RETRY_AFTER_S", "ModelStore", "pack", "unpack"]

log = get_logger(__name__)
RETRY_AFTER_S = 60.0
_LENGTH_BYTES = 8


def pack(directory: Path) -> bytes:
    """The model files of ``directory`` as one blob: the metadata's length, the metadata, the weights."""
    meta, weights = (directory / META_FILE).read_bytes(), (directory / WEIGHTS_FILE).read_bytes()
    return len(meta).to_bytes(_LENGTH_BYTES, "big") + meta + weights


def unpack(blob: bytes, directory: Path) -> Path:
    """Write the model files of a :func:`pack` blob to ``directory``; :class:`ModelError` if it is not one."""
    length = int.from_bytes(blob[:_LENGTH_BYTES], "big")
    if len(blob) < _LENGTH_BYTES or not 0 < length <= len(blob) - _LENGTH_BYTES:
        raise ModelError(f"a published model of {len(blob)} bytes is not a packed model directory")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / META_FILE).write_bytes(blob[_LENGTH_BYTES : _LENGTH_BYTES + length])
    (directory / WEIGHTS_FILE).write_bytes(blob[_LENGTH_BYTES + length :])
    return directory


def _topic(version: str) -> str:
    """The pseudo-topic whose partition 0 is the model's key in the checkpoint topic."""
    return f"#model/{version}"


class ModelStore:
    """Publishes models to the checkpoint topic and builds Detectors of models fetched from it.

    ``build`` makes a Detector of a model (the service bounds its store); ``features`` are the
    ones this instance decodes, which a fetched model must have, in that order.
    """

    def __init__(self, store: CheckpointStore, build: Callable[[FittedModel], Detector], features: list[str]):
        self.store, self.build, self.features = store, build, list(features)
        self.published: set[str] = set()
        self._models: OrderedDict[str, FittedModel] = OrderedDict()
        self._missing: dict[str, tuple[float, str]] = {}  # version -> (when, why) it could not be had

    def publish(self, model: FittedModel, timeout_s: float = 30.0) -> bool:
        """Write ``model`` to the topic unless this instance did; False (logged) if the broker refused it."""
        if model.version in self.published:
            return True
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="detector-model-") as directory:
            blob = pack(save_model(model, Path(directory)))
        try:
            pending = self.store.send(_topic(model.version), 0, 0, model.version, blob, reason="model")
            self.store.settle(pending, timeout_s)
        except KafkaError as error:
            log.error(
                "model.publish_failed",
                model_version=model.version,
                error=repr(error),
                note="another member cannot restore this model's states until it is published",
            )
            return False
        self.published.add(model.version)
        self._missing.pop(model.version, None)
        log.info(
            "model.published",
            model_version=model.version,
            bytes=len(blob),
            seconds=round(time.perf_counter() - started, 3),
        )
        return True

    def detector(self, version: str) -> Detector:
        """A Detector of model ``version`` fetched from the topic; :class:`ModelUnavailable` if it cannot be had."""
        model = self._models.get(version)
        if model is None:
            model = self._fetch(version)
            self._models[version] = model
            while len(self._models) > MAX_PREVIOUS:
                self._models.popitem(last=False)
        return self.build(model)

    def _fetch(self, version: str) -> FittedModel:
        missing = self._missing.get(version)
        if missing is not None and time.monotonic() - missing[0] < RETRY_AFTER_S:
            raise ModelUnavailable(missing[1])
        try:
            model = self._read(version)
        except ModelUnavailable as error:
            self._missing[version] = (time.monotonic(), str(error))
            log.warning("model.unavailable", model_version=version, reason=str(error))
            raise
        log.info("model.fetched", model_version=version)
        return model

    def _read(self, version: str) -> FittedModel:
        try:
            found = self.store.read_latest([(_topic(version), 0)]).get((_topic(version), 0))
        except (KafkaError, TimeoutError) as error:
            raise ModelUnavailable(f"model {version} could not be read: {error!r}") from None
        if found is None:
            raise ModelUnavailable(f"model {version} was never published to the checkpoint topic")
        if found.corrupt or found.invalid:
            raise ModelUnavailable(f"model {version} in the checkpoint topic: {found.corrupt or found.invalid}")
        with tempfile.TemporaryDirectory(prefix="detector-model-") as directory:
            try:
                model = load_model(unpack(found.blob, Path(directory)), self.features)
            except ModelError as error:
                raise ModelUnavailable(str(error)) from None
        if model.version != version:
            raise ModelUnavailable(f"the model published as {version} is version {model.version}")
        return model
