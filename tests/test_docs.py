"""The README documents every setting and every metric (generated, kept current)."""

import doctest
import importlib
import re

import pytest

from detector.config import Settings
from detector.docs import render_readme
from detector.metrics import Metrics

from support import ROOT


def test_readme_generated_sections_are_current():
    text = (ROOT / "README.md").read_text()
    assert render_readme(text) == text, "run `make docs`"


def test_readme_names_every_setting_and_metric():
    text = (ROOT / "README.md").read_text()
    for section, info in Settings.model_fields.items():
        for name in info.annotation.model_fields:
            assert f"`{section}.{name}`" in text and f"DETECTOR_{section.upper()}__{name.upper()}" in text
    lines = [line for line in Metrics().render().decode().splitlines() if not re.match(r"^detector_\w+_created", line)]
    exposed = set(re.findall(r"^(detector_[a-z_]+?)(?:_bucket|_count|_sum)?[{ ]", "\n".join(lines), re.M))
    assert exposed
    for name in exposed:
        assert f"`{name}`" in text, name


def test_readme_shows_the_two_commands():
    text = (ROOT / "README.md").read_text()
    assert "make demo" in text and "make test" in text


@pytest.mark.parametrize("module", sorted(p.stem for p in (ROOT / "detector").glob("*.py") if p.stem != "__init__"))
def test_docstring_examples_run(module):
    """Every usage example in a docstring is true (doctest)."""
    result = doctest.testmod(importlib.import_module(f"detector.{module}"))
    assert result.failed == 0
