"""Fit a model on historical CSV files, then calibrate it on their held-out normal tails.

>>> from detector.config import FitSettings, ModelSettings, ScoringSettings   # doctest: +SKIP
>>> model = fit_tables([read_csv("history.csv")], ModelSettings(), FitSettings(), ScoringSettings())  # doctest: +SKIP
>>> save_model(model, Path("models/current"))                                  # doctest: +SKIP

Training is truncated backpropagation through time: each series is cut into a few long
streams, the streams are walked in windows of ``fit.window`` steps with the state carried
(detached) from one window to the next, gradients are clipped, and training stops early when
the loss on the held-out tail of each series stops improving.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from detector.config import FitSettings, ModelSettings, ScoringSettings
from detector.logs import get_logger
from detector.model import Calibration, FittedModel, StreamAutoencoder, save_model, version_id
from detector.schema import Columns, DataError, Table
from detector.scoring import Detector

__all__ = ["FitHistory", "fit_tables", "minimum_rows", "write_model"]

log = get_logger(__name__)
_RESIDUAL_FLOOR = 1e-2  # in standardised units: a perfectly predictable feature is not infinitely sensitive
_LOG_STD_FLOOR = 0.1
_BATCH_ROWS = 2_000_000  # padded rows per sequence forward over a group of series (memory: rows x features x 4 B)
MIN_HELDOUT_SCORES = 10  # per entity: the calibration's median and tail need a few held-out scores


@dataclass
class FitHistory:
    """Per-epoch losses and the held-out scores used for calibration (for the report)."""

    train_loss: list[float]
    val_loss: list[float]
    heldout_scores: np.ndarray
    best_epoch: int


@dataclass(frozen=True)
class _Inputs:
    """What the network sees of one series."""

    values: np.ndarray  # (rows, features), standardised
    times: np.ndarray  # (rows,), epoch seconds (float64)

    @cached_property
    def elapsed(self) -> np.ndarray:
        """Seconds since the previous row (the first row: 0)."""
        return np.diff(self.times, prepend=self.times[:1])


@dataclass(frozen=True)
class _Series:
    entity: str
    values: np.ndarray  # (rows, features), raw units
    timestamps: list[float]
    split: int  # rows before this index train, the rest are held out


def fit_tables(
    tables: Sequence[Table],
    model_settings: ModelSettings,
    fit: FitSettings,
    scoring: ScoringSettings,
    progress: bool = True,
) -> tuple[FittedModel, FitHistory]:
    """Fit and calibrate a model on ``tables`` (same features); returns the model and its history."""
    features = tables[0].features
    tables = [table.with_features(features, table.name) if table.features != features else table for table in tables]
    series = _split_series(tables, fit.holdout_fraction, scoring.warmup_steps)
    mean, scale = _feature_scaling(series)
    torch.manual_seed(fit.seed)
    np.random.seed(fit.seed)
    periods = _covered_periods(series, model_settings.periods)
    network = StreamAutoencoder(
        len(features),
        model_settings.hidden_size,
        model_settings.num_layers,
        model_settings.cell,
        model_settings.bottleneck,
        periods,
        model_settings.level_halflife_s,
    )
    standardised = [_Inputs((s.values - mean) / scale, np.asarray(s.timestamps, dtype=np.float64)) for s in series]
    train_loss, val_loss, best_epoch = _train(network, standardised, series, fit, progress)
    network.start_state.copy_(_average_state(network, standardised, series, scoring.warmup_steps))
    residual_scale = _residual_scale(network, standardised, series, scoring.warmup_steps)
    draft = FittedModel(
        network=network,
        features=features,
        feature_mean=mean,
        feature_scale=scale,
        residual_scale=residual_scale,
        calibration=Calibration(0.0, 1.0, 1.0, 0),
        scoring=scoring.model_dump(),
        version="draft",
    )
    heldout = _heldout_scores(draft, series)
    calibration = _calibrate(heldout, scoring)
    info = {
        "rows": int(sum(len(s.values) for s in series)),
        "entities": len({s.entity for s in series}),
        "epochs": len(train_loss),
        "best_epoch": best_epoch,
        "best_val_loss": val_loss[best_epoch],
        "fit_settings": fit.model_dump(),
        "model_settings": model_settings.model_dump(mode="json"),
    }
    every_row = np.concatenate([s.values for s in series])
    feature_range = np.stack([every_row.min(axis=0), every_row.max(axis=0)])
    model = replace(
        draft, calibration=calibration, version=version_id(network, features), info=info, feature_range=feature_range
    )
    return model, FitHistory(train_loss, val_loss, heldout, best_epoch)


def write_model(model: FittedModel, history: FitHistory, directory: Path, report: bool = True) -> Path:
    """Save the model and, if asked, the PNG report next to it."""
    save_model(model, directory)
    if report:
        from detector.report import write_report

        write_report(model, history, directory / "report.png")
    return directory


def _split(rows: int, holdout_fraction: float) -> int:
    """Rows of a series that train; the rest are held out."""
    return max(1, min(rows - 1, math.floor(rows * (1 - holdout_fraction))))


def minimum_rows(holdout_fraction: float, warmup_steps: int) -> int:
    """The fewest rows per entity that fit can calibrate on: ``MIN_HELDOUT_SCORES`` held-out
    rows past the warm-up, after at least as many training rows.

    >>> minimum_rows(0.2, 10)
    46
    """
    rows = 2 * MIN_HELDOUT_SCORES
    while (
        rows - max(_split(rows, holdout_fraction), warmup_steps) < MIN_HELDOUT_SCORES
        or _split(rows, holdout_fraction) < MIN_HELDOUT_SCORES
    ):
        rows += 1
    return rows


def _split_series(tables: Sequence[Table], holdout_fraction: float, warmup_steps: int) -> list[_Series]:
    series, needed = [], minimum_rows(holdout_fraction, warmup_steps)
    for table in tables:
        entities = table.entities or ["default"] * len(table.timestamps)
        for entity in dict.fromkeys(entities):
            rows = [i for i, e in enumerate(entities) if e == entity]
            if len(rows) < needed:
                raise DataError(
                    table.name,
                    f"entity {entity!r} has {len(rows)} rows; fit needs at least {needed} per entity "
                    f"({MIN_HELDOUT_SCORES} held-out rows after the {warmup_steps}-message warm-up, "
                    f"with holdout_fraction {holdout_fraction})",
                    help=f"give fit more history (at least {needed} rows of each entity), "
                    "or lower scoring.warmup_steps",
                )
            series.append(
                _Series(
                    entity, table.values[rows], [table.timestamps[i] for i in rows], _split(len(rows), holdout_fraction)
                )
            )
    return series


def _covered_periods(series: Sequence[_Series], periods: Sequence[float]) -> tuple[float, ...]:
    """The calendar periods whose every phase the training rows of each series have seen at least
    once: only those can be learned as context (a model fitted on minutes of data gets none).

    >>> day = _Series("a", np.zeros((4, 1)), [0.0, 40_000.0, 90_000.0, 100_000.0], split=3)
    >>> _covered_periods([day], [86_400.0, 604_800.0])
    (86400.0,)
    """
    spans = [s.timestamps[s.split - 1] - s.timestamps[0] for s in series]
    return tuple(float(p) for p in periods if min(spans) >= p)


def _feature_scaling(series: Sequence[_Series]) -> tuple[np.ndarray, np.ndarray]:
    train = np.concatenate([s.values[: s.split] for s in series])
    scale = train.std(axis=0)
    return train.mean(axis=0), np.where(scale > 1e-8, scale, 1.0)


def _train(
    network: StreamAutoencoder, data: list[_Inputs], series: list[_Series], fit: FitSettings, progress: bool
) -> tuple[list[float], list[float], int]:
    optimiser = torch.optim.Adam(network.parameters(), lr=fit.learning_rate)
    streams, mask = _streams(
        [d.values[: s.split] for d, s in zip(data, series, strict=True)], fit.streams, fit.window, np.float32
    )
    times, _ = _streams(
        [np.stack([d.times, d.elapsed], axis=1)[: s.split] for d, s in zip(data, series, strict=True)],
        fit.streams,
        fit.window,
        np.float64,
    )
    best, best_state, best_epoch, train_losses, val_losses = math.inf, None, 0, [], []
    bar = tqdm(range(fit.max_epochs), desc="fit", unit="epoch", disable=not progress, leave=False)
    for epoch in bar:
        network.train()
        train_losses.append(_train_epoch(network, optimiser, (streams, times[..., 0], times[..., 1]), mask, fit))
        val_losses.append(_validation_loss(network, data, series))
        bar.set_postfix(loss=f"{train_losses[-1]:.4f}", val=f"{val_losses[-1]:.4f}")
        if val_losses[-1] < best - 1e-6:
            best, best_state, best_epoch = val_losses[-1], copy.deepcopy(network.state_dict()), epoch
        elif epoch - best_epoch >= fit.patience:
            break
    network.load_state_dict(best_state or network.state_dict())
    network.eval()
    log.info("fit.trained", epochs=len(train_losses), best_epoch=best_epoch, best_val_loss=round(best, 5))
    return train_losses, val_losses, best_epoch


def _streams(parts: list[np.ndarray], per_series: int, window: int, dtype: type) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut each series into up to ``per_series`` contiguous streams; pad to one length with a mask."""
    pieces = []
    for part in parts:
        count = max(1, min(per_series, len(part) // (4 * window)))
        pieces.extend(np.array_split(part, count))
    length = max(len(p) for p in pieces)
    streams: np.ndarray = np.zeros((len(pieces), length, parts[0].shape[1]), dtype=dtype)
    mask = np.zeros((len(pieces), length, 1), dtype=np.float32)
    for i, piece in enumerate(pieces):
        streams[i, : len(piece)], mask[i, : len(piece)] = piece, 1.0
    return torch.from_numpy(streams), torch.from_numpy(mask)


def _train_epoch(
    network: StreamAutoencoder,
    optimiser: torch.optim.Optimizer,
    streams: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    mask: torch.Tensor,
    fit: FitSettings,
) -> float:
    """One pass over the (values, times, elapsed) streams in windows, carrying the detached state."""
    values, times, elapsed = streams
    state, total, weight = network.initial_state(values.shape[0]), 0.0, 0.0
    for start in range(0, values.shape[1], fit.window):
        x, m = values[:, start : start + fit.window], mask[:, start : start + fit.window]
        window = slice(start, start + fit.window)
        reconstruction, state = network(x, state.detach(), times[:, window], elapsed[:, window])
        loss = (((reconstruction - x) ** 2) * m).sum() / (m.sum() * x.shape[2]).clamp(min=1.0)
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), fit.clip_norm)
        optimiser.step()
        total, weight = total + float(loss.detach()) * float(m.sum()), weight + float(m.sum())
    return total / max(weight, 1.0)


def _length_groups(lengths: Sequence[int], budget_rows: int = _BATCH_ROWS) -> list[list[int]]:
    """Indices of series grouped for one padded batch each: longest first, a group no larger than
    ``budget_rows`` padded rows (a single longer series is a group of its own).

    >>> _length_groups([10, 300, 20, 290], budget_rows=600)
    [[1, 3], [2, 0]]
    """
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if groups and lengths[groups[-1][0]] * (len(groups[-1]) + 1) <= budget_rows:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _padded(parts: Sequence[np.ndarray], dtype: type) -> torch.Tensor:
    """``parts`` (each (rows, ...) ) stacked into one (len(parts), longest, ...) tensor, zero-padded at the end."""
    longest = max(len(p) for p in parts)
    out = np.zeros((len(parts), longest, *parts[0].shape[1:]), dtype=dtype)
    for i, part in enumerate(parts):
        out[i, : len(part)] = part
    return torch.from_numpy(out)


def _reconstruct_all(network: StreamAutoencoder, data: Sequence[_Inputs]) -> list[np.ndarray]:
    """The reconstruction of every series, from its start, with one sequence forward per group of
    series (see :func:`_length_groups`; each step sees only its past, so the padding after a
    series changes nothing in it)."""
    out: list[np.ndarray] = [np.empty(0)] * len(data)
    with torch.inference_mode():
        for group in _length_groups([len(d.values) for d in data]):
            inputs = [data[i] for i in group]
            reconstruction, _ = network(
                _padded([d.values for d in inputs], np.float32),
                network.initial_state(len(group)),
                _padded([d.times for d in inputs], np.float64),
                _padded([d.elapsed for d in inputs], np.float64),
            )
            for row, i in enumerate(group):
                out[i] = reconstruction[row, : len(data[i].values)].double().numpy()
    return out


def _validation_loss(network: StreamAutoencoder, data: list[_Inputs], series: list[_Series]) -> float:
    network.eval()
    reconstructions = _reconstruct_all(network, data)
    errors = [
        ((r - d.values)[s.split :] ** 2).mean(axis=1) for r, d, s in zip(reconstructions, data, series, strict=True)
    ]
    return float(np.concatenate(errors).mean())


def _average_state(network: StreamAutoencoder, data: list[_Inputs], series: list[_Series], warmup: int) -> torch.Tensor:
    """Mean state over the training rows (after warm-up): where new entities start. The series of
    a group are stepped side by side, one step per time step."""
    total, count = torch.zeros(network.state_size), 0
    with torch.inference_mode():
        for group in _length_groups([s.split for s in series]):
            splits = torch.tensor([series[i].split for i in group])
            x, when, elapsed = (
                _padded([part[: series[i].split] for i, part in zip(group, parts, strict=True)], dtype)
                for parts, dtype in (
                    ([data[i].values for i in group], np.float32),
                    ([data[i].times for i in group], np.float64),
                    ([data[i].elapsed for i in group], np.float64),
                )
            )
            state = network.initial_state(len(group))
            for t in range(x.shape[1]):
                _, state = network.step(x[:, t], state, when[:, t], elapsed[:, t])
                if t >= warmup:
                    counted = state[t < splits]
                    total, count = total + counted.sum(dim=0), count + len(counted)
    return total / max(count, 1)


def _residual_scale(network: StreamAutoencoder, data: list[_Inputs], series: list[_Series], warmup: int) -> np.ndarray:
    reconstructions = _reconstruct_all(network, data)
    residuals = [
        (r - d.values)[min(warmup, s.split - 1) : s.split]
        for r, d, s in zip(reconstructions, data, series, strict=True)
    ]
    rms = np.sqrt((np.concatenate(residuals) ** 2).mean(axis=0))
    return np.maximum(rms, _RESIDUAL_FLOOR)


def _heldout_scores(model: FittedModel, series: list[_Series]) -> np.ndarray:
    """Scores of the held-out tails, produced by the service's scoring in one call.

    All series are interleaved in time (each under its own key, series order within a time
    step), so the Detector sees them as the service would see the entities side by side.
    """
    keys = np.concatenate([np.full(len(s.values), i) for i, s in enumerate(series)])
    steps = np.concatenate([np.arange(len(s.values)) for s in series])
    order = np.argsort(np.concatenate([np.asarray(s.timestamps, dtype=np.float64) for s in series]), kind="stable")
    names = [f"{i}/{s.entity}" for i, s in enumerate(series)]
    columns = Columns(
        [names[k] for k in keys[order].tolist()],
        np.concatenate([np.asarray(s.timestamps, dtype=np.float64) for s in series])[order],
        np.concatenate([s.values for s in series])[order],
    )
    outcomes = Detector(model, simulate_null=False).process_columns(columns)  # scores only: no alert level needed
    splits = np.asarray([max(s.split, model_warmup(model)) for s in series])
    return outcomes.score[steps[order] >= splits[keys[order]]]


def model_warmup(model: FittedModel) -> int:
    """Warm-up steps recorded in the model's scoring settings."""
    return int(model.scoring.get("warmup_steps", 0))


def _calibrate(scores: np.ndarray, scoring: ScoringSettings) -> Calibration:
    """Fit a normal law to the held-out log scores, robustly and conservative in the tail."""
    logs = np.log(scores + 1e-9)
    median = float(np.median(logs))
    mad_std = 1.4826 * float(np.median(np.abs(logs - median)))
    tail_std = (float(np.quantile(logs, 0.99)) - median) / 2.326
    log_std = max(mad_std, tail_std, _LOG_STD_FLOOR)
    quantiles = {f"q{q}": float(np.quantile(scores, q / 100)) for q in (50, 90, 99, 100)}
    return Calibration(median, log_std, float(math.exp(median + scoring.open_z * log_std)), len(scores), quantiles)
