"""Fixtures for the methods library's tests on tiny random models."""

from __future__ import annotations

import pytest

from tests.tiny_models import FAMILIES, one_thread


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread, by far when other processes share the cores."""
    with one_thread():
        yield


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param
