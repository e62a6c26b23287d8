"""Reload without restart: SIGHUP re-reads the settings file and the model directory.

A :class:`Reloader` works on a thread of its own, off the scoring loop. Asked to reload, it reads
the settings file and the environment, loads the model at ``model.path`` and refuses what
cannot be used: invalid settings, a fit-time setting that differs from the model's, a model that
does not load or whose scores are not finite. Otherwise it builds the new
:class:`~detector.scoring.Detector` (its alert level simulated here too) and hands it to the
service, which swaps it in between two batches. Until then the old detector keeps scoring, and
for good when the reload is refused.

With ``stream.reload_watch_s`` set, a change of the settings file or of the model directory's
files (their modification time, size or inode: a Kubernetes ConfigMap volume swaps a symlink)
reloads too. Start-up settings (Kafka, stream, metrics, log) are not applied: a reload that finds them
changed says that a restart is needed (``reload.restart_needed``). Every reload is counted in
``detector_reloads_total{outcome}``: ``applied`` (other run-time values or another model),
``unchanged`` or ``refused``.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from detector.config import Settings, SettingsError, read_toml, settings_from
from detector.logs import get_logger
from detector.metrics import Metrics
from detector.model import META_FILE, WEIGHTS_FILE, FittedModel, ModelError, load_model
from detector.runtime import RunTimeScoring, given_settings, kind_of, resolve_scoring
from detector.scoring import Detector

__all__ = ["Loaded", "Reloader", "carry_states", "load"]

log = get_logger(__name__)
_PROBE_ENTITY = "\x00detector-reload-probe"  # no message can name it: entity names are trimmed text


@dataclass(frozen=True)
class Loaded:
    """Settings, the model as its directory records it, and the run-time scoring values in effect."""

    settings: Settings
    model: FittedModel
    scoring: RunTimeScoring

    def scoring_model(self) -> FittedModel:
        """The model with the run-time scoring values applied: what a Detector is built from."""
        return self.scoring.apply(self.model)


def load(config_path: Path | None, settings: Settings | None = None) -> Loaded:
    """Read the settings (unless given) from ``config_path`` and the environment, load the model at
    ``model.path`` and resolve the run-time values; raises :class:`SettingsError` or :class:`ModelError`."""
    file_values = read_toml(config_path) if config_path else {}
    settings = settings if settings is not None else settings_from(file_values, config_path)
    model = load_model(settings.model.path)
    scoring = resolve_scoring(settings, model, given_settings(file_values, os.environ), str(settings.model.path))
    return Loaded(settings, model, scoring)


def build_detector(loaded: Loaded, started: Settings) -> Detector:
    """A Detector for ``loaded``, bounded by the start-up stream settings, checked on a probe
    message at the model's mean (its score and probability must be finite); :class:`ModelError` if not."""
    detector = Detector(
        loaded.scoring_model(), max_entities=started.stream.max_entities, ttl_s=started.stream.entity_ttl_s
    )
    model = loaded.model
    probe = detector.score_one(_PROBE_ENTITY, model.feature_mean.tolist(), time.time())
    detector.store.forget([_PROBE_ENTITY])
    if not (math.isfinite(probe.score) and 0.0 <= probe.probability <= 1.0 and 0.0 < detector.threshold <= 1.0):
        raise ModelError(
            f"model {loaded.settings.model.path} ({model.version}) scores a normal message "
            f"{probe.score!r} with probability {probe.probability!r} (alert level {detector.threshold!r})"
        )
    return detector


def carry_states(old: Detector, new: Detector, owners: Iterable[int]) -> int:
    """Move the entity states of ``owners`` from ``old`` to ``new``, two detectors of the same
    model (the checkpoint format carries them, so they are checked as a restore is); returns how many."""
    tag, now = old.model.version, time.time()
    return sum(new.store.restore(old.store.export(owner, tag=tag), owner, now, tag=tag) for owner in owners)


def _start_up_changes(before: Settings, after: Settings) -> list[str]:
    """The start-up settings whose value differs: they take effect only after a restart."""
    changed = []
    for section in type(before).model_fields:
        old, new = getattr(before, section), getattr(after, section)
        changed += [
            f"{section}.{key}"
            for key in type(old).model_fields
            if kind_of(f"{section}.{key}") == "start-up" and getattr(old, key) != getattr(new, key)
        ]
    return changed


class Reloader:
    """Reloads the settings and the model on :meth:`request` (the SIGHUP handler), on its own thread.

    ``replace`` receives each new Detector (the service swaps it in between batches); ``current``
    is what the service started with.
    """

    def __init__(
        self,
        config_path: Path | None,
        current: Loaded,
        replace: Callable[[Detector], None],
        metrics: Metrics,
    ):
        self._config_path, self._current, self._started = config_path, current, current.settings
        self._replace, self._metrics = replace, metrics
        self._requested, self._closed = threading.Event(), threading.Event()
        self._torch_threads = torch.get_num_threads()  # the process's setting, as the calling thread has it
        self._thread = threading.Thread(target=self._serve, name="reload", daemon=True)

    def start(self) -> Reloader:
        self._thread.start()
        return self

    def request(self, *_: Any) -> None:
        """Ask for a reload (safe in a signal handler: requests made while one runs make one more)."""
        self._requested.set()

    def close(self) -> None:
        self._closed.set()
        self._requested.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _serve(self) -> None:
        # torch's thread count holds per native thread (OpenMP): unset here, the alert level's
        # simulation would run a team of spinning threads next to the scoring loop's
        torch.set_num_threads(self._torch_threads)
        watch_s = self._started.stream.reload_watch_s or None
        seen = self._fingerprint()
        while True:
            requested = self._requested.wait(timeout=watch_s)
            self._requested.clear()
            if self._closed.is_set():
                return
            now = self._fingerprint()
            if requested or now != seen:
                seen = now  # taken before reading: a change made while it reads is seen next time
                self.reload()
                if now[0] != self._current.settings.model.path:  # watch the model it now runs
                    seen = self._fingerprint()

    def _fingerprint(self) -> tuple[Any, ...]:
        """The model directory watched, then the modification time, size and inode of its files and
        of the settings file (None: missing)."""
        model_path = self._current.settings.model.path
        paths = [model_path / META_FILE, model_path / WEIGHTS_FILE]
        paths += [self._config_path] if self._config_path else []
        stats: list[tuple[int, int, int] | None] = []
        for path in paths:
            try:
                stat = path.stat()
                stats.append((stat.st_mtime_ns, stat.st_size, stat.st_ino))
            except OSError:
                stats.append(None)
        return (model_path, *stats)

    def reload(self) -> str:
        """Reload once and return the outcome (``applied``, ``unchanged`` or ``refused``)."""
        started = time.perf_counter()
        try:
            candidate = load(self._config_path)
            outcome = self._apply(candidate, started)
        except (SettingsError, ModelError) as error:
            outcome = self._refuse(str(error), getattr(error, "help", None))
        except Exception as error:  # noqa: BLE001 - a reload that fails in any way leaves the service as it was
            outcome = self._refuse(f"{type(error).__name__}: {error}"[:500], None)
        self._metrics.reload(outcome)
        return outcome

    def _apply(self, candidate: Loaded, started: float) -> str:
        current = self._current
        restart_needed = _start_up_changes(self._started, candidate.settings)
        if restart_needed:
            log.warning(
                "reload.restart_needed",
                settings=restart_needed,
                note="start-up settings take effect after a restart; the running values stay",
            )
        new_model = candidate.model.version != current.model.version
        changed = candidate.scoring.changed_from(current.scoring)
        if not new_model and not changed:
            log.info("reload.unchanged", model_version=current.model.version)
            return "unchanged"
        detector = build_detector(candidate, self._started)
        self._replace(detector)
        self._current = candidate
        log.info(
            "reload.applied",
            model_version=candidate.model.version,
            previous_model_version=current.model.version,
            alert_probability=round(detector.threshold, 4),
            changed={name: candidate.scoring.describe()[name] for name in changed},
            entity_states="rolled out entity by entity" if new_model else "carried over",
            seconds=round(time.perf_counter() - started, 3),
        )
        return "applied"

    def _refuse(self, reason: str, help: str | None) -> str:
        log.error(
            "reload.refused",
            reason=reason,
            help=help,
            model_version=self._current.model.version,
            note="the service goes on with the settings and model it had",
        )
        return "refused"
