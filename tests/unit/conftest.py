"""Unit tests check code alone: none of them may start Ray (the real services are for tests/integration)."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest


def _ray_running() -> bool:
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


@pytest.fixture(autouse=True)
def _no_ray() -> Iterator[None]:
    before = _ray_running()  # an integration test of the same session may have started it
    yield
    if _ray_running() and not before:
        pytest.fail("a unit test started Ray; it belongs in tests/integration")
