import io
import pickle

import numpy as np
import pytest
import torch

from detector.model import ModelError, StreamAutoencoder, load_model, save_model
from detector.testing import tiny_model


@pytest.mark.parametrize(("cell", "layers"), [("lstm", 1), ("lstm", 2), ("gru", 1), ("gru", 2)])
def test_fused_window_equals_step_by_step(cell, layers):
    torch.manual_seed(0)
    net = StreamAutoencoder(3, hidden_size=6, num_layers=layers, cell=cell, bottleneck=2).eval()
    x = torch.randn(4, 9, 3)
    state0 = torch.randn(4, net.state_size) * 0.1
    fused, fused_state = net(x, state0)
    state, steps = state0, []
    for t in range(9):
        recon, state = net.step(x[:, t], state)
        steps.append(recon)
    assert torch.allclose(fused, torch.stack(steps, dim=1), atol=1e-6)
    assert torch.allclose(fused_state, state, atol=1e-6)


def test_level_tracking_fused_equals_step_by_step_and_needs_elapsed():
    torch.manual_seed(0)
    net = StreamAutoencoder(3, hidden_size=6, num_layers=1, cell="lstm", bottleneck=2, level_halflife_s=600.0).eval()
    x = torch.randn(4, 9, 3)
    elapsed = torch.rand(4, 9, dtype=torch.float64) * 300.0
    state0 = torch.randn(4, net.state_size) * 0.1
    fused, fused_state = net(x, state0, elapsed=elapsed)
    state, steps = state0, []
    for t in range(9):
        recon, state = net.step(x[:, t], state, elapsed=elapsed[:, t])
        steps.append(recon)
    assert torch.allclose(fused, torch.stack(steps, dim=1), atol=1e-6)
    assert torch.allclose(fused_state, state, atol=1e-6)
    with pytest.raises(ValueError, match="time since its previous message is required"):
        net.step(x[:, 0], state0)


def _errors_after_a_level_shift(level_halflife_s: float) -> np.ndarray:
    """|error| per step of a 1-feature net (persistence 0.5) fed 0 for 100 minutes, then 5."""
    torch.manual_seed(0)
    net = StreamAutoencoder(
        1, hidden_size=4, num_layers=1, cell="lstm", bottleneck=2, level_halflife_s=level_halflife_s
    ).eval()
    with torch.no_grad():
        net.persistence.fill_(0.5)
    x = torch.cat([torch.zeros(100), torch.full((600,), 5.0)]).reshape(1, -1, 1)
    recon, _ = net(x, net.initial_state(1), elapsed=torch.full((1, 700), 60.0, dtype=torch.float64))
    return (recon - x).abs()[0, :, 0].detach().numpy()


def test_a_lasting_level_shift_becomes_the_new_level():
    tracked, fixed = _errors_after_a_level_shift(3600.0), _errors_after_a_level_shift(0.0)
    before = tracked[99]  # the untrained decoder's own offset, the same for both before the shift
    assert fixed[99] == pytest.approx(before) and tracked[100] > before + 3.0, "the shift itself is an error either way"
    assert abs(tracked[-1] - before) < 0.05, "ten hours later the tracked level has caught up"
    assert fixed[-1] > before + 1.0, "without tracking the model errs for ever"


def test_a_new_entity_starts_at_the_fit_level_and_moves_with_time():
    net = StreamAutoencoder(1, hidden_size=4, num_layers=1, cell="gru", bottleneck=2, level_halflife_s=3600.0).eval()
    with torch.no_grad():
        net.start_state[-1] = 7.0  # the fit data's average level
    state = net.initial_state(1)
    _, state = net.step(torch.tensor([[1.0]]), state, elapsed=torch.tensor([0.0], dtype=torch.float64))
    assert net._split(state)[2].item() == pytest.approx(7.0), (
        "no time has passed: a first message does not set the level"
    )
    _, state = net.step(torch.tensor([[1.0]]), state, elapsed=torch.tensor([3600.0], dtype=torch.float64))
    assert net._split(state)[2].item() == pytest.approx(4.0, abs=1e-4), "one half-life later: half way"


def test_batched_step_equals_single_steps():
    net = tiny_model().network
    x, state = torch.randn(5, 2), torch.randn(5, net.state_size)
    batched, batched_state = net.step(x, state)
    for i in range(5):
        single, single_state = net.step(x[i : i + 1], state[i : i + 1])
        assert torch.allclose(single, batched[i : i + 1], atol=1e-6)
        assert torch.allclose(single_state, batched_state[i : i + 1], atol=1e-6)


def test_save_load_roundtrip(tmp_path):
    model = tiny_model(feature_range=([-1.0, 0.0], [2.0, 5.5]))
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m", features=["a", "b"])
    assert loaded.version == model.version and loaded.features == ["a", "b"]
    x = torch.ones(1, 2)
    state = loaded.network.initial_state(1)
    assert torch.equal(loaded.network.step(x, state)[0], model.network.step(x, state)[0])
    np.testing.assert_array_equal(loaded.residual_scale, model.residual_scale)
    np.testing.assert_array_equal(loaded.feature_range, model.feature_range)


def test_feature_mismatch_is_refused(tmp_path):
    save_model(tiny_model(), tmp_path / "m")
    with pytest.raises(ModelError, match=r"feature schema mismatch.*'a', 'b'.*'a', 'c'"):
        load_model(tmp_path / "m", features=["a", "c"])


def test_missing_and_corrupt_models_are_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="no model in"):
        load_model(tmp_path / "nothing")
    save_model(tiny_model(), tmp_path / "m")
    (tmp_path / "m" / "weights.pt").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="corrupt"):
        load_model(tmp_path / "m")
    (tmp_path / "m" / "model.json").write_text("{")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_model(tmp_path / "m")


class _Exploit:
    def __reduce__(self):
        return (print, ("pickle code ran",))


def test_arbitrary_pickle_is_not_executed(tmp_path, capsys):
    save_model(tiny_model(), tmp_path / "m")
    buffer = io.BytesIO()
    torch.save({"payload": _Exploit()}, buffer, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    (tmp_path / "m" / "weights.pt").write_bytes(buffer.getvalue())
    with pytest.raises(ModelError):
        load_model(tmp_path / "m")
    assert "pickle code ran" not in capsys.readouterr().out


def test_time_context_fused_equals_step_and_round_trips(tmp_path):
    torch.manual_seed(0)
    net = StreamAutoencoder(
        2, hidden_size=6, num_layers=1, cell="lstm", bottleneck=3, periods=(86400.0, 604800.0)
    ).eval()
    x = torch.randn(3, 7, 2)
    when = 1.7e9 + torch.arange(21, dtype=torch.float64).reshape(3, 7) * 3600.0
    fused, fused_state = net(x, net.initial_state(3), when)
    state, steps = net.initial_state(3), []
    for t in range(7):
        recon, state = net.step(x[:, t], state, when[:, t])
        steps.append(recon)
    assert torch.allclose(fused, torch.stack(steps, dim=1), atol=1e-6) and torch.allclose(fused_state, state, atol=1e-6)
    one_day_later = net.step(x[:, 0], net.initial_state(3), when[:, 0] + 86400.0)[0]
    assert not torch.allclose(one_day_later, steps[0]), "the day of the week is seen"
    model = tiny_model()
    model = type(model)(**{**model.__dict__, "network": net})
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.network.architecture.periods == (86400.0, 604800.0)
    assert torch.equal(loaded.network.step(x[:, 0], net.initial_state(3), when[:, 0])[0], steps[0])
    with pytest.raises(ValueError, match="timestamps are required"):
        loaded.network.step(x[:, 0], net.initial_state(3))


def test_models_written_before_time_context_still_load(tmp_path):
    import json

    save_model(tiny_model(), tmp_path / "m")
    meta_path = tmp_path / "m" / "model.json"
    meta = json.loads(meta_path.read_text())
    del meta["architecture"]["periods"], meta["feature_range"]
    meta_path.write_text(json.dumps(meta))
    loaded = load_model(tmp_path / "m")
    assert loaded.network.architecture.periods == () and loaded.feature_range is None, (
        "no range check without the fit data's range"
    )


def _day_of_scores(model):
    """Probabilities of two entities reporting every 15 minutes for three days, a bump each night."""
    from detector.scoring import Detector, Observation

    rng = np.random.default_rng(3)
    observations = [
        Observation(entity, step * 900.0, [float(rng.normal()) + (3.0 if (step % 96) in (8, 9) else 0.0), 0.0])
        for step in range(3 * 96)
        for entity in ("p1", "p2")
    ]
    return [decision.probability for decision in Detector(model).process(observations, now=3 * 86400.0)]


def test_models_recording_a_removed_setting_load_without_it(tmp_path):
    """A model fitted while a since-removed setting existed records it: it loads without it and
    scores as a model that never recorded it."""
    import json

    save_model(tiny_model(warmup_steps=0), tmp_path / "new")
    meta = json.loads((tmp_path / "new" / "model.json").read_text())
    meta["scoring"]["likelihood_short_scaled"] = False
    (tmp_path / "new" / "model.json").write_text(json.dumps(meta))
    old = load_model(tmp_path / "new")
    assert "likelihood_short_scaled" not in old.scoring
    assert _day_of_scores(old) == _day_of_scores(tiny_model(warmup_steps=0))


def test_models_recording_the_seasonal_halflife_in_days_score_as_before(tmp_path):
    """A model fitted before the rename records seasonal_halflife_days: it is read as the same
    half-life in seconds and scores bit-identically to one recording seasonal_halflife_s."""
    import json

    save_model(tiny_model(warmup_steps=0, seasonal_halflife_s=1.5 * 86400), tmp_path / "new")
    meta = json.loads((tmp_path / "new" / "model.json").read_text())
    meta["scoring"]["seasonal_halflife_days"] = meta["scoring"].pop("seasonal_halflife_s") / 86400
    (tmp_path / "new" / "model.json").write_text(json.dumps(meta))
    old = load_model(tmp_path / "new")
    assert old.scoring["seasonal_halflife_s"] == 129600.0 and "seasonal_halflife_days" not in old.scoring
    expected = _day_of_scores(tiny_model(warmup_steps=0, seasonal_halflife_s=129600.0))
    assert _day_of_scores(old) == expected
    assert _day_of_scores(tiny_model(warmup_steps=0)) != expected, "the half-life changes the scores"
