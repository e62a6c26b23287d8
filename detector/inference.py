"""How the scoring steps the network: without autograd, and on PyTorch's own recurrent kernels.

On CPU, PyTorch runs an LSTM or GRU through oneDNN when it may. oneDNN compiles a primitive for
each input shape it meets and keeps it in a process-wide cache of up to 1,024 entries
(``ONEDNN_PRIMITIVE_CACHE_CAPACITY``), never released. A stream's micro-batches come in every
size, the more so when the service is starved of CPU and batches fill up unevenly, so each new
size adds its primitive to the resident memory until the cache is full. For a single step, the
call that makes most of a stream's work, PyTorch's native kernels keep nothing per shape and are
faster. Whole sequences (:mod:`detector.sequence`) and training keep oneDNN, which is much
faster there.

>>> before = torch.backends.mkldnn.enabled
>>> with stepping():
...     torch.backends.mkldnn.enabled, torch.is_inference_mode_enabled()
(False, True)
>>> torch.backends.mkldnn.enabled == before
True
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["stepping"]


@contextmanager
def stepping() -> Iterator[None]:
    """Run the network inside: inference mode, oneDNN off (restored to its previous value after).

    The switch is process-wide in PyTorch; a call on another thread meanwhile may run either
    kernel, which changes only speed, memory and the rounding of the floats.
    """
    enabled = torch.backends.mkldnn.enabled
    # torch types these module attributes as their descriptor (ContextProp); a bool is their documented value
    torch.backends.mkldnn.enabled = False  # type: ignore[assignment]
    try:
        with torch.inference_mode():
            yield
    finally:
        torch.backends.mkldnn.enabled = enabled
