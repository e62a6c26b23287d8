"""A Prometheus histogram collector that records a whole array of observations in one call."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

import numpy as np
from numpy.typing import ArrayLike
from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["BatchHistogram"]


class BatchHistogram(Collector):
    """A Prometheus histogram that takes a whole batch of observations in one call.

    ``prometheus_client.Histogram.observe`` costs about a microsecond per value; the service
    observes three values per message, so it records each batch with one numpy pass instead.
    Exposed exactly like a ``Histogram`` (``_bucket``/``_count``/``_sum``/``_created``).

    >>> h = BatchHistogram("demo_seconds", "Demo.", buckets=(0.1, 1.0))
    >>> h.observe([0.05, 0.1, 0.5, 5.0])
    >>> [(s.labels.get("le"), s.value) for s in next(iter(h.collect())).samples if s.name == "demo_seconds_bucket"]
    [('0.1', 2), ('1.0', 3), ('+Inf', 4)]
    """

    def __init__(
        self, name: str, documentation: str, buckets: Iterable[float], registry: CollectorRegistry | None = None
    ) -> None:
        self.name, self.documentation = name, documentation
        self._bounds = np.asarray(sorted(float(b) for b in buckets if b != float("inf")))
        self._counts = np.zeros(len(self._bounds) + 1, dtype=np.int64)  # last: above every bound
        self._sum = 0.0
        self._created = time.time()
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    def observe(self, values: ArrayLike) -> None:
        """Record one value or an array of values (NaN is ignored)."""
        array = np.asarray(values, dtype=np.float64).ravel()
        array = array[~np.isnan(array)]
        counts = np.bincount(np.searchsorted(self._bounds, array, side="left"), minlength=len(self._counts))
        with self._lock:
            self._counts += counts
            self._sum += float(array.sum())

    def collect(self) -> Iterable[HistogramMetricFamily]:
        with self._lock:
            cumulative, total = np.cumsum(self._counts).tolist(), self._sum
        # one count more than bounds: the last is the +Inf bucket
        finite = zip(self._bounds.tolist(), cumulative[:-1], strict=True)
        buckets = [(floatToGoString(bound), count) for bound, count in finite] + [("+Inf", cumulative[-1])]
        family = HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=total)
        family.add_sample(f"{self.name}_created", {}, self._created)
        yield family

    def describe(self) -> Iterable[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation)
