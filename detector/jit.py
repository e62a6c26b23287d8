"""Compiled code: numba's ``njit`` with an on-disk cache that also works on a read-only install.

Numba caches compiled machine code next to the source by default, which fails where the package
is installed read-only (a container image). Unless ``NUMBA_CACHE_DIR`` is set, the cache goes to
``~/.cache/detector/numba`` or, if the home directory cannot be written, to a directory under the
system's temporary directory. Import this module before numba anywhere in the package.

A container image compiles its kernels while it is built (:mod:`detector.precompile`) and names
that cache in ``DETECTOR_NUMBA_CACHE_SEED``: an empty cache directory is filled from it at import,
so a new container loads the kernels instead of compiling them when it starts. The seed is
only copied, never written, so it may sit on a read-only filesystem.

>>> Path(cache_dir()).is_dir()
True
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["SEED_ENV", "cache_dir", "njit", "seed_cache"]

SEED_ENV = "DETECTOR_NUMBA_CACHE_SEED"


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


def seed_cache(cache: str, seed: str | None) -> bool:
    """Copy the compiled kernels under ``seed`` into ``cache`` if ``cache`` holds none yet; True
    if copied. A seed that cannot be read or copied leaves numba to compile as usual."""
    if not cache or not seed or Path(seed).resolve() == Path(cache).resolve() or not Path(seed).is_dir():
        return False
    if any(Path(cache).rglob("*.nbi")):
        return False
    try:
        shutil.copytree(seed, cache, dirs_exist_ok=True)
    except OSError:
        return False
    return True


_CACHE_DIR = cache_dir()
if _CACHE_DIR:
    os.environ["NUMBA_CACHE_DIR"] = _CACHE_DIR
    seed_cache(_CACHE_DIR, os.environ.get(SEED_ENV))

import numba  # noqa: E402  (after NUMBA_CACHE_DIR is set: numba reads it on import)

if _CACHE_DIR:
    # in case numba was imported before this module (its settings are module attributes, untyped)
    numba.config.CACHE_DIR = _CACHE_DIR  # type: ignore[attr-defined]

njit = numba.njit(cache=bool(_CACHE_DIR), nogil=True)
