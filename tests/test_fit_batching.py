"""Fit runs its series side by side (validation, residual scale, start state, held-out scoring):
the same figures as one series at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detector.fit import _average_state, _heldout_scores, _Inputs, _reconstruct_all, _Series
from detector.model import StreamAutoencoder
from detector.schema import Observation
from detector.scoring import Detector
from detector.testing import tiny_model


def _network() -> StreamAutoencoder:
    torch.manual_seed(3)
    return StreamAutoencoder(3, 8, 1, "lstm", 4, periods=(86_400.0,), level_halflife_s=3_600.0).eval()


def _inputs(lengths: list[int]) -> list[_Inputs]:
    rng = np.random.default_rng(0)
    return [_Inputs(rng.standard_normal((n, 3)), 1_700_000_000.0 + np.cumsum(rng.uniform(30, 90, n))) for n in lengths]


def _one_at_a_time(network: StreamAutoencoder, inputs: _Inputs) -> np.ndarray:
    with torch.inference_mode():
        reconstruction, _ = network(
            torch.from_numpy(inputs.values.astype(np.float32)).unsqueeze(0),
            network.initial_state(1),
            torch.from_numpy(inputs.times).unsqueeze(0),
            torch.from_numpy(inputs.elapsed).unsqueeze(0),
        )
    return reconstruction[0].double().numpy()


def test_series_of_different_lengths_side_by_side_reconstruct_as_one_at_a_time() -> None:
    network, data = _network(), _inputs([120, 45, 300])
    together = _reconstruct_all(network, data)
    for inputs, reconstruction in zip(data, together, strict=True):
        assert reconstruction.shape == inputs.values.shape
        np.testing.assert_allclose(reconstruction, _one_at_a_time(network, inputs), rtol=1e-5, atol=1e-6)
    alone = _reconstruct_all(network, data[:1])[0]
    assert np.array_equal(alone, _one_at_a_time(network, data[0])), "a single series: the very same computation"


def test_start_state_is_the_mean_of_every_series_state_after_warm_up() -> None:
    network, data = _network(), _inputs([60, 25, 90])
    series = [_Series("e", d.values, d.times.tolist(), split=len(d.values) - 5) for d in data]
    expected, count = torch.zeros(network.state_size), 0
    with torch.inference_mode():
        for inputs, s in zip(data, series, strict=True):
            state = network.initial_state(1)
            for t in range(s.split):
                x = torch.from_numpy(inputs.values[t : t + 1].astype(np.float32))
                when, elapsed = torch.from_numpy(inputs.times[t : t + 1]), torch.from_numpy(inputs.elapsed[t : t + 1])
                _, state = network.step(x, state, when, elapsed)
                if t >= 10:
                    expected, count = expected + state[0], count + 1
    np.testing.assert_allclose(
        _average_state(network, data, series, warmup=10).numpy(), (expected / count).numpy(), rtol=1e-5, atol=1e-6
    )


def test_heldout_scores_are_the_service_steps_of_the_interleaved_series() -> None:
    model = tiny_model(("a", "b", "c"))
    rng = np.random.default_rng(1)
    series = [
        _Series(f"e{k}", rng.standard_normal((n, 3)), (1000.0 + 7.0 * k + 60.0 * np.arange(n)).tolist(), split=n - 20)
        for k, n in enumerate((50, 80, 35))
    ]
    keyed = sorted(
        (
            (i, t, Observation(f"{i}/{s.entity}", s.timestamps[t], s.values[t].tolist()))
            for i, s in enumerate(series)
            for t in range(len(s.values))
        ),
        key=lambda item: item[2].timestamp,
    )
    decisions = Detector(model, simulate_null=False).process([obs for _, _, obs in keyed])
    expected = [d.score for (i, t, _), d in zip(keyed, decisions, strict=True) if t >= series[i].split]
    assert len(expected) == 60
    assert _heldout_scores(model, series).tolist() == pytest.approx(expected, rel=0, abs=0)
