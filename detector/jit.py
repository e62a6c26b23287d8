"""Compiled code: numba's ``njit`` with an on-disk cache that also works on a read-only install.

Numba caches compiled machine code next to the source by default, which fails where the package
is installed read-only (a container image). Unless ``NUMBA_CACHE_DIR`` is set, the cache goes to
``~/.cache/detector/numba`` or, if the home directory cannot be written, to a directory under the
system's temporary directory. Import this module before numba anywhere in the package.

numba notices an edit to a compiled function's own file, but not to the functions it calls in
other files: after an edit to ``stages.py`` alone it would keep running the old ``kernel.py``
kernels, which inline the stages. So the cache lives in a subdirectory named after the compiled
modules' sources (:func:`source_key`): changed sources compile afresh, and an unchanged install
reuses its kernels.

A container image compiles its kernels while it is built (:mod:`detector.precompile`) and names
that cache in ``DETECTOR_NUMBA_CACHE_SEED``: an empty cache directory is filled from it at import,
so a new container loads the kernels instead of compiling them when it starts. The seed is
only copied, never written, so it may sit on a read-only filesystem.

>>> Path(cache_dir()).name == source_key()
True
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["COMPILED_MODULES", "SEED_ENV", "cache_dir", "njit", "seed_cache", "source_key"]

SEED_ENV = "DETECTOR_NUMBA_CACHE_SEED"
# The package's modules whose code numba compiles, or whose types compiled code uses.
COMPILED_MODULES = ("kernel.py", "null_calibration.py", "stage_state.py", "stages.py")


def source_key(package: Path = Path(__file__).parent) -> str:
    """The name of the cache subdirectory for ``package``'s compiled modules as they are now."""
    digest = hashlib.sha256()
    for name in COMPILED_MODULES:
        digest.update(name.encode() + b"\0" + (package / name).read_bytes())
    return "src-" + digest.hexdigest()[:16]


_SOURCE_KEY = source_key()  # read once: the sources do not change while the process runs


def _keyed(directory: Path) -> Path:
    """``directory``'s subdirectory for the current sources (``directory`` itself if it is one)."""
    return directory if directory.name == _SOURCE_KEY else directory / _SOURCE_KEY


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
    """Where compiled kernels are cached: the current sources' subdirectory of ``NUMBA_CACHE_DIR``
    if set, else of the user's cache or a temporary directory ("" if none can be written)."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return str(_keyed(Path(os.environ["NUMBA_CACHE_DIR"])))
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "detector" / "numba"
    temporary = Path(tempfile.gettempdir()) / f"detector-numba-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    chosen = _writable_dir([_keyed(home), _keyed(temporary)])
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
    _SEED = os.environ.get(SEED_ENV)
    seed_cache(_CACHE_DIR, str(_keyed(Path(_SEED))) if _SEED else None)

import numba  # noqa: E402  (after NUMBA_CACHE_DIR is set: numba reads it on import)

if _CACHE_DIR:
    # in case numba was imported before this module (its settings are module attributes, untyped)
    numba.config.CACHE_DIR = _CACHE_DIR  # type: ignore[attr-defined]

njit = numba.njit(cache=bool(_CACHE_DIR), nogil=True)
