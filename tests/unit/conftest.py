"""Unit tests check code alone: none of them may start Ray (the real services are for tests/integration)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _no_ray() -> Iterator[None]:
    yield
    import sys

    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        pytest.fail("a unit test started Ray; it belongs in tests/integration")
