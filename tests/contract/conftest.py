"""The contract suite runs every test on every implementation of the service (tests/engines.py)."""

from __future__ import annotations

import pytest

from tests.engines import IMPLEMENTATIONS, implementation, save_tiny_llama
from tests.tiny_models import one_thread


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_home(tmp_path_factory):
    """One data dir for the tiny engines: the statistics are computed once."""
    return tmp_path_factory.mktemp("tiny-home")


@pytest.fixture(scope="session")
def embedder():
    from kbchat.memory import Embedder

    return Embedder.load(device="cpu")


@pytest.fixture(params=IMPLEMENTATIONS)
def service(request, tiny_model_dir, tiny_home, tmp_path, embedder):
    with one_thread(), implementation(request.param, tiny_model_dir, tiny_home, tmp_path, embedder) as chat:
        yield chat
