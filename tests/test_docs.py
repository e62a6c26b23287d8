"""The docs stay true to the code: generated tables current, every setting and metric named,
the README short and its links resolving, every docstring example running."""

import doctest
import importlib
import re

import pytest
from support import ROOT

from detector.config import Settings, is_advanced
from detector.config_docs import ADVANCED_COMMENT
from detector.docs import GENERATED, render
from detector.metrics import Metrics

README_MAX_BYTES = 12 * 1024
_LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("path", sorted(GENERATED))
def test_generated_sections_are_current(path):
    text = (ROOT / path).read_text()
    assert render(path, text) == text, "run `make docs`"


def test_configuration_names_every_setting():
    text = (ROOT / "docs/configuration.md").read_text()
    for section, info in Settings.model_fields.items():
        for name in info.annotation.model_fields:
            assert f"`{section}.{name}`" in text and f"DETECTOR_{section.upper()}__{name.upper()}" in text


def test_operations_names_every_metric():
    text = (ROOT / "docs/operations.md").read_text()
    lines = [line for line in Metrics().render().decode().splitlines() if not re.match(r"^detector_\w+_created", line)]
    exposed = set(re.findall(r"^(detector_[a-z_]+?)(?:_bucket|_count|_sum)?[{ ]", "\n".join(lines), re.M))
    assert exposed
    for name in exposed:
        assert f"`{name}`" in text, name


def test_operations_has_a_runbook_entry_per_alert_rule():
    rules = re.findall(r"^\s*- alert: (\w+)", (ROOT / "deploy/prometheus/alerts.yml").read_text(), re.M)
    assert rules
    headings = set(re.findall(r"^### (\w+)", (ROOT / "docs/operations.md").read_text(), re.M))
    assert set(rules) <= headings, set(rules) - headings


def test_readme_is_short_and_shows_the_two_commands():
    raw = (ROOT / "README.md").read_bytes()
    assert len(raw) <= README_MAX_BYTES, f"README.md is {len(raw)} bytes; move detail into docs/"
    text = raw.decode()
    assert "make demo" in text and "make test" in text


@pytest.mark.parametrize(
    "page", ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md"))]
)
def test_relative_links_resolve(page):
    """Every relative link of the README and docs/ names a file that exists, and an anchor a heading of it."""
    source = ROOT / page
    for target in _LINK.findall(source.read_text()):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (source.parent / path).resolve() if path else source
        assert linked.exists(), f"{page}: {target}"
        if anchor and linked.suffix == ".md":
            assert anchor in _anchors(linked.read_text()), f"{page}: {target}"


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", markdown, re.M)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("module", sorted(p.stem for p in (ROOT / "detector").glob("*.py") if p.stem != "__init__"))
def test_docstring_examples_run(module):
    """Every usage example in a docstring is true (doctest)."""
    result = doctest.testmod(importlib.import_module(f"detector.{module}"))
    assert result.failed == 0


def test_advanced_settings_stand_apart_from_the_ones_users_set():
    """configuration.md lists the advanced [scoring] settings in their own table after the others,
    and config.example.toml puts them last in [scoring], under the advanced comment."""
    text = (ROOT / "docs/configuration.md").read_text()
    advanced_table = text.split("<!-- settings-advanced:start -->")[1].split("<!-- settings-advanced:end -->")[0]
    other_tables = "".join(
        text.split(f"<!-- settings-{kind}:start -->")[1].split(f"<!-- settings-{kind}:end -->")[0]
        for kind in ("fit", "run")
    )  # the generated tables only: the prose may name any setting
    scoring = Settings.model_fields["scoring"].annotation.model_fields
    advanced = [name for name in scoring if is_advanced(f"scoring.{name}")]
    assert "novelty_discount" in advanced and "false_alarm_rate" not in advanced
    for name in scoring:
        assert (f"`scoring.{name}`" in advanced_table) == (name in advanced), name
        assert (f"`scoring.{name}`" in other_tables) == (name not in advanced), name
    example = (ROOT / "config.example.toml").read_text()
    section = example.split("[scoring]\n")[1].split("\n[")[0]
    users, _, tuning = section.partition(ADVANCED_COMMENT)
    assert tuning and {
        line.split(" =")[0] for line in tuning.splitlines() if " = " in line and not line.startswith("#")
    } == set(advanced)
    assert not any(f"\n{name} = " in users for name in advanced)
