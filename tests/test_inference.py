"""The scoring keeps nothing per batch size: a stream's micro-batches come in every size."""

from __future__ import annotations

import ctypes
import ctypes.util

import pytest
import torch

from detector.inference import stepping
from detector.schema import Observation
from detector.scoring import Detector
from detector.testing import tiny_model


class _MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2``; ``uordblks`` is the heap in use."""

    _FIELDS = (
        "arena",
        "ordblks",
        "smblks",
        "hblks",
        "hblkhd",
        "usmblks",
        "fsmblks",
        "uordblks",
        "fordblks",
        "keepcost",
    )
    _fields_ = [(name, ctypes.c_size_t) for name in _FIELDS]


def _heap_in_use() -> int:
    """Bytes of the C heap in use (glibc); skips the test elsewhere."""
    try:
        mallinfo2 = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallinfo2
    except (OSError, AttributeError):
        pytest.skip("needs glibc 2.33 or later (mallinfo2)")
    mallinfo2.restype = _MallInfo2
    return int(mallinfo2().uordblks)


def test_batches_of_every_size_leave_the_heap_as_it_was():
    # oneDNN would keep a compiled primitive per batch size: about 40 MiB for these 200 sizes
    sizes = 200
    detector = Detector(tiny_model())
    detector.process([Observation(f"e{i}", 1.0, [0.1, 0.2]) for i in range(sizes)], now=1.0)
    before = _heap_in_use()
    for n in range(1, sizes + 1):
        detector.process([Observation(f"e{i}", 1.0 + n, [0.1, 0.2]) for i in range(n)], now=1.0 + n)
    grown = _heap_in_use() - before
    assert grown < 10 * 2**20, f"the heap grew by {grown / 2**20:.1f} MiB over {sizes} batch sizes"


def test_inference_restores_the_kernel_choice_after_an_error():
    before = torch.backends.mkldnn.enabled
    with pytest.raises(RuntimeError), stepping():
        assert not torch.backends.mkldnn.enabled
        raise RuntimeError("a failed step")
    assert torch.backends.mkldnn.enabled == before
