"""The container tests run only under `make test-image`, which builds the image first."""

from __future__ import annotations

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "image: builds on the container image (make test-image)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("DETECTOR_TEST_IMAGE"):
        return
    skip = pytest.mark.skip(reason="container test: run by `make test-image` (needs podman and the built image)")
    for item in items:
        if item.get_closest_marker("image") is not None:
            item.add_marker(skip)
