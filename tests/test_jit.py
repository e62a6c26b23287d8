"""Compiled kernels are cached where the install allows it."""

from __future__ import annotations

from pathlib import Path

from detector.jit import cache_dir


def test_the_cache_goes_to_the_user_cache_or_else_a_temporary_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert Path(cache_dir()) == tmp_path / "detector" / "numba"
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # no directory can be made under a file
    assert Path(cache_dir()).name.startswith("detector-numba-") and Path(cache_dir()).is_dir()
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "chosen"))
    assert cache_dir() == str(tmp_path / "chosen")
