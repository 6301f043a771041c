"""The contract suite runs every test on every implementation of the service (tests/engines.py)."""

from __future__ import annotations

import pytest

from tests.engines import IMPLEMENTATIONS, implementation
from tests.tiny_models import one_thread


@pytest.fixture(params=IMPLEMENTATIONS)
def service(request, tiny_model_dir, tiny_home, tmp_path, embedder):
    with one_thread(), implementation(request.param, tiny_model_dir, tiny_home, tmp_path, embedder) as chat:
        yield chat
