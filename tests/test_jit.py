"""Compiled kernels are cached where the install allows it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import detector
from detector.jit import COMPILED_MODULES, SEED_ENV, cache_dir, seed_cache, source_key

PACKAGE = Path(detector.__file__).parent


def test_the_cache_goes_to_the_user_cache_or_else_a_temporary_directory(monkeypatch, tmp_path):
    key = source_key()
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert Path(cache_dir()) == tmp_path / "detector" / "numba" / key
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # no directory can be made under a file
    assert Path(cache_dir()).parent.name.startswith("detector-numba-") and Path(cache_dir()).is_dir()
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "chosen"))
    assert cache_dir() == str(tmp_path / "chosen" / key)
    monkeypatch.setenv("NUMBA_CACHE_DIR", cache_dir())  # as a child process inherits it
    assert cache_dir() == str(tmp_path / "chosen" / key), "a keyed directory is used as it is"


def test_an_edit_to_any_compiled_module_moves_the_cache(tmp_path):
    """numba itself would keep a kernel compiled from the old version of a function it calls in
    another file; a new cache directory per version of the compiled sources prevents that."""
    for name in COMPILED_MODULES:
        (tmp_path / name).write_bytes((PACKAGE / name).read_bytes())
    assert source_key(tmp_path) == source_key()
    for name in COMPILED_MODULES:
        original = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(original + b"\n# an edit\n")
        assert source_key(tmp_path) != source_key(), name
        (tmp_path / name).write_bytes(original)


def test_every_module_with_compiled_code_is_in_the_cache_key():
    compiled = {path.name for path in PACKAGE.glob("*.py") if "@njit" in path.read_text() and path.name != "jit.py"}
    assert compiled and compiled <= set(COMPILED_MODULES)


def test_a_seed_fills_only_an_empty_cache(tmp_path):
    seed, cache = tmp_path / "seed", tmp_path / "cache"
    (seed / "detector_ab12").mkdir(parents=True)
    (seed / "detector_ab12" / "kernel.score_rows-63.py311.nbi").write_bytes(b"index")
    assert not seed_cache(str(cache), None)
    assert not seed_cache(str(cache), str(tmp_path / "missing"))
    assert seed_cache(str(cache), str(seed))
    assert (cache / "detector_ab12" / "kernel.score_rows-63.py311.nbi").read_bytes() == b"index"
    (seed / "detector_ab12" / "kernel.score_rows-63.py311.nbi").write_bytes(b"newer")
    assert not seed_cache(str(cache), str(seed)), "a cache that holds kernels is left alone"
    assert (cache / "detector_ab12" / "kernel.score_rows-63.py311.nbi").read_bytes() == b"index"


_SCORE_A_FITTED_MODEL = """
import sys
import numpy as np
from detector.model import load_model
from detector.observation import Columns
from detector.scoring import Detector

model = load_model(sys.argv[1])
detector = Detector(model)
values = np.random.default_rng(1).normal(size=(40, len(model.features)))
detector.process_columns(Columns([f"s{i}" for i in range(20)], np.arange(20.0), values[:20]))
detector.process_columns(Columns(["f"] * 20, 50.0 + np.arange(20.0), values[20:]))
"""


@pytest.mark.slow
def test_a_precompiled_seed_spares_a_new_process_all_compiling(tmp_path, model_dir):
    """As in the image: kernels compiled by `python -m detector.precompile` into a seed, then a
    process with an empty cache and the seed scores a fitted model, by a stream's batched step
    and by the sequence path, without compiling anything."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("NUMBA_", SEED_ENV))}
    seed = tmp_path / "seed"
    subprocess.run([sys.executable, "-m", "detector.precompile"], env={**env, "NUMBA_CACHE_DIR": str(seed)}, check=True)
    fresh = {**env, "XDG_CACHE_HOME": str(tmp_path / "home"), SEED_ENV: str(seed), "NUMBA_DEBUG_CACHE": "1"}
    scored = subprocess.run(
        [sys.executable, "-c", _SCORE_A_FITTED_MODEL, str(model_dir)],
        env=fresh,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "data loaded from" in scored.stdout, scored.stdout
    compiled = [line for line in scored.stdout.splitlines() if "data saved to" in line]
    assert not compiled, "compiled although the seed should hold it:\n" + "\n".join(compiled)
