"""Liveness and readiness of the processing loop, as /healthz and /readyz report them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from detector.metrics import Metrics

__all__ = ["Health"]


class Health:
    """Thread-safe liveness/readiness state of the processing loop.

    Liveness fails when :meth:`beat` has not been called for ``stall_after_s``
    (before the first beat, for ``max(stall_after_s, startup_grace_s)`` after
    construction). Readiness is whatever :meth:`set_ready` last said; it starts
    not ready with reason "starting".

    Example::

        health = Health(stall_after_s=60.0, metrics=metrics)
        health.set_ready(True)        # after partitions are assigned and state restored
        while running:
            ...
            health.beat()             # after each iteration, also while idle
        health.is_alive()             # -> (True, "ok")

    When ``metrics`` is given, :meth:`beat` also sets
    ``detector_loop_last_progress_timestamp_seconds``.
    """

    def __init__(
        self,
        stall_after_s: float = 60.0,
        *,
        metrics: Metrics | None = None,
        startup_grace_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if stall_after_s <= 0:
            raise ValueError("stall_after_s must be > 0")
        self.stall_after_s = stall_after_s
        self._startup_allowance = max(stall_after_s, startup_grace_s)
        self._metrics = metrics
        self._clock = clock
        self._lock = threading.Lock()
        self._last_beat = clock()
        self._beaten = False
        self._ready = False
        self._ready_reason = "starting"

    def beat(self) -> None:
        """Record that the processing loop made one iteration."""
        with self._lock:
            self._last_beat = self._clock()
            self._beaten = True
        if self._metrics is not None:
            self._metrics.progress()

    def set_ready(self, ready: bool, reason: str = "") -> None:
        """Set readiness; ``reason`` explains a not-ready state (shown by /readyz)."""
        with self._lock:
            self._ready = ready
            self._ready_reason = reason or ("ok" if ready else "not ready")

    def is_alive(self) -> tuple[bool, str]:
        """``(True, "ok")`` or ``(False, reason)`` when the loop stalled."""
        with self._lock:
            silent = self._clock() - self._last_beat
            allowed = self.stall_after_s if self._beaten else self._startup_allowance
        if silent > allowed:
            return False, f"processing loop stalled: no progress for {silent:.1f}s (limit {allowed:g}s)"
        return True, "ok"

    def is_ready(self) -> tuple[bool, str]:
        """``(True, "ok")`` when ready and alive, else ``(False, reason)``."""
        with self._lock:
            ready, reason = self._ready, self._ready_reason
        if not ready:
            return False, reason
        alive, why = self.is_alive()
        return (True, "ok") if alive else (False, why)
