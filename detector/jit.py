"""Compiled code: numba's ``njit`` with an on-disk cache that also works on a read-only install.

Numba caches compiled machine code next to the source by default, which fails where the package
is installed read-only (a container image). Unless ``NUMBA_CACHE_DIR`` is set, the cache goes to
``~/.cache/detector/numba`` or, if the home directory cannot be written, to a directory under the
system's temporary directory. Import this module before numba anywhere in the package.

>>> Path(cache_dir()).is_dir()
True
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["cache_dir", "njit"]


def _writable_dir(candidates: list[Path]) -> Path | None:
    for candidate in candidates:
        try:
            candidate.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(candidate, os.W_OK):
            return candidate
    return None


def cache_dir() -> str:
    """Where compiled kernels are cached (``NUMBA_CACHE_DIR`` if set)."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return os.environ["NUMBA_CACHE_DIR"]
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "detector" / "numba"
    temporary = Path(tempfile.gettempdir()) / f"detector-numba-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    chosen = _writable_dir([home, temporary])
    return str(chosen) if chosen is not None else ""


_CACHE_DIR = cache_dir()
if _CACHE_DIR:
    os.environ["NUMBA_CACHE_DIR"] = _CACHE_DIR

import numba  # noqa: E402  (after NUMBA_CACHE_DIR is set: numba reads it on import)

if _CACHE_DIR:
    # in case numba was imported before this module (its settings are module attributes, untyped)
    numba.config.CACHE_DIR = _CACHE_DIR  # type: ignore[attr-defined]

njit = numba.njit(cache=bool(_CACHE_DIR), nogil=True)
