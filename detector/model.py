"""The stateful recurrent autoencoder and its on-disk artifact (MODEL_DIR).

Each observation is one recurrent step. Before seeing ``x_t`` the decoder reconstructs it
from the encoder state, which compresses everything the entity has shown so far; the gap
between ``x_t`` and that reconstruction is the anomaly evidence. Then ``x_t`` updates the
state. States of many entities are stepped in one call.

The network: a state is carried as one flat vector per entity (h and, for LSTM, c of every
layer, then the last observation), so a state store can hold all entities in one
``(entities, state_size)`` tensor. The encoder sees each observation's level (clipped) and its
change since the last one; the reconstruction adds a learned per-feature share of the last value
to the decoder's output, so slowly wandering features are followed beyond the range seen in
training. With ``periods`` (e.g. a day and a week, in seconds) the phase of each message's
timestamp in every period is an input of both the encoder and the decoder (which reconstructs a
message knowing its time, never its values), so regular daily/weekly patterns can be expected.
With ``level_halflife_s`` each entity's level is tracked (an exponentially weighted mean over that
half-life of its own timestamps, carried in its state): the encoder sees values relative to it
and the reconstruction is built around it, so after a lasting level shift the entity is judged
around its new level instead of erring for ever (and hiding a second change in that error).

>>> import torch
>>> net = StreamAutoencoder(n_features=3, hidden_size=8, num_layers=2, cell="lstm", bottleneck=4)
>>> state = net.initial_state(batch=5)              # (5, state_size) flat per-entity states
>>> reconstruction, state = net.step(torch.zeros(5, 3), state)
>>> tuple(reconstruction.shape), tuple(state.shape)
((5, 3), (5, 35))
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from detector.renamed import upgrade_scoring

__all__ = [
    "Architecture",
    "Calibration",
    "FittedModel",
    "ModelError",
    "StreamAutoencoder",
    "load_model",
    "save_model",
    "window_levels",
]

# Small recurrent models run fastest on one thread (measured: a 3,000-row fit takes 8 s on one
# thread, over 60 s on two busy ones); scale out with processes instead.
torch.set_num_threads(int(os.environ.get("DETECTOR_TORCH_THREADS", "1")))

FORMAT_VERSION = 3
_INPUT_CLIP = 5.0  # standardised units
WEIGHTS_FILE, META_FILE, REPORT_FILE = "weights.pt", "model.json", "report.png"


@dataclass(frozen=True)
class Architecture:
    """Shape of the network; stored with the weights."""

    n_features: int
    hidden_size: int = 32
    num_layers: int = 1
    cell: Literal["lstm", "gru"] = "lstm"
    bottleneck: int = 8
    periods: tuple[float, ...] = ()  # seconds; each adds the phase of the message's timestamp (sin, cos) as context
    level_halflife_s: float = 0.0  # seconds; > 0 tracks each entity's level (see StreamAutoencoder), 0 = off


class StreamAutoencoder(nn.Module):
    """Recurrent encoder (LSTM or GRU, 1-2 layers) with a bottlenecked decoder (see the module
    docstring for its inputs, its time context and the tracked level)."""

    def __init__(
        self,
        n_features: int,
        hidden_size: int,
        num_layers: int,
        cell: Literal["lstm", "gru"],
        bottleneck: int,
        periods: Sequence[float] = (),
        level_halflife_s: float = 0.0,
    ):
        super().__init__()
        self.architecture = Architecture(
            n_features,
            hidden_size,
            num_layers,
            cell,
            bottleneck,
            tuple(float(p) for p in periods),
            float(level_halflife_s),
        )
        self._tracks_level = level_halflife_s > 0
        recurrent = nn.LSTM if cell == "lstm" else nn.GRU
        context = 2 * len(periods)
        self.encoder = recurrent(2 * n_features + context, hidden_size, num_layers, batch_first=True)
        self.decoder = nn.Sequential(
            nn.Linear(hidden_size + context, bottleneck), nn.Tanh(), nn.Linear(bottleneck, n_features)
        )
        self.persistence = nn.Parameter(torch.ones(n_features))  # per-feature weight of the last value (learned)
        # Where a new entity starts: the average state of the fit data (set by `fit`), not zeros,
        # so that a fresh entity is judged fairly after a short warm-up.
        self.start_state: torch.Tensor
        self.register_buffer("start_state", torch.zeros(self.state_size))

    @classmethod
    def build(cls, arch: Architecture) -> StreamAutoencoder:
        """A network with the given architecture (fresh weights)."""
        return cls(
            arch.n_features,
            arch.hidden_size,
            arch.num_layers,
            arch.cell,
            arch.bottleneck,
            arch.periods,
            arch.level_halflife_s,
        )

    @property
    def state_size(self) -> int:
        """Length of one entity's flat state vector: recurrent state, the last observation and, with
        level tracking, the entity's level."""
        n = self.architecture.n_features
        return self._recurrent_size + n * (2 if self._tracks_level else 1)

    @property
    def _recurrent_size(self) -> int:
        arch = self.architecture
        return (2 if arch.cell == "lstm" else 1) * arch.num_layers * arch.hidden_size

    def initial_state(self, batch: int) -> torch.Tensor:
        """Start states for ``batch`` new entities (the fit data's average state)."""
        return self.start_state.expand(batch, -1).clone()

    def step(
        self,
        x: torch.Tensor,
        state: torch.Tensor,
        when: torch.Tensor | None = None,
        elapsed: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step for a batch: reconstruct ``x`` (batch, features) from ``state`` and the time
        ``when`` of ``x`` (batch, epoch seconds; needed only with ``periods``), then absorb ``x``.
        ``elapsed`` (batch, seconds since each entity's previous message) is needed only with
        level tracking."""
        recurrent_state, last, level = self._split(state)
        context = self.context(when, x.shape[:1])
        reconstruction = self._decode(self._top_hidden(recurrent_state), last, level, context)
        _, new_state = self.encoder(self._inputs(x, last, level, context).unsqueeze(1), recurrent_state)
        tracked = [self._next_level(x, level, elapsed)] if self._tracks_level else []
        return reconstruction, torch.cat([self._flatten(new_state), x, *tracked], dim=1)

    def forward(
        self,
        x: torch.Tensor,
        state: torch.Tensor,
        when: torch.Tensor | None = None,
        elapsed: torch.Tensor | None = None,
        lengths: torch.Tensor | None = None,
        levels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruct a whole window (batch, time, features); each step sees only the past (and
        the time of the step being reconstructed, ``when``: (batch, time) epoch seconds; with level
        tracking also ``elapsed``: (batch, time) seconds since the previous step).

        Equivalent to :meth:`step` once per time step, in one fused call. ``lengths`` (batch,):
        each row's valid steps in a padded batch (its new state is after the last of them);
        ``levels``: :func:`window_levels`, when the caller has computed them.
        """
        recurrent_state, last, level = self._split(state)
        previous = torch.cat([last.unsqueeze(1), x[:, :-1]], dim=1)
        if levels is None and self._tracks_level:  # the level before each step, and after the last
            steps = [level]
            for t in range(x.shape[1]):
                steps.append(self._next_level(x[:, t], steps[-1], None if elapsed is None else elapsed[:, t]))
            levels = torch.stack(steps, dim=1)
        before = levels[:, :-1] if levels is not None else torch.zeros_like(x)
        context = self.context(when, x.shape[:2])
        inputs = self._inputs(x, previous, before, context)
        if lengths is None:
            outputs, new_state = self.encoder(inputs, recurrent_state)
        else:
            packed = nn.utils.rnn.pack_padded_sequence(inputs, lengths, batch_first=True, enforce_sorted=False)
            packed_outputs, new_state = self.encoder(packed, recurrent_state)
            outputs, _ = nn.utils.rnn.pad_packed_sequence(packed_outputs, batch_first=True, total_length=x.shape[1])
        before_each_step = torch.cat([self._top_hidden(recurrent_state).unsqueeze(1), outputs[:, :-1]], dim=1)
        last_step = torch.full((x.shape[0],), x.shape[1]) if lengths is None else lengths
        rows = torch.arange(x.shape[0])
        tracked = [levels[rows, last_step]] if levels is not None else []
        return self._decode(before_each_step, previous, before, context), torch.cat(
            [self._flatten(new_state), x[rows, last_step - 1], *tracked], dim=1
        )

    def _split(self, state: torch.Tensor) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """(recurrent state, last observation, level) of flat states; without level tracking the
        level is zero (the fit data's mean)."""
        r, n = self._recurrent_size, self.architecture.n_features
        last = state[:, r : r + n]
        level = state[:, r + n : r + 2 * n] if self._tracks_level else torch.zeros_like(last)
        return self._unflatten(state[:, :r]), last, level

    def _next_level(self, x: torch.Tensor, level: torch.Tensor, elapsed: torch.Tensor | None) -> torch.Tensor:
        """The level after absorbing ``x`` ``elapsed`` seconds after the previous message (level
        tracking only): an exponentially weighted mean with half-life ``level_halflife_s`` seconds of
        the entity's own timestamps. A new entity starts at the fit data's average level, not at its
        own first messages: a level guessed from a few noisy messages made new entities alert."""
        if elapsed is None:
            raise ValueError(
                "this model tracks each entity's level over time: the time since its previous message is required"
            )
        gap = torch.nan_to_num(elapsed.double().clamp(min=0.0), posinf=0.0).unsqueeze(-1)
        rate = (1.0 - torch.exp2(-gap / self.architecture.level_halflife_s)).float()
        return level + rate * (x - level)

    def context(self, when: torch.Tensor | None, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
        """Phase of each timestamp in every period (sin, cos), shape ``(*shape, 2 * len(periods))``.

        Computed in float64 (epoch seconds do not fit float32's mantissa), so a daily cycle's
        phase is exact to well under a second.

        >>> net = StreamAutoencoder(1, 4, 1, "lstm", 2, periods=(86400.0,))
        >>> net.context(torch.tensor([21600.0], dtype=torch.float64), (1,)).round(decimals=3).tolist()
        [[1.0, 0.0]]
        """
        periods = self.architecture.periods
        if not periods:
            return torch.zeros(*shape, 0)
        if when is None:
            raise ValueError(f"this model uses the time of day/week (periods {periods}): timestamps are required")
        phase = torch.stack([torch.remainder(when.double(), p) * (2 * math.pi / p) for p in periods], dim=-1)
        return torch.cat([torch.sin(phase), torch.cos(phase)], dim=-1).float()

    def _inputs(
        self, x: torch.Tensor, previous: torch.Tensor, level: torch.Tensor, context: torch.Tensor
    ) -> torch.Tensor:
        """Encoder input: the value relative to the entity's level, clipped so out-of-range values
        cannot saturate it, the change, and the time context."""
        return torch.cat(
            [(x - level).clamp(-_INPUT_CLIP, _INPUT_CLIP), (x - previous).clamp(-_INPUT_CLIP, _INPUT_CLIP), context],
            dim=-1,
        )

    def _decode(
        self, hidden: torch.Tensor, previous: torch.Tensor, level: torch.Tensor, context: torch.Tensor
    ) -> torch.Tensor:
        """Reconstruction: the entity's level, plus the decoder's output (from the state and the time
        context), plus a learned share of the last value's distance from that level."""
        return level + self.decoder(torch.cat([hidden, context], dim=-1)) + self.persistence * (previous - level)

    def _unflatten(self, flat: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        arch = self.architecture
        parts = flat.reshape(flat.shape[0], -1, arch.num_layers, arch.hidden_size).permute(1, 2, 0, 3).contiguous()
        return (parts[0], parts[1]) if arch.cell == "lstm" else parts[0]

    def _flatten(self, state: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        stacked = torch.stack(state) if isinstance(state, tuple) else state.unsqueeze(0)
        return stacked.permute(2, 0, 1, 3).reshape(stacked.shape[2], -1)

    def _top_hidden(self, state: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        hidden = state[0] if isinstance(state, tuple) else state
        return hidden[-1]


def window_levels(
    network: StreamAutoencoder, x: torch.Tensor, state: torch.Tensor, elapsed: torch.Tensor
) -> torch.Tensor | None:
    """The tracked level before each step of ``x`` (batch, time, features) and after its last,
    (batch, time + 1, features), in one compiled pass (for :meth:`StreamAutoencoder.forward`'s
    ``levels``); None when ``network`` does not track levels."""
    if not network._tracks_level:
        return None
    from detector.kernel import track_levels  # compiled; imported only where windows are scored

    level = network._split(state)[2]
    gap = torch.nan_to_num(elapsed.double().clamp(min=0.0), posinf=0.0)
    rates = (1.0 - torch.exp2(-gap / network.architecture.level_halflife_s)).float()
    return torch.from_numpy(track_levels(x.contiguous().numpy(), level.contiguous().numpy(), rates.numpy()))


@dataclass(frozen=True)
class Calibration:
    """Fit-time distribution of log scores on held-out normal data, and the alert threshold.

    ``probability(score) = Phi((log(score) - log_mean) / log_std)``, a monotone map to [0, 1].
    """

    log_mean: float
    log_std: float
    threshold_score: float  # score at which the fit-time probability reaches the open threshold
    heldout_scores: int
    quantiles: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class FittedModel:
    """Everything ``score`` and ``run`` need: network, scaling, calibration, settings."""

    network: StreamAutoencoder
    features: list[str]
    feature_mean: np.ndarray
    feature_scale: np.ndarray
    residual_scale: np.ndarray
    calibration: Calibration
    scoring: dict[str, Any]
    version: str
    info: dict[str, Any] = field(default_factory=dict)
    # (2, features): the fit data's minimum and maximum (None: fitted before it was kept)
    feature_range: np.ndarray | None = None


class ModelError(RuntimeError):
    """A model directory that cannot be used; the message says why and what to do."""


def save_model(model: FittedModel, directory: Path) -> Path:
    """Write weights (a plain tensor dict) and ``model.json`` to ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(model.network.state_dict(), directory / WEIGHTS_FILE)
    meta = {
        "format": FORMAT_VERSION,
        "version": model.version,
        "features": model.features,
        "architecture": asdict(model.network.architecture),
        "feature_mean": model.feature_mean.tolist(),
        "feature_scale": model.feature_scale.tolist(),
        "residual_scale": model.residual_scale.tolist(),
        "calibration": asdict(model.calibration),
        "scoring": model.scoring,
        "info": model.info,
        "feature_range": None if model.feature_range is None else model.feature_range.tolist(),
    }
    (directory / META_FILE).write_text(json.dumps(meta, indent=2))
    return directory


def load_model(directory: Path | str, features: list[str] | None = None) -> FittedModel:
    """Load a model safely (``weights_only=True``); refuse it if its features differ from ``features``."""
    directory = Path(directory)
    meta = _read_meta(directory)
    if features is not None and list(features) != meta["features"]:
        raise ModelError(
            f"feature schema mismatch: model {directory} was fitted on {meta['features']}, "
            f"the data has {list(features)}; refit the model or fix the input"
        )
    try:
        arch = Architecture(**{**meta["architecture"], "periods": tuple(meta["architecture"].get("periods", ()))})
        network = StreamAutoencoder.build(arch)
        weights = torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        network.load_state_dict(weights)
        network.eval()
        return FittedModel(
            network=network,
            features=list(meta["features"]),
            feature_mean=np.asarray(meta["feature_mean"], dtype=np.float64),
            feature_scale=np.asarray(meta["feature_scale"], dtype=np.float64),
            residual_scale=np.asarray(meta["residual_scale"], dtype=np.float64),
            calibration=Calibration(**meta["calibration"]),
            scoring=upgrade_scoring(meta["scoring"]),
            version=str(meta["version"]),
            info=dict(meta.get("info", {})),
            feature_range=None
            if meta.get("feature_range") is None
            else np.asarray(meta["feature_range"], dtype=np.float64).reshape(2, -1),
        )
    except ModelError:
        raise
    except Exception as error:  # noqa: BLE001  (any corruption: say which directory and what broke)
        raise ModelError(f"model {directory} is corrupt or incompatible: {type(error).__name__}: {error}") from None


def _read_meta(directory: Path) -> dict[str, Any]:
    if not (directory / META_FILE).is_file() or not (directory / WEIGHTS_FILE).is_file():
        raise ModelError(f"no model in {directory}: expected {META_FILE} and {WEIGHTS_FILE} (run `detector fit`)")
    try:
        meta = json.loads((directory / META_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelError(f"model {directory}: {META_FILE} is not valid JSON ({error})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        found = meta.get("format") if isinstance(meta, dict) else "?"
        raise ModelError(f"model {directory}: unsupported format {found} (want {FORMAT_VERSION})")
    return meta


def version_id(network: StreamAutoencoder, features: list[str]) -> str:
    """A version id: UTC time of the fit and a digest of the weights and feature names."""
    digest = hashlib.sha256(json.dumps(features).encode())
    for tensor in network.state_dict().values():
        digest.update(tensor.detach().numpy().tobytes())
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{digest.hexdigest()[:10]}"
