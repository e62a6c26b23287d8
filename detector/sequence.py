"""The sequence path: the recurrent network over each entity's rows in one call.

When a batch holds many rows per entity (a file, the held-out part of a fit), stepping the
network once per wave of distinct entities costs a call per row. Here each entity's rows become
one sequence; sequences of similar length are padded into groups and run through
:meth:`StreamAutoencoder.forward` together, in windows of at most ``window`` steps so memory stays
bounded whatever the file's length. The network sees what its step would see: the same inputs,
elapsed times and tracked levels, in the same order.
"""

from __future__ import annotations

import numpy as np
import torch

from detector.model import StreamAutoencoder, window_levels

__all__ = ["reconstruct_sequences"]

_GROUP_ROWS = 1 << 20  # padded rows (entities x steps) per forward call: bounds the memory of one call


def reconstruct_sequences(
    network: StreamAutoencoder,
    states: torch.Tensor,
    standardised: np.ndarray,
    groups: np.ndarray,
    timestamps: np.ndarray,
    elapsed: np.ndarray,
    window: int = 1 << 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(reconstruction of each row, each entity's new state). Row i belongs to entity
    ``groups[i]`` (an index into ``states``, one row per entity), rows of an entity in time order;
    an entity without rows keeps its state."""
    n, features = standardised.shape
    counts = np.bincount(groups, minlength=len(states))
    order = np.argsort(groups, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    reconstruction = torch.empty(n, features)
    states = states.clone()
    by_length = np.argsort(-counts, kind="stable")
    by_length = by_length[counts[by_length] > 0]
    for batch in _padded_groups(counts[by_length]):
        members = by_length[batch]
        for start in range(0, int(counts[members[0]]), window):
            active = members[counts[members] > start]
            lengths = np.minimum(counts[active] - start, window)
            _run_window(
                network,
                states,
                reconstruction,
                standardised,
                timestamps,
                elapsed,
                order,
                starts,
                active,
                start,
                lengths,
            )
    return reconstruction, states


def _padded_groups(lengths: np.ndarray) -> list[np.ndarray]:
    """Split entities sorted by decreasing length into groups whose padded size stays within
    ``_GROUP_ROWS`` (at least one entity each)."""
    groups, first = [], 0
    while first < len(lengths):
        last = first + 1
        while last < len(lengths) and (last + 1 - first) * lengths[first] <= _GROUP_ROWS:
            last += 1
        groups.append(np.arange(first, last))
        first = last
    return groups


def _run_window(
    network: StreamAutoencoder,
    states: torch.Tensor,
    reconstruction: torch.Tensor,
    standardised: np.ndarray,
    timestamps: np.ndarray,
    elapsed: np.ndarray,
    order: np.ndarray,
    starts: np.ndarray,
    entities: np.ndarray,
    start: int,
    lengths: np.ndarray,
) -> None:
    """Run ``entities``' steps ``start`` to ``start + lengths`` through the network as one padded
    batch: their reconstructions into ``reconstruction``, their new states into ``states``."""
    steps = int(lengths.max())
    entity_of = np.repeat(np.arange(len(entities)), lengths)
    step_of = np.arange(len(entity_of)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    rows = order[starts[entities][entity_of] + start + step_of]  # the batch's rows, entity by entity
    x = np.zeros((len(entities), steps, standardised.shape[1]), dtype=np.float32)
    when, gaps = np.zeros((len(entities), steps)), np.zeros((len(entities), steps))
    x[entity_of, step_of], when[entity_of, step_of], gaps[entity_of, step_of] = (
        standardised[rows],
        timestamps[rows],
        elapsed[rows],
    )
    index = torch.from_numpy(entities)
    x_t, gaps_t = torch.from_numpy(x), torch.from_numpy(gaps)
    with torch.inference_mode():
        levels = window_levels(network, x_t, states[index], gaps_t)
        output, new_states = network.forward(
            x_t,
            states[index],
            torch.from_numpy(when),
            gaps_t,
            None if (lengths == steps).all() else torch.from_numpy(lengths),
            levels,
        )
    states[index] = new_states
    reconstruction[torch.from_numpy(rows)] = output[torch.from_numpy(entity_of), torch.from_numpy(step_of)]
