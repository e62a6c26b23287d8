"""The checkpoint payload of an :class:`detector.state.EntityStore`: what a restored blob must
hold before anything in it is trusted.

A payload is a dict of tensors and strings (no pickle): ``tag``, ``entities``, ``rnn`` and one
tensor per checkpointed array of :data:`detector.stage_state.LAYOUT`, by its checkpoint name.
"""

from __future__ import annotations

import io
import math

import torch

from detector.stage_state import LAYOUT, ArraySpec

__all__ = ["CheckpointError", "checkpointed", "load_payload", "payload_problem"]


class CheckpointError(ValueError):
    """A checkpoint blob that cannot be restored: ``reason`` is ``corrupt`` (unreadable) or
    ``invalid`` (readable, but not states of this model that can be trusted)."""

    def __init__(self, message: str, reason: str = "invalid"):
        super().__init__(message)
        self.reason = reason


def checkpointed() -> list[ArraySpec]:
    """The arrays a checkpoint holds (all but the store's bookkeeping)."""
    return [spec for spec in LAYOUT if spec.checkpointed]


def load_payload(blob: bytes, state_size: int, tag: str, widths: dict[str, tuple[int, ...]], max_entities: int) -> dict:
    """The checkpoint's tensors, checked against this store (``state_size``, ``tag``, the ``widths``
    of its two-dimensional fields, ``max_entities``) and for values no state can hold (NaN, a
    negative count); raises :class:`CheckpointError`. Nothing is trusted before it is checked."""
    try:
        payload = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  (any unreadable blob, whatever torch raises: corrupt)
        raise CheckpointError(f"corrupt checkpoint: {type(error).__name__}: {str(error)[:200]}", "corrupt") from None
    problem = payload_problem(payload, state_size, tag, widths, max_entities)
    if problem:
        raise CheckpointError(problem, "invalid")
    return payload


def payload_problem(
    payload: object, state_size: int, tag: str, widths: dict[str, tuple[int, ...]], max_entities: int
) -> str:
    """What makes a loaded checkpoint unusable ("" when nothing does)."""
    if not isinstance(payload, dict):
        return f"checkpoint is a {type(payload).__name__}, not a dict"
    if payload.get("tag", "") != tag:
        return f"checkpoint is for {payload.get('tag')!r}, not {tag!r}"
    entities = payload.get("entities")
    if (
        not isinstance(entities, list)
        or not all(isinstance(e, str) for e in entities)
        or len(set(entities)) != len(entities)
    ):
        return "checkpoint entities are not a list of distinct names"
    if len(entities) > max_entities:
        return f"checkpoint holds {len(entities)} entities, more than max_entities ({max_entities})"
    rnn = payload.get("rnn")
    if (
        not isinstance(rnn, torch.Tensor)
        or rnn.ndim != 2
        or rnn.shape[1] != state_size
        or rnn.shape[0] != len(entities)
    ):
        return f"checkpoint shapes do not match this model (state size {state_size})"
    if not torch.isfinite(rnn).all():
        return "checkpoint recurrent states are not finite"
    for spec in checkpointed():
        name = spec.checkpoint_name
        value = payload.get(name)
        if value is None and spec.added_later:
            continue
        if not isinstance(value, torch.Tensor) or value.ndim < 1 or value.shape[0] != len(entities):
            return f"checkpoint field {name} is missing or not one row per entity"
        if tuple(value.shape[1:]) != widths.get(name, ()):
            return f"checkpoint field {name} has shape {tuple(value.shape[1:])}, this model {widths.get(name, ())}"
        if spec.finite and not torch.isfinite(value).all():
            return f"checkpoint field {name} is not finite"
        if spec.non_negative and (value < 0).any():
            return f"checkpoint field {name} is negative"
        if name == "last_ts" and (value.isnan() | (value == math.inf)).any():
            return "checkpoint field last_ts is NaN or infinite"
        if name == "opened_ts" and value.isinf().any():  # NaN: no alert open, or its opening unknown
            return "checkpoint field opened_ts is infinite"
    return ""
